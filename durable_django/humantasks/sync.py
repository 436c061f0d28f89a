"""Keep :class:`HumanTask` rows in step with what instances wait for, and answer tasks.

``sync_instance`` is idempotent and order-independent (it reads the current
row, never trusts the signal's arguments), so receivers in several processes
may run it in any order. ``sync_all`` rebuilds every row (after installing the
app). ``repair`` fixes what a crash between a commit and its signal left
wrong; it runs after every periodic sweep (``signals.sweep_finished``).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from durable import StateTamperedError

from ..models import DurableInstance, Status
from .assignment import Wait, check_wait, current_wait
from .models import HumanTask

log = logging.getLogger("durable_django")


def sync_instance(instance_id: str) -> HumanTask | None:
    """Create, update or delete the task row of one instance from its current wait."""
    try:
        wait = current_wait(instance_id)
    except (StateTamperedError, Exception):  # unreadable state (tampered, code gone): nobody can answer it
        log.warning("cannot read the wait of durable instance %s", instance_id, exc_info=True)
        wait = None
    if wait is None or not wait.is_task:
        HumanTask.objects.filter(instance_id=instance_id).delete()
        return None
    return _upsert(wait)


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
        "form": str(meta.get("form") or "")[:255], "schema": meta.get("schema"),
        "due_at": datetime.fromtimestamp(wait.due, tz=UTC) if wait.due else None,
        "instance_version": wait.version,
    }
    task, _ = HumanTask.objects.update_or_create(instance_id=wait.instance_id, defaults=fields)
    return task


def sync_all() -> int:
    """Rebuild every task row; returns how many tasks exist afterwards."""
    waiting = set(DurableInstance.objects.filter(status=Status.PAUSED, wait_kind="event").values_list("pk", flat=True))
    HumanTask.objects.exclude(instance_id__in=waiting).delete()
    for iid in waiting:
        sync_instance(iid)
    return HumanTask.objects.count()


def repair(since: datetime | None = None) -> int:
    """Re-sync the rows a lost transition signal may have left wrong; returns how many instances were re-read.

    Cheaper than :func:`sync_all` (which unpickles every waiting instance):
    re-reads the task rows whose instance no longer waits for an event or has
    moved on (another row ``version``), and the instances waiting for an event
    without a task row that changed since ``since`` (all of them when None).
    """
    waiting = DurableInstance.objects.filter(status=Status.PAUSED, wait_kind="event")
    ids = set(HumanTask.objects.exclude(instance__in=waiting.values("pk")).values_list("instance_id", flat=True))
    ids.update(HumanTask.objects.exclude(instance_version=F("instance__version")).values_list("instance_id", flat=True))
    missing = waiting.filter(human_task__isnull=True)
    if since is not None:
        missing = missing.filter(updated_at__gte=since)
    ids.update(missing.values_list("pk", flat=True))
    for iid in ids:
        sync_instance(iid)
    return len(ids)


#: Start of this process's last repair after a sweep (None: none yet, so the next one looks at every row).
_last_repair: datetime | None = None
#: Overlap between consecutive repairs, for clock differences between the processes that write rows.
REPAIR_OVERLAP = timedelta(seconds=60)


def on_sweep_finished(sender, **kwargs: Any) -> None:
    global _last_repair
    started = timezone.now()
    repair(None if _last_repair is None else _last_repair - REPAIR_OVERLAP)
    _last_repair = started


def on_transition(sender, instance_id: str, kind: str = "", **kwargs: Any) -> None:
    if kind == "event_published":
        return  # the wait is unchanged until the instance runs
    sync_instance(instance_id)


def connect() -> None:
    """Connect the receivers (idempotent): after every transition, and after every sweep."""
    from ..signals import instance_transition, sweep_finished

    instance_transition.connect(on_transition, dispatch_uid="durable_django.humantasks.sync", weak=False)
    sweep_finished.connect(on_sweep_finished, dispatch_uid="durable_django.humantasks.repair", weak=False)


def answer(user, instance_id: str, event: str, payload: Any, *, idempotency_key: str | None = None):
    """Publish ``event`` as ``user`` after checking the wait's assignment and form; the event's history
    entry records ``user`` as its actor.

    Returns the :class:`~durable_django.models.DurableEvent`; answering the
    same wait again returns the first answer's event and publishes nothing. Raises
    ``PermissionDenied``, ``ValidationError`` and the errors of
    :func:`durable_django.publish_event`.
    """
    from ..api import publish_event

    wait = current_wait(instance_id)
    cleaned = check_wait(user, wait, event, payload)
    if idempotency_key is None and wait is not None and wait.event == event:
        # One answer per wait: a double submit (or two assignees at once) publishes a single event.
        idempotency_key = f"answer:{event}:{wait.steps}"
    with transaction.atomic():
        # The history entry of the event records who answered (its actor).
        ev = publish_event(instance_id, event, cleaned, idempotency_key=idempotency_key, actor=user)
        HumanTask.objects.filter(instance_id=instance_id, event=event).delete()
    return ev
