"""Rows that make durable instances durable: the instance, its inbox, its history.

The signed ``state`` blob is the truth the core runtime resumes from; the
other columns are copies of it kept for queries (what is due, what is stuck,
what waits for which event) and for people (admin, commands).
"""

from __future__ import annotations

from datetime import datetime

from django.conf import settings
from django.contrib.contenttypes.fields import GenericForeignKey
from django.contrib.contenttypes.models import ContentType
from django.core.serializers.json import DjangoJSONEncoder
from django.db import models
from django.db.models import Q
from django.utils.translation import gettext_lazy as _

from durable.progress import describe


class Status(models.TextChoices):
    """An instance's status; ``suspended`` waits for a person (see its ``error``)."""

    PENDING = "pending", _("Pending")          # created, never ran a step
    RUNNING = "running", _("Running")          # a worker holds it (or held it and died: see lease)
    PAUSED = "paused", _("Paused")             # waits for an event or a timer
    COMPLETED = "completed", _("Completed")
    FAILED = "failed", _("Failed")             # the program raised; error stored
    CANCELLED = "cancelled", _("Cancelled")
    SUSPENDED = "suspended", _("Suspended")    # cannot run until a person acts (code changed, tampered state...)


#: Statuses after which an instance never runs again.
FINISHED = (Status.COMPLETED, Status.FAILED, Status.CANCELLED)
#: Statuses a worker may pick up.
RUNNABLE = (Status.PENDING, Status.RUNNING, Status.PAUSED)


class DurableInstanceQuerySet(models.QuerySet["DurableInstance"]):
    """The queries of the sweep: what is due, stuck, or has an event waiting."""

    def due(self, now: datetime) -> DurableInstanceQuerySet:
        """Paused on a timer (or an event wait with a timeout) that has expired."""
        return self.filter(status=Status.PAUSED, wake_at__lte=now)

    def stuck(self, now: datetime) -> DurableInstanceQuerySet:
        """Should be running but nobody holds a valid lease (never picked up, or the worker died)."""
        return self.filter(status__in=(Status.PENDING, Status.RUNNING)).filter(
            Q(lease_expires_at__isnull=True) | Q(lease_expires_at__lt=now))

    def with_pending_event(self) -> DurableInstanceQuerySet:
        """Paused waiting for an event that is already in its inbox (its own wait, or a paused branch's)."""
        return self.filter(Q(status=Status.PAUSED) & event_arrived())

    def runnable_now(self, now: datetime) -> DurableInstanceQuerySet:
        """Everything the sweep schedules (lease not held by a live worker)."""
        free = Q(lease_expires_at__isnull=True) | Q(lease_expires_at__lt=now)
        wanted = (Q(status=Status.PAUSED, wake_at__lte=now)
                  | Q(status__in=(Status.PENDING, Status.RUNNING))
                  | (Q(status=Status.PAUSED) & event_arrived()))
        return self.filter(wanted & free)


def event_arrived() -> Q:
    """An instance row whose wait an unconsumed event in its inbox ends: it waits for that event itself
    (``wait_kind="event"``), or it waits for parallel branches and a paused branch waits for it (the branch
    rows, see :class:`DurableBranch`; only an instance paused on its branches reads them)."""
    own = DurableEvent.objects.filter(
        instance=models.OuterRef("pk"), name=models.OuterRef("waiting_for"), consumed_at__isnull=True)
    in_branch = DurableEvent.objects.filter(
        instance=models.OuterRef("instance"), name=models.OuterRef("waiting_for"), consumed_at__isnull=True)
    branch = DurableBranch.objects.filter(instance=models.OuterRef("pk"), status=Status.PAUSED,
                                          wait_kind="event").filter(models.Exists(in_branch))
    return (Q(wait_kind="event") & Q(models.Exists(own))) | (Q(wait_kind="branches") & Q(models.Exists(branch)))


class DurableInstance(models.Model):
    """One run of a program: its signed state and arguments, status, wait, lease and result."""

    instance_id = models.CharField(_("instance id"), max_length=200, primary_key=True)
    program = models.CharField(_("program"), max_length=255, help_text=_("Dotted path of the durable program."))
    program_version = models.CharField(_("program version"), max_length=64, blank=True, default="")
    layout_hash = models.CharField(_("step layout"), max_length=64, blank=True, default="",
                                   help_text=_("Step layout of the program's code at the last checkpoint."))
    status = models.CharField(_("status"), max_length=16, choices=Status.choices, default=Status.PENDING)
    wait_kind = models.CharField(_("wait kind"), max_length=8, blank=True, default="")
    waiting_for = models.CharField(_("waiting for"), max_length=200, blank=True, default="")
    wake_at = models.DateTimeField(_("wake at"), null=True, blank=True)
    position = models.CharField(_("position"), max_length=500, blank=True, default="")
    state = models.BinaryField(_("signed state"), null=True, blank=True, editable=False)
    arguments = models.BinaryField(_("signed start arguments"), null=True, blank=True, editable=False)
    result = models.JSONField(_("result"), null=True, blank=True, encoder=DjangoJSONEncoder)
    error = models.TextField(_("error"), blank=True, default="")
    steps = models.PositiveIntegerField(_("steps"), default=0)
    version = models.PositiveIntegerField(_("row version"), default=0)
    lease_owner = models.CharField(_("lease owner"), max_length=255, blank=True, default="")
    lease_expires_at = models.DateTimeField(_("lease expires at"), null=True, blank=True)
    attempts = models.PositiveIntegerField(_("attempts"), default=0,
                                           help_text=_("Claims since the last checkpoint (crashed runs)."))
    created_at = models.DateTimeField(_("created at"), auto_now_add=True)
    updated_at = models.DateTimeField(_("updated at"), auto_now=True)
    finished_at = models.DateTimeField(_("finished at"), null=True, blank=True)
    cancel_requested_at = models.DateTimeField(
        _("cancel requested at"), null=True, blank=True,
        help_text=_("A cancellation was raised in the program, which is cleaning up; a second cancel forces it."))
    cancel_reason = models.TextField(_("cancel reason"), blank=True, default="")
    deadline = models.DateTimeField(_("deadline"), null=True, blank=True,
                                    help_text=_("When DeadlineExceeded is raised in the program."))
    # Progress reported from inside (durable.set_status / durable.publish), copied from the state by the
    # checkpoint that saved it, only when it changed (see durable_django.progress).
    progress = models.JSONField(_("progress"), null=True, blank=True, encoder=DjangoJSONEncoder,
                                help_text=_("The custom status the program reported last (durable.set_status)."))
    published = models.JSONField(_("published values"), null=True, blank=True, encoder=DjangoJSONEncoder,
                                 help_text=_("Values the program published for others to wait on (durable.publish)."))
    content_type = models.ForeignKey(ContentType, null=True, blank=True, on_delete=models.SET_NULL,
                                     related_name="+")
    object_id = models.CharField(_("object id"), max_length=64, blank=True, default="")
    content_object = GenericForeignKey("content_type", "object_id")
    # Flow control (durable_django.flowcontrol): set at start, from the program's limits or start()'s options.
    priority = models.SmallIntegerField(_("priority"), default=0,
                                        help_text=_("Higher runs first where a worker picks among many."))
    queue = models.CharField(_("queue"), max_length=100, blank=True, default="",
                             help_text=_("Celery queue of this instance's wake-ups (empty: its program's)."))
    flow_key = models.CharField(_("limit key"), max_length=200, blank=True, default="",
                                help_text=_("The per-key concurrency or rate limit's key, from the start arguments."))
    flow_waiting = models.CharField(_("waits for a slot"), max_length=255, blank=True, default="",
                                    help_text=_("The limit it waits for (a concurrency slot or the rate)."))
    # Child instances (durable.start_child, see durable_django.children): the instance that started it, and what
    # happens to it when that one ends first. No database constraint: a purged parent leaves its id.
    parent = models.ForeignKey("self", null=True, blank=True, on_delete=models.SET_NULL, db_constraint=False,
                               related_name="children", verbose_name=_("parent instance"))
    on_parent_close = models.CharField(_("when the parent ends"), max_length=8, blank=True, default="",
                                       help_text=_("cancel, abandon or wait (child instances only)."))

    objects = DurableInstanceQuerySet.as_manager()

    class Meta:
        verbose_name = _("durable instance")
        verbose_name_plural = _("durable instances")
        ordering = ("-created_at",)
        indexes = [
            models.Index(fields=["status", "wake_at"], name="durable_inst_status_wake"),
            # a parent's unfinished children (durable_django.children): found without reading its finished ones
            models.Index(fields=["parent", "status"], name="durable_inst_parent_status"),
            models.Index(fields=["status", "lease_expires_at"], name="durable_inst_status_lease"),
            models.Index(fields=["status", "finished_at"], name="durable_inst_status_fin"),
            models.Index(fields=["program", "program_version", "layout_hash"], name="durable_inst_prog_ver"),
            models.Index(fields=["content_type", "object_id"], name="durable_inst_object"),
            # The admin's search by linked object id. (No index may hold a column that every checkpoint
            # writes, such as updated_at: the checkpoint UPDATE would stop being HOT.)
            models.Index(fields=["object_id"], name="durable_inst_object_id"),
            models.Index(fields=["-created_at"], name="durable_inst_created"),
            # The sweep's cancellations (durable_django.cancellation): only the few rows with a cancel requested.
            models.Index(fields=["cancel_requested_at"], condition=Q(cancel_requested_at__isnull=False),
                         name="durable_inst_cancel_req"),
            # Flow control: the next instances waiting for a slot of a limit, highest priority first.
            models.Index(fields=["flow_waiting", "-priority", "created_at"], name="durable_inst_flow_wait"),
        ]
        permissions = [
            ("resume_durableinstance", "Can resume durable instances"),
            ("cancel_durableinstance", "Can cancel durable instances"),
            ("publish_durableevent", "Can publish events to durable instances"),
            ("edit_locals_durableinstance", "Can edit the locals of paused durable instances"),
            ("fork_durableinstance", "Can fork durable instances from a kept checkpoint"),
        ]

    def __str__(self) -> str:
        return f"{self.instance_id} ({self.status})"

    @property
    def is_finished(self) -> bool:
        return self.status in FINISHED

    @property
    def progress_text(self) -> str:
        """The reported status (``progress``) as one line for people, e.g. "payment · 80%"."""
        return describe(self.progress)


class DurableBranch(models.Model):
    """One parallel branch of an instance (``durable.gather``/``first``): its own signed call stack.

    A branch's checkpoint writes only this row (under the instance's lease), so it costs the same with one
    live branch or a hundred; the instance's row keeps the awaiting frame and the group. The wait columns copy
    the branch's wait, as the instance's do: the sweep and the wake-up after a pause read them to find an
    instance paused on its branches that an event in its inbox wakes. Deleted once the group ended.
    """

    instance = models.ForeignKey(DurableInstance, on_delete=models.CASCADE, related_name="branches")
    #: "<group>.<index>", nested: "<parent path>/<group>.<index>" (see durable.branches)
    path = models.CharField(_("path"), max_length=200)
    state = models.BinaryField(_("signed state"), null=True, blank=True, editable=False)
    status = models.CharField(_("status"), max_length=16, choices=Status.choices, default=Status.RUNNING)
    wait_kind = models.CharField(_("wait kind"), max_length=8, blank=True, default="")
    waiting_for = models.CharField(_("waiting for"), max_length=200, blank=True, default="")
    wake_at = models.DateTimeField(_("wake at"), null=True, blank=True)
    position = models.CharField(_("position"), max_length=500, blank=True, default="")
    steps = models.PositiveIntegerField(_("steps"), default=0)
    updated_at = models.DateTimeField(_("updated at"), auto_now=True)

    class Meta:
        verbose_name = _("durable branch")
        verbose_name_plural = _("durable branches")
        ordering = ("instance", "path")
        # Also the index of every lookup (they all start with the instance).
        constraints = [models.UniqueConstraint(fields=["instance", "path"], name="durable_branch_path")]

    def __str__(self) -> str:
        return f"{self.instance_id} branch {self.path} ({self.status})"


class DurableEvent(models.Model):
    """The durable inbox: an event is kept until the instance consumes it, exactly once."""

    instance = models.ForeignKey(DurableInstance, on_delete=models.CASCADE, related_name="events",
                                 db_constraint=True)
    name = models.CharField(_("name"), max_length=200)
    payload = models.JSONField(_("payload"), null=True, blank=True, encoder=DjangoJSONEncoder)
    idempotency_key = models.CharField(_("idempotency key"), max_length=255, null=True, blank=True)
    created_at = models.DateTimeField(_("published at"), auto_now_add=True)
    consumed_at = models.DateTimeField(_("consumed at"), null=True, blank=True)
    # Who published it (a user passed as ``actor``). A human-task wait checks at consumption that this user may
    # answer it. No database constraint and no index: the publish path stays one INSERT, and a deleted user
    # leaves an id that no longer answers anything.
    publisher = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.DO_NOTHING,
                                  db_constraint=False, related_name="+", verbose_name=_("published by"))
    # Nullable, so that the hand-written INSERTs of the publish path need not name it.
    rejected = models.TextField(_("rejected because"), null=True, blank=True,
                                help_text=_("Why the wait it reached refused it (it left the inbox unused)."))

    class Meta:
        verbose_name = _("durable event")
        verbose_name_plural = _("durable events")
        ordering = ("id",)
        constraints = [
            models.UniqueConstraint(fields=["instance", "idempotency_key"],
                                    condition=Q(idempotency_key__isnull=False),
                                    name="durable_event_idempotency"),
        ]
        indexes = [
            models.Index(fields=["instance", "name", "id"], condition=Q(consumed_at__isnull=True),
                         name="durable_event_unconsumed"),
        ]

    def __str__(self) -> str:
        return f"{self.name} -> {self.instance_id}"


class HistoryKind(models.TextChoices):
    """The kinds of :class:`DurableHistory` entries (one per transition)."""

    STARTED = "started", _("Started")
    RESUMED = "resumed", _("Resumed")
    PAUSED = "paused", _("Paused")
    COMPLETED = "completed", _("Completed")
    FAILED = "failed", _("Failed")
    CANCELLED = "cancelled", _("Cancelled")
    SUSPENDED = "suspended", _("Suspended")
    RECOVERED = "recovered", _("Recovered from a dead worker")
    EVENT_PUBLISHED = "event_published", _("Event published")
    EVENT_REJECTED = "event_rejected", _("Event rejected")
    MIGRATED = "migrated", _("Migrated to new code")
    OPERATOR = "operator", _("Operator action")
    RETRYING = "retrying", _("Step retry scheduled")
    CANCEL_REQUESTED = "cancel_requested", _("Cancellation requested")
    FORKED = "forked", _("Forked")


class DurableHistory(models.Model):
    """One row per transition, written in the transaction that made it."""

    instance = models.ForeignKey(DurableInstance, on_delete=models.CASCADE, related_name="history")
    kind = models.CharField(_("kind"), max_length=20, choices=HistoryKind.choices)
    status = models.CharField(_("status after"), max_length=16, choices=Status.choices)
    detail = models.TextField(_("detail"), blank=True, default="")
    actor = models.CharField(_("actor"), max_length=255, blank=True, default="",
                             help_text=_("Worker id or operator that caused the transition."))
    at = models.DateTimeField(_("at"), auto_now_add=True)

    class Meta:
        verbose_name = _("durable history entry")
        verbose_name_plural = _("durable history")
        ordering = ("id",)
        indexes = [models.Index(fields=["instance", "id"], name="durable_hist_instance")]

    def __str__(self) -> str:
        return f"{self.instance_id}: {self.kind}"


class DurableCheckpoint(models.Model):
    """A kept copy of one checkpoint, for forks (only for programs that keep history; see docs/fork.md)."""

    instance = models.ForeignKey(DurableInstance, on_delete=models.CASCADE, related_name="checkpoints")
    step = models.PositiveIntegerField(_("step"))
    status = models.CharField(_("status"), max_length=16, choices=Status.choices)
    position = models.CharField(_("position"), max_length=500, blank=True, default="")
    state = models.BinaryField(_("signed state"), editable=False)
    created_at = models.DateTimeField(_("saved at"), auto_now_add=True)

    class Meta:
        verbose_name = _("durable checkpoint")
        verbose_name_plural = _("durable checkpoints")
        ordering = ("instance", "step")
        constraints = [models.UniqueConstraint(fields=["instance", "step"], name="durable_checkpoint_step")]

    def __str__(self) -> str:
        return f"{self.instance_id} #{self.step}"


class DurableTrace(models.Model):
    """Telemetry of one instance (written only with ``DURABLE["TELEMETRY"]`` on): the trace it belongs to.

    ``context`` is the W3C trace context of the ``start()`` caller's span, so that every run, days later and on
    any worker, joins that trace; ``pending`` holds the publishes not yet seen by a run (their trace contexts
    become span links of the run they wake, their times the wake-up latency).
    """

    instance = models.OneToOneField(DurableInstance, on_delete=models.CASCADE, primary_key=True,
                                    related_name="trace")
    context = models.JSONField(_("trace context"), default=dict, blank=True)
    started_at = models.FloatField(_("started at (epoch seconds)"), null=True, blank=True)
    pending = models.JSONField(_("publishes not yet seen by a run"), default=list, blank=True)

    class Meta:
        verbose_name = _("durable trace context")
        verbose_name_plural = _("durable trace contexts")

    def __str__(self) -> str:
        return f"{self.instance_id}: {self.context.get('traceparent', '')}"


# -- Schedules (durable_django.schedules, docs/schedules.md) ------------------------------------------------
class Overlap(models.TextChoices):
    """What a tick does while the schedule's previous instance has not finished."""

    SKIP = "skip", _("Skip the tick")
    ALLOW = "allow", _("Start anyway")
    CANCEL_PREVIOUS = "cancel_previous", _("Cancel the previous instance")


class Catchup(models.TextChoices):
    """Which missed ticks a schedule fires after downtime (the scheduler stopped, the schedule was late)."""

    SKIP = "skip", _("Skip missed ticks")
    LATEST = "latest", _("Run the latest missed tick once")
    ALL = "all", _("Run all missed ticks (up to max_catchup)")


class DurableSchedule(models.Model):
    """A program started on a cron expression or a fixed interval; one instance per tick.

    ``next_run_at`` is the next tick (UTC); the firing advances it with a
    compare-and-set, and the tick's instance id is ``<name>@<tick in UTC>``,
    so two schedulers never start a tick twice.
    """

    name = models.CharField(_("name"), max_length=100, unique=True)
    program = models.CharField(_("program"), max_length=255, help_text=_("Dotted path of the durable program."))
    args = models.JSONField(_("arguments"), default=list, blank=True, encoder=DjangoJSONEncoder)
    kwargs = models.JSONField(_("keyword arguments"), default=dict, blank=True, encoder=DjangoJSONEncoder)
    cron = models.CharField(_("cron"), max_length=100, blank=True, default="",
                            help_text=_('A cron expression, e.g. "0 9 * * MON" (5 fields, or 6 with seconds first).'))
    interval_seconds = models.PositiveIntegerField(_("interval (seconds)"), null=True, blank=True,
                                                   help_text=_("Instead of cron: every this many seconds."))
    timezone = models.CharField(_("time zone"), max_length=64, default="UTC",
                                help_text=_("IANA name the cron expression is read in, e.g. Europe/Paris."))
    paused = models.BooleanField(_("paused"), default=False)
    overlap = models.CharField(_("overlap"), max_length=16, choices=Overlap.choices, default=Overlap.SKIP)
    catchup = models.CharField(_("catch-up"), max_length=8, choices=Catchup.choices, default=Catchup.SKIP)
    max_catchup = models.PositiveIntegerField(_("max catch-up ticks"), default=10)
    next_run_at = models.DateTimeField(_("next run at"), null=True, blank=True)
    last_run_at = models.DateTimeField(_("last tick fired"), null=True, blank=True)
    last_instance_id = models.CharField(_("last instance"), max_length=200, blank=True, default="")
    last_note = models.CharField(_("last note"), max_length=500, blank=True, default="",
                                 help_text=_("Why the last tick was skipped, or the error that paused it."))
    declared = models.BooleanField(_("declared in code"), default=False, editable=False,
                                   help_text=_("Declared by a decorator or DURABLE['SCHEDULES']: synced from code."))
    created_at = models.DateTimeField(_("created at"), auto_now_add=True)
    updated_at = models.DateTimeField(_("updated at"), auto_now=True)

    class Meta:
        verbose_name = _("durable schedule")
        verbose_name_plural = _("durable schedules")
        ordering = ("name",)
        indexes = [models.Index(fields=["paused", "next_run_at"], name="durable_sched_due")]

    def __str__(self) -> str:
        return self.name


# -- flow control (durable_django.flowcontrol) -------------------------------------------------------------------
class DurableSlot(models.Model):
    """One slot of a concurrency limit: held by the instance named in ``holder`` while that instance holds it.

    Whether the holder still holds it is read from the holder's own row (its lease, or, for limits that count
    until the end, its status), so a killed worker's slot frees when its lease expires, with no write. Taken by a
    conditional UPDATE on ``version`` (compare-and-swap), so two workers never take the same slot.
    """

    limit_key = models.CharField(_("limit"), max_length=255)
    slot = models.PositiveIntegerField(_("slot"))
    holder = models.CharField(_("held by"), max_length=200, blank=True, default="")
    version = models.PositiveIntegerField(_("version"), default=0)
    taken_at = models.DateTimeField(_("taken at"), null=True, blank=True)

    class Meta:
        verbose_name = _("concurrency slot")
        verbose_name_plural = _("concurrency slots")
        constraints = [models.UniqueConstraint(fields=["limit_key", "slot"], name="durable_slot_key")]

    def __str__(self) -> str:
        return f"{self.limit_key}#{self.slot}"


class DurableRateWindow(models.Model):
    """How many instances of a rate limit started in one fixed window of time (its number since the epoch)."""

    limit_key = models.CharField(_("limit"), max_length=255)
    window = models.BigIntegerField(_("window"))
    count = models.PositiveIntegerField(_("count"), default=0)

    class Meta:
        verbose_name = _("rate limit window")
        verbose_name_plural = _("rate limit windows")
        constraints = [models.UniqueConstraint(fields=["limit_key", "window"], name="durable_rate_window")]

    def __str__(self) -> str:
        return f"{self.limit_key}@{self.window}: {self.count}"
