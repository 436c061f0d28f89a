"""Cancelling an instance: first a request that lets the program clean up, then (if need be) the forced end.

Why two steps: a program's ``except``/``finally`` blocks are where it
releases what it holds (a reservation, a lock, a human task). A cancel
request marks the row (``cancel_requested_at``, ``cancel_reason``) and wakes
the instance; the worker that runs it asks the core runtime to raise
``InstanceCancelled`` at the program's current await (see
:mod:`durable_django.executor`), so the cleanup runs with its steps
checkpointed like any others, and the instance ends ``cancelled`` when the
cancellation leaves the program. A worker already running the instance reads
the flag at its checkpoints (:meth:`DjangoOrchestrationBackend.watch_cancel
<durable_django.backend.DjangoOrchestrationBackend.watch_cancel>`).

The forced end runs nothing: a second cancel, ``force=True``, a suspended
instance (it cannot run), and the sweep once ``CANCEL_GRACE_SECONDS`` have
passed since the request (:func:`force_expired`). A worker still running the
instance then loses its next checkpoint (the row is finished), and its
uncommitted step is rolled back.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from django.db import models, transaction

from . import children, clock, db
from .conf import durable_settings
from .exceptions import InstanceFinished, UnknownInstance
from .models import FINISHED, DurableHistory, DurableInstance, HistoryKind, Status
from .wakeups import schedule_and_signal, signal_after_commit

log = logging.getLogger("durable_django")

__all__ = ["cancel_instance", "force_expired", "undelivered"]


def cancel_instance(instance_id: str, reason: str = "", *, actor: str = "", force: bool = False) -> DurableInstance:
    """Request the cancellation of an instance, or end it ``cancelled`` at once (see the module's docstring).

    Raises :class:`UnknownInstance`, and :class:`InstanceFinished` once it completed, failed or was cancelled.
    """
    with transaction.atomic(using=db.alias()):
        inst = DurableInstance.objects.select_for_update().defer("state", "arguments").filter(pk=instance_id).first()
        if inst is None:
            raise UnknownInstance(instance_id)
        if inst.status in FINISHED:
            raise InstanceFinished(instance_id, inst.status, "cancel")
        now = clock.now()  # the database's clock, as the sweep that compares it with CANCEL_GRACE_SECONDS
        if force or inst.cancel_requested_at is not None or inst.status == Status.SUSPENDED:
            detail = _end(inst, reason, actor, now)
            signal_after_commit("cancelled", instance_id, Status.CANCELLED, inst.program, detail=detail)
        else:
            DurableInstance.objects.filter(pk=instance_id).update(
                cancel_requested_at=now, cancel_reason=reason, updated_at=now, version=models.F("version") + 1)
            DurableHistory.objects.create(instance=inst, kind=HistoryKind.CANCEL_REQUESTED, status=inst.status,
                                          detail=reason, actor=actor)
            # after commit, the signal first: the worker that claims it then raises the cancellation
            schedule_and_signal(instance_id, "cancel_requested", inst.status, inst.program, detail=reason)
        inst.refresh_from_db(fields=_SHOWN)
    if inst.status != Status.CANCELLED and not db.connection().in_atomic_block:
        inst.refresh_from_db(fields=_SHOWN)  # RUN_INLINE ran its cleanup at the commit: the row as it left it
    return inst


#: The columns a cancel may change (refreshed on the instance it returns).
_SHOWN = ["status", "cancel_requested_at", "cancel_reason", "finished_at", "error", "lease_owner",
          "lease_expires_at", "version", "updated_at", "wait_kind", "waiting_for", "wake_at", "position", "steps"]


def _end(inst: DurableInstance, reason: str, actor: str, now: datetime) -> str:
    """End ``inst`` (locked by the caller) ``cancelled`` now; returns the history's detail."""
    asked = inst.cancel_requested_at
    requested = asked is not None
    detail = reason or inst.cancel_reason
    if asked is not None:
        forced = f"forced: the cancellation requested at {asked.isoformat()} had not ended it"
        detail = f"{detail} ({forced})" if detail else forced
    DurableInstance.objects.filter(pk=inst.pk).update(
        status=Status.CANCELLED, finished_at=now, updated_at=now, lease_owner="", lease_expires_at=None,
        error=reason or inst.cancel_reason, cancel_requested_at=inst.cancel_requested_at or now,
        cancel_reason=inst.cancel_reason if requested else reason, version=models.F("version") + 1)
    DurableHistory.objects.create(instance=inst, kind=HistoryKind.CANCELLED, status=Status.CANCELLED,
                                  detail=detail, actor=actor)
    # no last checkpoint ran: its parent is woken and its children closed here (durable_django.children)
    if inst.parent_id:
        children.wake_parent(inst.parent_id, inst.pk, "cancelled", db.alias())
    doomed = DurableInstance.objects.filter(parent_id=inst.pk, on_parent_close="cancel").exclude(status__in=FINISHED)
    children.request_cancel(list(doomed.values_list("pk", flat=True)), f"its parent {inst.pk!r} was cancelled",
                            actor, db.alias())
    return detail


def force_expired(now: datetime | None = None, limit: int | None = None) -> list[str]:
    """End ``cancelled`` every instance whose cancel request is older than ``CANCEL_GRACE_SECONDS`` (the sweep).

    The cleanup of such an instance hangs, waits for something that will not come, or the program caught the
    cancellation and went on: it runs nothing more. Returns the ids it ended.
    """
    if now is None:
        clock.sync()
        now = clock.now()
    cutoff = now - timedelta(seconds=float(durable_settings.CANCEL_GRACE_SECONDS))
    ids = list(DurableInstance.objects.filter(cancel_requested_at__isnull=False, cancel_requested_at__lte=cutoff)
               .exclude(status__in=FINISHED)
               .order_by("cancel_requested_at").values_list("pk", flat=True)[: limit or durable_settings.SWEEP_BATCH])
    ended = []
    for iid in ids:
        try:
            cancel_instance(iid, "", actor="sweep (CANCEL_GRACE_SECONDS)", force=True)
            ended.append(iid)
        except (InstanceFinished, UnknownInstance):  # it ended (or was purged) in the meantime
            pass
    if ended:
        log.warning("forced the cancellation of %d durable instance(s) after CANCEL_GRACE_SECONDS: %s",
                    len(ended), ", ".join(ended[:20]))
    return ended


def undelivered(now: datetime) -> models.QuerySet[DurableInstance]:
    """Paused instances whose cancel request may not have reached a run yet (the sweep wakes them).

    The request's own wake-up is lost when its message is, or when a worker held the instance and paused
    it before it read the flag (it reads it at most every ``CANCEL_CHECK_SECONDS``): their last checkpoint
    is not later than that. An instance cleaning up that paused again soon after the request is woken too,
    for nothing (its state shows the cleanup: the run only pauses again) until the grace period ends it.
    """
    slack = timedelta(seconds=float(durable_settings.CANCEL_CHECK_SECONDS) + 1.0)
    free = models.Q(lease_expires_at__isnull=True) | models.Q(lease_expires_at__lt=now)
    return DurableInstance.objects.filter(
        free, status=Status.PAUSED, cancel_requested_at__isnull=False,
        updated_at__lt=models.F("cancel_requested_at") + slack)
