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
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import connection, connections, transaction
from django.db.models import Case, F, Value, When
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from . import clock, signals
from .conf import durable_settings
from .models import RUNNABLE, DurableEvent, DurableHistory, DurableInstance, HistoryKind, Status
from .sql import _returning_supported, hot_cursor, real_connection

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
    #: the awaited event, read by the claim on PostgreSQL (None: not read, or none was there yet)
    waiting_for: str = ""
    event_id: int | None = None
    event_payload: Any = None


def _pending_to_running(qn) -> str:
    """The claim's SET clause that shows a pending instance as ``running`` while its first step runs (no extra
    statement). A paused one stays paused: if its wait is not over, the run only gives the lease back."""
    return (f"{qn('status')} = CASE WHEN {qn('status')} = '{Status.PENDING.value}' THEN '{Status.RUNNING.value}' "
            f"ELSE {qn('status')} END")


_CLAIM_COLUMNS = ("instance_id", "program", "program_version", "status", "version", "lease_owner",
                  "lease_expires_at", "attempts", "state", "arguments")
_claim_sql: dict = {}


def _claim_statements() -> tuple[str, str]:
    """(SELECT, UPDATE) of the claim, built once per database vendor (cached SQL: no ORM per wake-up)."""
    sql = _claim_sql.get(connection.vendor)
    if sql is None:
        qn = connection.ops.quote_name
        table = qn(DurableInstance._meta.db_table)
        select = f"SELECT {', '.join(qn(c) for c in _CLAIM_COLUMNS)} FROM {table} WHERE {qn('instance_id')} = %s"
        update = (f"UPDATE {table} SET {_pending_to_running(qn)}, {qn('lease_owner')} = %s, "
                  f"{qn('lease_expires_at')} = %s, "
                  f"{qn('attempts')} = {qn('attempts')} + 1, {qn('version')} = {qn('version')} + 1, "
                  f"{qn('updated_at')} = %s WHERE {qn('instance_id')} = %s AND {qn('version')} = %s")
        sql = _claim_sql[connection.vendor] = (select, update)
    return sql


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
    n = len(instance_ids)
    connection = real_connection()
    if not n or not _returning_supported(connection):
        return []
    pg = connection.vendor == "postgresql"
    detached = pg and connection.get_autocommit() and not connection.in_atomic_block
    key = (connection.vendor, "claim-free", detached, 0 if pg else n)  # PostgreSQL: one statement for any n
    sql = _claim_sql.get(key)
    if sql is None:
        qn = connection.ops.quote_name
        runnable = ", ".join(f"'{s.value}'" for s in RUNNABLE)
        ids = "= ANY(%s)" if pg else f"IN ({', '.join(['%s'] * n)})"
        table = qn(DurableInstance._meta.db_table)
        returning = [f"{table}.{qn(c)}" for c in _CLAIM_COLUMNS]
        if pg:  # the awaited event too: the wake-up's first read, in the same round trip
            event = (f"FROM {qn(DurableEvent._meta.db_table)} e WHERE e.{qn('instance_id')} = "
                     f"{table}.{qn('instance_id')} AND e.{qn('name')} = {table}.{qn('waiting_for')} "
                     f"AND e.{qn('consumed_at')} IS NULL ORDER BY e.{qn('id')} LIMIT 1")
            returning += [f"{table}.{qn('waiting_for')}", f"(SELECT e.{qn('id')} {event}) AS event_id",
                          f"(SELECT e.{qn('payload')} {event}) AS event_payload"]
        sql = (f"UPDATE {table} SET {_pending_to_running(qn)}, {qn('lease_owner')} = %s, "
               f"{qn('lease_expires_at')} = %s, {qn('attempts')} = {qn('attempts')} + 1, "
               f"{qn('version')} = {qn('version')} + 1, {qn('updated_at')} = %s "
               f"WHERE {qn('instance_id')} {ids} AND {qn('lease_owner')} = '' "
               f"AND {qn('status')} IN ({runnable}) AND {qn('attempts')} < %s "
               f"RETURNING {', '.join(returning)}")
        if detached:
            # A transaction of its own that does not wait for its WAL flush: ``set_config(..., true)``
            # sets synchronous_commit for this statement's implicit transaction only. Safe because a
            # claim needs no durability: other sessions see it once it commits, and the run's first
            # checkpoint commits synchronously, which flushes the WAL up to and including the claim
            # (a database crash in between loses both, and the instance is simply claimed again).
            sql = (f"WITH nosync AS (SELECT set_config('synchronous_commit', 'off', true)), claimed AS ({sql}) "
                   "SELECT claimed.* FROM claimed, nosync")
        _claim_sql[key] = sql
    clock.sync(connection)  # a SELECT only when this process's reading of the database's clock is old
    now = clock.now()
    expires = lease_expiry(now)
    adapt = connection.ops.adapt_datetimefield_value
    params = [worker_id, adapt(expires), adapt(now), *([list(instance_ids)] if pg else instance_ids),
              durable_settings.MAX_ATTEMPTS]
    with hot_cursor(connection) as cur:
        cur.execute(sql, params)
        rows = cur.fetchall()
    out = []
    for values in rows:
        row = _Claimed(*values)
        row.lease_expires_at = expires
        out.append(row)
    return out


def _claim(instance_id: str, worker_id: str) -> _Claimed | None:
    claimed = _claim_free([instance_id], worker_id)
    if claimed:
        return claimed[0]
    clock.sync()
    now = clock.now()
    select, update = _claim_statements()
    with hot_cursor(connection) as cur:
        cur.execute(select, [instance_id])
        values = cur.fetchone()
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
    adapt = connection.ops.adapt_datetimefield_value
    with hot_cursor(connection) as cur:
        cur.execute(update, [worker_id, adapt(expires), adapt(now), instance_id, row.version])
        n = cur.rowcount
    if n != 1:
        return None
    row.lease_expires_at = expires
    if row.status == Status.PENDING:
        row.status = Status.RUNNING  # as the claim's UPDATE set it
    if recovered:
        DurableHistory.objects.create(instance_id=instance_id, kind=HistoryKind.RECOVERED, status=row.status,
                                      detail=f"lease of {row.lease_owner} expired", actor=worker_id)
        signals.send_transition("recovered", instance_id, row.status, row.program, detail=row.lease_owner)
    return row


# -- release, suspend -------------------------------------------------------------
def _release(instance_id: str, worker_id: str, count_attempt: bool = False) -> None:
    """Give the lease back; ``count_attempt``: the run failed before its next checkpoint (see MAX_ATTEMPTS)."""
    extra = {} if count_attempt else {"attempts": 0}
    DurableInstance.objects.filter(pk=instance_id, lease_owner=worker_id).update(
        lease_owner="", lease_expires_at=None, updated_at=clock.now(), **extra)


def _release_many(instance_ids: list[str], worker_id: str, heartbeat: _Heartbeat | None) -> None:
    """Give back claimed instances that were not started (lease and attempt cleared, nothing else)."""
    if heartbeat is not None:
        for iid in instance_ids:
            heartbeat.remove(iid, worker_id)
    if instance_ids:
        try:
            never_ran = When(status=Status.RUNNING, state__isnull=True, then=Value(Status.PENDING.value))
            DurableInstance.objects.filter(pk__in=instance_ids, lease_owner=worker_id).update(
                lease_owner="", lease_expires_at=None, attempts=F("attempts") - 1, updated_at=clock.now(),
                status=Case(never_ran, default=F("status")))  # pending again, as before the claim
        except Exception:  # the database is gone: the leases expire and the sweep hands them out
            log.warning("could not release %d claimed instances", len(instance_ids), exc_info=True)


def _suspend(row: _Claimed, worker_id: str, reason: str, version: int | None = None, error: str | None = None) -> None:
    """Suspend a claimed instance (``reason`` in the history; ``error``, default ``reason``, in its row)."""
    rows = DurableInstance.objects.filter(pk=row.instance_id, status__in=RUNNABLE)
    rows = rows.filter(version=version) if version is not None else rows.filter(lease_owner=worker_id)
    reason = reason.replace("\0", "")[:2000]  # PostgreSQL text holds no NUL
    with transaction.atomic():
        if rows.update(status=Status.SUSPENDED, error=(error or reason).replace("\0", "")[-20000:], lease_owner="",
                       lease_expires_at=None, version=F("version") + 1, updated_at=clock.now()):
            DurableHistory.objects.create(instance_id=row.instance_id, kind=HistoryKind.SUSPENDED,
                                          status=Status.SUSPENDED, detail=reason, actor=worker_id)
            transaction.on_commit(lambda: signals.send_transition(
                "suspended", row.instance_id, Status.SUSPENDED, row.program, detail=reason))
    log.error("durable instance %s suspended: %s", row.instance_id, reason)


# -- extend ------------------------------------------------------------------------
def extend(instance_id: str, worker_id: str) -> bool:
    """Extend the lease ``worker_id`` holds on ``instance_id`` by a full lease; False when it is no longer held."""
    return bool(DurableInstance.objects.filter(pk=instance_id, lease_owner=worker_id).update(
        lease_expires_at=lease_expiry(clock.now())))


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
