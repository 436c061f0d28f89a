"""Keep :class:`HumanTask` rows in step with what instances wait for, and answer tasks.

An instance has a row per live human-task wait, keyed by its branch (``""``
for the instance's own wait, a path like ``"0.1"`` for each paused branch of
a ``durable.gather``). A row is closed (deleted) when its wait ends: answered,
its branch went on or was cancelled, or the instance ended. While the instance
runs, the rows of its other branches stay (their waits are not over); the
pages show a task only while the signed state still has its wait.

``sync_instance`` is idempotent and order-independent (it reads the current
row, never trusts the signal's arguments), so receivers in several processes
may run it in any order. ``sync_all`` rebuilds every row (after installing the
app). ``repair`` fixes what a crash between a commit and its signal left
wrong; it runs after every periodic sweep (``signals.sweep_finished``), a
bounded batch at a time, from a cursor kept in the database (so a new
process does not re-read every waiting instance).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from asgiref.sync import sync_to_async
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from durable import StateTamperedError

from ..answers import publish_answer
from ..limits import check_event_name, check_idempotency_key, check_instance_id
from ..models import DurableInstance, Status
from ..signals import instance_transition, sweep_finished
from .assignment import EVENT_KINDS, Wait, check_wait, current_waits, find_wait
from .models import HumanTask, RepairCursor

log = logging.getLogger("durable_django")


def sync_instance(instance_id: str) -> list[HumanTask]:
    """Create, update or delete the task rows of one instance from its current waits (one per branch)."""
    try:
        waits = [w for w in current_waits(instance_id) if w.is_task]
    except (StateTamperedError, Exception):  # unreadable state (tampered, code gone): nobody can answer it
        log.warning("cannot read the wait of durable instance %s", instance_id, exc_info=True)
        waits = []
    HumanTask.objects.filter(instance_id=instance_id).exclude(branch__in=[w.branch for w in waits]).delete()
    return [_upsert(w) for w in waits]


def _upsert(wait: Wait) -> HumanTask:
    meta = wait.meta
    user = group = None
    if meta.get("user"):
        user = get_user_model()._default_manager.filter(**{get_user_model().USERNAME_FIELD: meta["user"]}).first()
    if meta.get("group"):
        group = Group.objects.filter(name=meta["group"]).first()
    fields: dict[str, Any] = {
        "event": wait.event, "title": str(meta.get("title") or "")[:255], "assignee_user": user,
        "assignee_group": group, "permission": str(meta.get("permission") or "")[:255],
        "exclude_user": str(meta.get("exclude_user") or "")[:150],
        "form": str(meta.get("form") or "")[:255], "schema": meta.get("schema"),
        "due_at": datetime.fromtimestamp(wait.due, tz=UTC) if wait.due else None,
        "instance_version": wait.version,
    }
    task, _ = HumanTask.objects.update_or_create(instance_id=wait.instance_id, branch=wait.branch, defaults=fields)
    return task


def sync_all() -> int:
    """Rebuild every task row; returns how many tasks exist afterwards."""
    waiting = set(DurableInstance.objects.filter(status=Status.PAUSED, wait_kind__in=EVENT_KINDS)
                  .values_list("pk", flat=True))
    HumanTask.objects.exclude(instance_id__in=waiting).delete()
    for iid in waiting:
        sync_instance(iid)
    return HumanTask.objects.count()


def repair(since: datetime | None = None, *, limit: int | None = None,
           after: tuple[datetime, str] | None = None) -> int:
    """Re-sync the rows a lost transition signal may have left wrong; returns how many instances were re-read.

    Cheaper than :func:`sync_all` (which unpickles every waiting instance):
    re-reads the task rows whose instance no longer waits for an event or has
    moved on (another row ``version``), and the instances waiting for an event
    without a task row that changed since ``since`` (all of them when None),
    at most ``limit`` of those, oldest first, after the keyset ``after``
    (``updated_at``, ``instance_id``).
    """
    ids = _stale_rows()
    ids.update(r[0] for r in _missing(since, limit, after))
    for iid in ids:
        sync_instance(iid)
    return len(ids)


def _stale_rows() -> set[str]:
    waiting = DurableInstance.objects.filter(status=Status.PAUSED, wait_kind__in=EVENT_KINDS)
    ids = set(HumanTask.objects.exclude(instance__in=waiting.values("pk")).values_list("instance_id", flat=True))
    ids.update(HumanTask.objects.exclude(instance_version=F("instance__version")).values_list("instance_id", flat=True))
    return ids


def _missing(since: datetime | None, limit: int | None, after: tuple[datetime, str] | None) -> list[tuple]:
    """Instances waiting for an event with no task row, by (updated_at, instance_id)."""
    rows = DurableInstance.objects.filter(status=Status.PAUSED, wait_kind__in=EVENT_KINDS, human_tasks__isnull=True)
    if since is not None:
        rows = rows.filter(updated_at__gte=since)
    if after is not None:
        rows = rows.filter(Q(updated_at__gt=after[0]) | Q(updated_at=after[0], pk__gt=after[1]))
    keys = rows.order_by("updated_at", "pk").values_list("pk", "updated_at")
    return list(keys if limit is None else keys[:limit])


#: How many instances without a task row one sweep's repair re-reads at most (each is unpickled).
REPAIR_BATCH = 500
#: Overlap between consecutive repairs, for clock differences between the processes that write rows.
REPAIR_OVERLAP = timedelta(seconds=60)


def on_sweep_finished(sender, **kwargs: Any) -> None:
    """After each sweep: repair a bounded batch, continuing where the last repair (any process) stopped."""
    started = timezone.now()
    cursor, _ = RepairCursor.objects.get_or_create(name="sweep")
    after = (cursor.updated_at, cursor.instance_id) if cursor.updated_at is not None else None
    ids = _stale_rows()
    batch = _missing(None, REPAIR_BATCH, after)
    ids.update(r[0] for r in batch)
    for iid in ids:
        sync_instance(iid)
    if len(batch) == REPAIR_BATCH:  # more to look at: continue after the last one next time
        cursor.updated_at, cursor.instance_id = batch[-1][1], batch[-1][0]
    else:  # caught up: next time, what changed since now (with some overlap)
        cursor.updated_at, cursor.instance_id = started - REPAIR_OVERLAP, ""
    cursor.save(update_fields=["updated_at", "instance_id"])


def on_transition(sender, instance_id: str, kind: str = "", status: str = "", **kwargs: Any) -> None:
    if kind == "event_published":
        return  # the wait is unchanged until the instance runs
    if status in (Status.RUNNING, Status.PENDING):
        # Running: a wait may be ending, the others (parallel branches) stay; the next pause or end decides.
        # The pages show a task only while the signed state has its wait, so a row left meanwhile answers nothing.
        return
    if status and status != Status.PAUSED:
        # Not waiting (finished, suspended...): one DELETE, no read. Should the instance have paused again
        # meanwhile, its own transition re-creates the rows (and the sweep's repair catches a lost one).
        HumanTask.objects.filter(instance_id=instance_id).delete()
        return
    sync_instance(instance_id)


def connect() -> None:
    """Connect the receivers (idempotent): after every transition, and after every sweep."""
    instance_transition.connect(on_transition, dispatch_uid="durable_django.humantasks.sync", weak=False)
    sweep_finished.connect(on_sweep_finished, dispatch_uid="durable_django.humantasks.repair", weak=False)


def answer(user, instance_id: str, event: str, payload: Any, *, branch: str | None = None,
           idempotency_key: str | None = None):
    """Publish ``event`` as ``user`` after checking the wait's assignment and form; the event's history
    entry records ``user`` as its actor.

    The wait is the one of ``branch`` (a task row's ``branch``) when given;
    else the instance's wait for ``event`` (with parallel branches, the first
    one for ``event`` that ``user`` may answer). The event goes to the instance,
    where the branch waiting for it takes it; the other branches' tasks stay.
    Returns the :class:`~durable_django.models.DurableEvent`; answering the
    same wait again returns the first answer's event and publishes nothing
    (:mod:`durable_django.answers`: the key is the server's; ``idempotency_key``
    is checked and otherwise ignored, kept for compatibility). Raises
    ``PermissionDenied``, ``ValidationError`` and the errors of
    :func:`durable_django.publish_event`.
    """
    check_instance_id(instance_id)
    check_event_name(event)
    check_idempotency_key(idempotency_key)
    wait = find_wait(current_waits(instance_id), event, branch, user)
    if wait is None and branch is not None:
        raise PermissionDenied("this task is no longer open (its branch went on)")
    cleaned = check_wait(user, wait, event, payload)
    with transaction.atomic():
        # One answer per wait (a double submit, two assignees, new client keys: one event); the history
        # entry of the event records who answered (its actor).
        ev = publish_answer(instance_id, event, cleaned, actor=user)
        tasks = HumanTask.objects.filter(instance_id=instance_id, event=event)
        (tasks.filter(branch=wait.branch) if wait is not None else tasks).delete()
    return ev


async def aanswer(user, instance_id: str, event: str, payload: Any, *, branch: str | None = None,
                  idempotency_key: str | None = None):
    """:func:`answer` for async code (an async view); same arguments, outcomes and errors."""
    return await sync_to_async(answer, thread_sensitive=True)(user, instance_id, event, payload, branch=branch,
                                                              idempotency_key=idempotency_key)
