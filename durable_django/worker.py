"""The worker's entry points: claim an instance's lease, run it, and wake what should run.

The Celery tasks (:mod:`durable_django.tasks`), the ``durable_resume``
command and inline mode (``RUN_INLINE``) all call :func:`run_instance`,
:func:`run_batch` and :func:`sweep`. Celery may deliver a message twice
(``acks_late``, broker redelivery, the sweep): the claim
(:mod:`durable_django.leases`) lets one worker run an instance at a time, and
:func:`durable_django.executor.run_claimed` runs it. After a pause the worker
checks once more for an event that arrived during the run, and sends a timer
due soon a delayed wake-up (:mod:`durable_django.wakeups`). The sweep is the
guarantee behind lost messages and far timers: it finds what should run
(:func:`due_instances`) and wakes it.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from django.db import DatabaseError
from django.db.models import Exists, F, OuterRef, Q

from . import cancellation, children, clock, flowcontrol, leases, signals
from .conf import durable_settings
from .db import ops
from .executor import LOST, SKIPPED, run_claimed
from .leases import _Claimed
from .models import DurableBranch, DurableEvent, DurableInstance, Status
from .waits import event_names, to_datetime
from .wakeups import schedule_timer, send_tasks

log = logging.getLogger("durable_django")

__all__ = ["LOST", "SKIPPED", "due_instances", "new_worker_id", "run_batch", "run_instance", "sweep"]


def new_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"


def run_instance(instance_id: str, worker_id: str | None = None) -> str:
    """Run ``instance_id`` until it pauses, completes, fails, is cancelled or suspended.

    Returns the final status, or ``"skipped"`` when another worker holds the
    lease or there is nothing to run, or ``"waiting"`` when it is over a flow-control
    limit and waits for a slot (docs/flow-control.md). Rows only change under a lease.
    Database errors (``OperationalError``...) propagate after the lease is
    released, so Celery can retry; program errors become a failed instance.
    """
    return _run_instance(instance_id, worker_id or new_worker_id())


def _run_instance(instance_id: str, worker_id: str, claimed: _Claimed | None = None) -> str:
    """:func:`run_instance`; ``claimed``: the row when the caller has already claimed it (a batch)."""
    outcome = SKIPPED
    for _ in range(max(1, durable_settings.MAX_ROUNDS)):
        row, claimed = claimed or leases._claim(instance_id, worker_id), None
        if row is None:
            return outcome
        if not flowcontrol.admit(row, worker_id):  # over a limit: it waits without holding this worker
            return flowcontrol.WAITING
        ended = "error"
        try:
            outcome, wait = run_claimed(row, worker_id)
            ended = outcome
        finally:
            flowcontrol.after_run(row, ended)  # wakes the next instance waiting for the slot it freed
        if outcome != Status.PAUSED:
            return outcome
        # An event published while we were running may have committed before our
        # pause did; its wake-up found the lease held. Check again, now that it is released.
        if wait is None:  # paused without a checkpoint of ours (the wait was not over): read the row
            if not DurableInstance.objects.with_pending_event().filter(pk=instance_id).exists():
                schedule_timer(instance_id)
                return outcome
        elif wait.get("kind") in children.CHILD_WAITS:
            # a child that ended while this run went on did not wake it (durable_django.children): look once
            if not children.wait_ready(wait):
                if wait.get("due") is not None:
                    schedule_timer(instance_id, to_datetime(wait["due"]))
                return outcome
        elif not _event_pending(instance_id, wait):
            if wait.get("due") is not None:
                schedule_timer(instance_id, to_datetime(wait["due"]))
            return outcome
    return outcome


def _event_pending(instance_id: str, wait: Mapping[str, Any]) -> bool:
    """Is an unconsumed event that ends ``wait`` in the inbox? (One cached SELECT per awaited name: it follows
    every pause; a wait on parallel branches awaits each paused branch's event.)"""
    return any(ops().event_pending(instance_id, name) for name in event_names(wait))


def run_batch(instance_ids: list[str], worker_id: str | None = None) -> dict[str, str]:
    """Run several instances one after the other, claimed together; returns each one's outcome.

    The free instances among ``instance_ids`` are claimed with one statement
    (one commit for the batch instead of one per instance) and registered
    with the lease heartbeat at once; each then runs exactly as
    :func:`run_instance` would (its own transaction per step, its own
    commits), and the ids that could not be claimed that way (held by
    another worker, an expired lease to take over, finished...) go through
    :func:`run_instance`'s own claim. After ``BATCH_SECONDS`` the instances
    not started yet are released and sent back as a new message, so slow
    programs do not queue up behind each other on one worker. On an error
    the instances not started are released (a killed worker's ones wait for
    their lease to expire, as a single run's does, and the sweep hands them
    out again); database errors propagate so that Celery retries the batch.
    """
    worker_id = worker_id or new_worker_id()
    ids = list(dict.fromkeys(instance_ids))
    claimed = {row.instance_id: row for row in leases._claim_free(ids, worker_id)}
    if any(row.priority for row in claimed.values()):  # highest priority first (stable)
        ids.sort(key=lambda iid: -claimed[iid].priority if iid in claimed else 0)
    heartbeat = leases.heartbeat() if claimed else None
    if heartbeat is not None:
        for iid in claimed:
            heartbeat.add(iid, worker_id)
    outcomes: dict[str, str] = {}
    deadline = time.monotonic() + float(durable_settings.BATCH_SECONDS)
    if claimed and heartbeat is None:  # nobody extends the waiting ones' leases: hand them back in time
        deadline = min(deadline, time.monotonic() + leases.half_lease())
    rest: list[str] = []
    i = 0
    try:
        for i, iid in enumerate(ids):
            if i and time.monotonic() > deadline:
                rest = ids[i:]
                break
            row = claimed.pop(iid, None)
            try:
                outcomes[iid] = _run_instance(iid, worker_id, row)
            finally:
                if heartbeat is not None and row is not None:
                    heartbeat.remove(iid, worker_id)
    except BaseException as exc:
        rest = ids[i + 1:]
        leases._release_many([iid for iid in rest if iid in claimed], worker_id, heartbeat)
        if rest and not isinstance(exc, DatabaseError) and not durable_settings.RUN_INLINE:
            _send_back(rest)  # Celery retries the whole batch on database errors only
        raise
    if rest:
        leases._release_many([iid for iid in rest if iid in claimed], worker_id, heartbeat)
        _send_back(rest)
    return outcomes


def _send_back(instance_ids: list[str]) -> None:
    if durable_settings.RUN_INLINE:
        run_batch(instance_ids)
    else:
        send_tasks(instance_ids)


def due_instances(now: datetime | None = None, limit: int | None = None) -> list[str]:
    """Ids the sweep would wake: due timers, stuck or abandoned runs, cancel requests not delivered, pending events.

    Four queries, each served by an index (status+wake_at, status+lease, the
    status part of the latter for the paused ones with a cancel request, the
    partial index of unconsumed events), rather than one OR over the whole table.
    """
    if now is None:
        clock.sync()
        now = clock.now()
    limit = limit or durable_settings.SWEEP_BATCH
    free = Q(lease_expires_at__isnull=True) | Q(lease_expires_at__lt=now)
    rows = DurableInstance.objects.filter(flow_waiting="")  # those waiting for a slot: flowcontrol.due_waiting
    ids: dict[str, None] = {}
    for qs in (
        rows.due(now).filter(free).order_by("wake_at"),
        rows.stuck(now).order_by("lease_expires_at"),
        cancellation.undelivered(now).order_by("cancel_requested_at"),
    ):
        ids.update(dict.fromkeys(qs.values_list("pk", flat=True)[: limit - len(ids)]))
        if len(ids) >= limit:
            return flowcontrol.by_priority(list(ids))
    ids.update(dict.fromkeys(flowcontrol.due_waiting(now, limit - len(ids))))
    ids.update(dict.fromkeys(children.parents_to_wake(now, limit - len(ids))))  # lost wake-ups of parents
    unconsumed = DurableEvent.objects.filter(consumed_at__isnull=True, instance__status=Status.PAUSED,
                                             instance__flow_waiting="").filter(
        Q(instance__lease_expires_at__isnull=True) | Q(instance__lease_expires_at__lt=now))
    in_branch = DurableBranch.objects.filter(instance=OuterRef("instance"), waiting_for=OuterRef("name"),
                                             status=Status.PAUSED, wait_kind="event")
    for waiting in (unconsumed.filter(instance__wait_kind="event", instance__waiting_for=F("name")),
                    # paused on parallel branches: an event a paused branch waits for (durable_django.branches)
                    unconsumed.filter(instance__wait_kind="branches").filter(Exists(in_branch))):
        for iid in waiting.order_by("id").values_list("instance_id", flat=True)[: limit * 2]:
            ids[iid] = None
            if len(ids) >= limit:
                return flowcontrol.by_priority(list(ids))
    return flowcontrol.by_priority(list(ids))


def sweep(*, now: datetime | None = None, dry_run: bool = False, inline: bool = False,
          limit: int | None = None) -> list[str]:
    """Wake every instance that should run and does not (the guarantee behind ETAs and lost messages).

    Before that, an instance whose cancellation was requested more than ``CANCEL_GRACE_SECONDS`` ago and
    has not ended it is ended ``cancelled`` (:func:`durable_django.cancellation.force_expired`).

    With ``inline`` the instances are run here, one after the other, instead of
    being sent to Celery.
    """
    if not dry_run:  # first: a cancellation that outlived CANCEL_GRACE_SECONDS ends now, not woken below
        cancellation.force_expired(now, limit)
    ids = due_instances(now, limit)
    if dry_run:
        return ids
    if inline or durable_settings.RUN_INLINE:
        for iid in ids:
            try:
                run_instance(iid)
            except Exception:
                log.exception("running durable instance %s failed", iid)
    else:
        send_tasks(ids)
    signals.send_sweep_finished(ids)
    return ids
