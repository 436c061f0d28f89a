"""Leases: which worker may run an instance now, and for how long.

A worker takes the lease with a conditional UPDATE (portable: it works on
SQLite, where ``select_for_update`` does nothing) before it runs anything;
every checkpoint is conditional on still holding it. The lease lasts
``LEASE_SECONDS`` from the database's clock (:func:`lease_expiry`), and is
refreshed before half of it is gone (:func:`half_lease`): by a checkpoint
(:func:`extension_due`), or by the process's heartbeat thread during a long
step (:class:`_Heartbeat`). A worker that dies stops refreshing it; once it
expires the sweep hands the instance to another worker, whose claim records
the recovery. A run ends by releasing the lease (:func:`_release`), or by
suspending the instance when it cannot run (:func:`_suspend`).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import connections, transaction
from django.db.models import F
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from . import clock, signals
from .conf import durable_settings
from .db import ops, slots
from .models import RUNNABLE, DurableHistory, DurableInstance, HistoryKind, Status

log = logging.getLogger("durable_django")


def lease_expiry(now: datetime) -> datetime:
    """When a lease taken or extended at ``now`` (the database's clock) expires."""
    return now + timedelta(seconds=durable_settings.LEASE_SECONDS)


def half_lease() -> float:
    """Half a lease, in seconds: a lease is refreshed, or handed back, before this much of it is gone."""
    return float(durable_settings.LEASE_SECONDS) / 2


def extension_due(expires_at: datetime | None, now: datetime) -> bool:
    """Should the checkpoint at ``now`` extend a lease that expires at ``expires_at``?

    With the heartbeat thread running, only once half of it has elapsed (the
    heartbeat covers long steps), so that most checkpoints change no indexed
    column (HOT updates on PostgreSQL); without it, at every checkpoint.
    """
    if expires_at is None or not durable_settings.HEARTBEAT:
        return True
    return (expires_at - now).total_seconds() < half_lease()


# -- claim ----------------------------------------------------------------------
@dataclass
class _Claimed:
    """The columns of an instance row that a run needs, read by the claim."""

    instance_id: str
    program: str
    program_version: str
    status: str
    version: int
    lease_owner: str
    lease_expires_at: datetime | None
    attempts: int
    state: bytes | memoryview | None
    arguments: bytes | memoryview | None
    #: a cancel requested by durable_django.cancel() (None: none); read raw, see _as_datetime
    cancel_requested_at: datetime | str | None
    cancel_reason: str
    #: the instance's deadline (None: none); read raw, see _as_datetime
    deadline: datetime | str | None
    #: flow control (durable_django.flowcontrol): the instance's priority and per-key limit key
    priority: int
    flow_key: str
    #: a child instance's parent and parent-close policy (durable_django.children); None, "" otherwise
    parent_id: str | None = None
    on_parent_close: str = ""
    #: the awaited event, read by the claim on PostgreSQL (None: not read, or none was there yet)
    waiting_for: str = ""
    event_id: int | None = None
    event_payload: Any = None
    #: the slot of its program's concurrency limit taken by the claim itself (PostgreSQL; see flowcontrol)
    slot: int | None = None


#: () -> the programs' concurrency limits as (program, size, hold); set by durable_django.flowcontrol.connect()
slot_limits: Callable[[], list[tuple[str, int, str]]] | None = None


def _as_datetime(value) -> datetime | None:
    """A timestamp read with a raw cursor, as Django's ORM would return it (SQLite: naive UTC)."""
    if isinstance(value, str):
        value = parse_datetime(value)
    if value is not None and settings.USE_TZ and timezone.is_naive(value):
        value = timezone.make_aware(value, UTC)
    return value


def _claim_free(instance_ids: list[str], worker_id: str) -> list[_Claimed]:
    """Claim the instances among ``instance_ids`` that are runnable and free, with one ``UPDATE ... RETURNING``.

    Free means nobody holds or held the lease (``lease_owner = ''``: never
    claimed, or released at the end of a run), so no recovery is involved;
    the others (an expired lease to take over, too many attempts, not
    runnable, missing) are left to :func:`_claim`. Two workers claiming the
    same ids cannot both get a row: the UPDATE is conditional on the
    ``lease_owner`` it overwrites (on PostgreSQL the second waits for the
    first's row lock, then sees the new owner and skips the row).
    """
    if not instance_ids:
        return []
    db = ops()
    clock.sync(db.connection)  # a SELECT only when this process's reading of the database's clock is old
    now = clock.now()
    expires = lease_expiry(now)
    out = []
    limits = slot_limits() if slot_limits is not None and len(instance_ids) == 1 else None
    if limits and db.connection.vendor == "postgresql":  # a limited program's slot in the same round trip
        rows = slots.claim_with_slot(db, instance_ids[0], worker_id, now, expires, durable_settings.MAX_ATTEMPTS,
                                     limits)
    else:
        rows = db.claim_batch(list(instance_ids), worker_id, now, expires, durable_settings.MAX_ATTEMPTS)
    for values in rows:
        row = _Claimed(*values)
        row.lease_expires_at = expires
        out.append(row)
    return out


def _claim(instance_id: str, worker_id: str) -> _Claimed | None:
    claimed = _claim_free([instance_id], worker_id)
    if claimed:
        return claimed[0]
    db = ops()
    clock.sync(db.connection)
    now = clock.now()
    values = db.claim_read(instance_id)
    if values is None:
        log.warning("durable instance %s does not exist (purged?); nothing to run", instance_id)
        return None
    row = _Claimed(*values)
    row.lease_expires_at = _as_datetime(row.lease_expires_at)
    if row.status not in RUNNABLE:
        return None
    if row.lease_owner and row.lease_expires_at and row.lease_expires_at > now:
        return None
    if row.attempts >= durable_settings.MAX_ATTEMPTS:
        _suspend(row, worker_id, f"{row.attempts} runs in a row ended before the next checkpoint (MAX_ATTEMPTS): "
                                 "the worker died, or a database error recurred (see the worker's log); fix the "
                                 "cause and resume it", version=row.version)
        return None
    recovered = bool(row.lease_owner)
    # Conditional on the version read above: state and arguments read with it are what we now own.
    expires = lease_expiry(now)
    if not db.claim(instance_id, worker_id, now, expires, row.version):
        return None
    row.lease_expires_at = expires
    if row.status == Status.PENDING:
        row.status = Status.RUNNING  # as the claim's UPDATE set it
    if recovered:
        db.add_history(instance_id, HistoryKind.RECOVERED, row.status, f"lease of {row.lease_owner} expired",
                       worker_id)
        signals.send_transition("recovered", instance_id, row.status, row.program, detail=row.lease_owner)
    return row


# -- release, suspend -------------------------------------------------------------
def _release(instance_id: str, worker_id: str, count_attempt: bool = False) -> None:
    """Give the lease back; ``count_attempt``: the run failed before its next checkpoint (see MAX_ATTEMPTS)."""
    ops().release(instance_id, worker_id, clock.now(), count_attempt)


def _release_many(instance_ids: list[str], worker_id: str, heartbeat: _Heartbeat | None) -> None:
    """Give back claimed instances that were not started (lease and attempt cleared, nothing else)."""
    if heartbeat is not None:
        for iid in instance_ids:
            heartbeat.remove(iid, worker_id)
    if instance_ids:
        try:
            ops().release_unstarted(instance_ids, worker_id, clock.now())  # pending again, as before the claim
        except Exception:  # the database is gone: the leases expire and the sweep hands them out
            log.warning("could not release %d claimed instances", len(instance_ids), exc_info=True)


def _suspend(row: _Claimed, worker_id: str, reason: str, version: int | None = None, error: str | None = None) -> None:
    """Suspend a claimed instance (``reason`` in the history; ``error``, default ``reason``, in its row)."""
    db = ops()
    rows = DurableInstance.objects.using(db.alias).filter(pk=row.instance_id, status__in=RUNNABLE)
    rows = rows.filter(version=version) if version is not None else rows.filter(lease_owner=worker_id)
    reason = reason.replace("\0", "")[:2000]  # PostgreSQL text holds no NUL
    with db.atomic():
        if rows.update(status=Status.SUSPENDED, error=(error or reason).replace("\0", "")[-20000:], lease_owner="",
                       lease_expires_at=None, version=F("version") + 1, updated_at=clock.now()):
            DurableHistory.objects.using(db.alias).create(instance_id=row.instance_id, kind=HistoryKind.SUSPENDED,
                                                          status=Status.SUSPENDED, detail=reason, actor=worker_id)
            transaction.on_commit(lambda: signals.send_transition(
                "suspended", row.instance_id, Status.SUSPENDED, row.program, detail=reason), using=db.alias)
    log.error("durable instance %s suspended: %s", row.instance_id, reason)


# -- extend ------------------------------------------------------------------------
def extend(instance_id: str, worker_id: str) -> bool:
    """Extend the lease ``worker_id`` holds on ``instance_id`` by a full lease; False when it is no longer held."""
    return ops().extend(instance_id, worker_id, lease_expiry(clock.now()))


class _Heartbeat(threading.Thread):
    """Extends the leases of the runs in progress in this process, on its own connection.

    Without it a step longer than ``LEASE_SECONDS`` would look like a dead
    worker. One thread per process (started at the first run) serves every
    run: a run registers its lease for its duration. A lease that is no longer
    ours is dropped; the thread dies with the process, so a killed worker's
    leases still expire.
    """

    _lock = threading.Lock()
    _instance: _Heartbeat | None = None

    def __init__(self) -> None:
        super().__init__(name="durable-heartbeat", daemon=True)
        self.leases: dict[tuple[str, str], int] = {}
        self.pid = os.getpid()
        self.wakeup = threading.Event()

    @classmethod
    def get(cls) -> _Heartbeat:
        with cls._lock:
            hb = cls._instance
            if hb is None or hb.pid != os.getpid() or not hb.is_alive():  # first run, or a forked child
                hb = cls._instance = cls()
                hb.start()
            return hb

    def add(self, instance_id: str, worker_id: str) -> None:
        with self._lock:
            key = (instance_id, worker_id)
            self.leases[key] = self.leases.get(key, 0) + 1

    def remove(self, instance_id: str, worker_id: str) -> None:
        with self._lock:
            key = (instance_id, worker_id)
            if self.leases.get(key, 0) <= 1:
                self.leases.pop(key, None)
            else:
                self.leases[key] -= 1

    def run(self) -> None:
        while True:
            self.wakeup.wait(float(durable_settings.LEASE_SECONDS) / 3)
            with self._lock:
                leases = list(self.leases)
            if not leases:
                continue
            try:
                clock.sync()
                for instance_id, worker_id in leases:
                    try:
                        if not extend(instance_id, worker_id):
                            with self._lock:  # released, lost or finished
                                self.leases.pop((instance_id, worker_id), None)
                    except Exception:
                        log.warning("lease heartbeat of %s failed", instance_id, exc_info=True)
            finally:
                connections.close_all()  # this thread's connections only: none is held between beats


def heartbeat() -> _Heartbeat | None:
    """This process's heartbeat thread (started by the first call), or None when ``DURABLE["HEARTBEAT"]`` is off."""
    return _Heartbeat.get() if durable_settings.HEARTBEAT else None
