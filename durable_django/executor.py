"""Running an instance: claim its lease, drive the core runtime, commit, release.

No Celery here: the Celery task, the ``durable_resume`` command and inline
mode all call :func:`run_instance` and :func:`sweep`.

Why one transaction per step: the runtime's event loop runs in the calling
(sync) thread, and the backend's calls and every thread-sensitive
``sync_to_async`` call of the program (Django's async ORM, ``db_step``) run
inline in that thread (see :func:`_run`), so every query of a run happens on
this thread's connection. With autocommit off, the writes a step makes stay
uncommitted until the backend commits the checkpoint that follows the step. A
worker killed in the middle of a step therefore leaves neither the step's
writes nor its checkpoint, and the next worker runs the step again from the
previous checkpoint: exactly-once database side effects.

Why a lease: Celery may deliver a message twice (``acks_late``, broker
redelivery, the sweep). A worker first takes the lease with a conditional
UPDATE (portable, works on SQLite where ``select_for_update`` does nothing);
every checkpoint is conditional on still owning it, and extends it once half
of it has elapsed (the process's heartbeat thread extends it too). A worker
that dies stops extending it, and once it expires the sweep hands the
instance to another worker.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import inspect
import logging
import os
import socket
import threading
import time
import uuid
import weakref
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from asgiref.sync import AsyncToSync, SyncToAsync, async_to_sync
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import InterfaceError, OperationalError, connection, transaction
from django.db.models import Case, F, Q, Value, When
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from django.utils.module_loading import import_string

from durable import CheckpointException, CodeChangedError, InstanceCancelled, PauseForEventException, StateTamperedError

from . import clock, programs, signals
from .backend import (
    DjangoOrchestrationBackend,
    _hidden_loop_call,
    cached_sql,
    describe_error,
    hot_cursor,
    real_connection,
    to_datetime,
)
from .conf import durable_settings
from .exceptions import LeaseLost, UnknownProgram
from .models import RUNNABLE, DurableEvent, DurableHistory, DurableInstance, HistoryKind, Status
from .signing import ARGUMENTS, STATE, blob_context, unsign, verified

log = logging.getLogger("durable_django")

_local = threading.local()

#: Outcomes of :func:`run_instance` besides the statuses.
SKIPPED, LOST, MISSING = "skipped", "lease-lost", "missing"


@dataclass
class Run:
    instance_id: str
    worker_id: str
    after_commit: list = field(default_factory=list)


def current_run() -> Run | None:
    """The run in progress on this thread (inside a durable step), if any."""
    return getattr(_local, "run", None)


def new_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"


def run_instance(instance_id: str, worker_id: str | None = None) -> str:
    """Run ``instance_id`` until it pauses, completes, fails, is cancelled or suspended.

    Returns the final status, or ``"skipped"`` when another worker holds the
    lease or there is nothing to run. Rows only change under a lease.
    Database errors (``OperationalError``...) propagate after the lease is
    released, so Celery can retry; program errors become a failed instance.
    """
    return _run_instance(instance_id, worker_id or new_worker_id())


def _run_instance(instance_id: str, worker_id: str, claimed: _Claimed | None = None) -> str:
    """:func:`run_instance`; ``claimed``: the row when the caller has already claimed it (a batch)."""
    outcome = SKIPPED
    for _ in range(max(1, durable_settings.MAX_ROUNDS)):
        row, claimed = claimed or _claim(instance_id, worker_id), None
        if row is None:
            return outcome
        outcome, wait = _run_claimed(row, worker_id)
        if outcome != Status.PAUSED:
            return outcome
        # An event published while we were running may have committed before our
        # pause did; its wake-up found the lease held. Check again, now that it is released.
        if wait is None:  # paused without a checkpoint of ours (the wait was not over): read the row
            if not DurableInstance.objects.with_pending_event().filter(pk=instance_id).exists():
                _schedule_timer(instance_id)
                return outcome
        elif wait.get("kind") != "event" or not _event_pending(instance_id, wait.get("event")):
            if wait.get("due") is not None:
                _schedule_timer(instance_id, to_datetime(wait["due"]))
            return outcome
    return outcome


def _event_pending(instance_id: str, name: str) -> bool:
    """Is an unconsumed event ``name`` in the inbox? (One cached SELECT: it follows every pause.)"""
    conn = real_connection()
    sql = cached_sql(conn, ("pending",), lambda qn: (
        f"SELECT 1 FROM {qn(DurableEvent._meta.db_table)} WHERE {qn('instance_id')} = %s "
        f"AND {qn('name')} = %s AND {qn('consumed_at')} IS NULL LIMIT 1"))
    with hot_cursor(conn) as cur:
        cur.execute(sql, [instance_id, name])
        return cur.fetchone() is not None


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
    claimed = {row.instance_id: row for row in _claim_free(ids, worker_id)}
    heartbeat = _Heartbeat.get() if durable_settings.HEARTBEAT and claimed else None
    if heartbeat is not None:
        for iid in claimed:
            heartbeat.add(iid, worker_id)
    outcomes: dict[str, str] = {}
    deadline = time.monotonic() + float(durable_settings.BATCH_SECONDS)
    if claimed and heartbeat is None:  # nobody extends the waiting ones' leases: hand them back in time
        deadline = min(deadline, time.monotonic() + float(durable_settings.LEASE_SECONDS) / 2)
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
        _release_many([iid for iid in rest if iid in claimed], worker_id, heartbeat)
        from django.db import DatabaseError

        if rest and not isinstance(exc, DatabaseError) and not durable_settings.RUN_INLINE:
            _send_back(rest)  # Celery retries the whole batch on database errors only
        raise
    if rest:
        _release_many([iid for iid in rest if iid in claimed], worker_id, heartbeat)
        _send_back(rest)
    return outcomes


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


def _send_back(instance_ids: list[str]) -> None:
    from .api import send_tasks

    if durable_settings.RUN_INLINE:
        run_batch(instance_ids)
    else:
        send_tasks(instance_ids)


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


def _returning_supported(connection=connection) -> bool:
    """``UPDATE ... RETURNING``: PostgreSQL, and SQLite from 3.35."""
    if connection.vendor == "postgresql":
        return True
    if connection.vendor == "sqlite":
        import sqlite3

        return sqlite3.sqlite_version_info >= (3, 35)
    return False


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
    expires = now + timedelta(seconds=durable_settings.LEASE_SECONDS)
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
    expires = now + timedelta(seconds=durable_settings.LEASE_SECONDS)
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


def _release(instance_id: str, worker_id: str, count_attempt: bool = False) -> None:
    """Give the lease back; ``count_attempt``: the run failed before its next checkpoint (see MAX_ATTEMPTS)."""
    extra = {} if count_attempt else {"attempts": 0}
    DurableInstance.objects.filter(pk=instance_id, lease_owner=worker_id).update(
        lease_owner="", lease_expires_at=None, updated_at=clock.now(), **extra)


def _give_up_or_retry(row: _Claimed, worker_id: str, exc: Exception) -> None:
    """An error outside the program's code (loading its state, binding its arguments, saving a checkpoint...).

    A database that is unreachable or restarting (``OperationalError``, ``InterfaceError``) may work at the
    next try: the lease is released with the claim's attempt still counted, and the error propagates so that
    Celery retries; once ``MAX_ATTEMPTS`` claims in a row end without a checkpoint, the next claim suspends
    the instance. Anything else would fail again at every try (and every sweep would hand the instance out
    again): it is suspended now, with the error in ``error`` and the history. ``ImproperlyConfigured`` (the
    worker's settings, e.g. its signing keys) hands the instance back uncounted and propagates: the instance is
    not at fault. The program's own exceptions never get here: they fail the instance, or the program catches them.
    """
    if isinstance(exc, ImproperlyConfigured):  # the worker's settings (e.g. its signing keys), not the instance
        _release(row.instance_id, worker_id)
        raise exc
    if isinstance(exc, OperationalError | InterfaceError):
        try:
            _release(row.instance_id, worker_id, count_attempt=True)
        except Exception:  # the database is still gone: the lease expires and the sweep hands it out again
            log.warning("could not release durable instance %s", row.instance_id, exc_info=True)
        raise exc
    reason = f"the worker could not run it (outside the program's code): {type(exc).__name__}: {exc}"
    log.error("durable instance %s", row.instance_id, exc_info=exc)
    _suspend(row, worker_id, reason, error=f"{reason}\n\n{describe_error(exc)}")


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


def _run_claimed(row: _Claimed, worker_id: str) -> tuple[str, dict | None]:
    """Run a claimed instance; returns its outcome and, when our own checkpoint paused it, the wait."""
    instance_id = row.instance_id
    try:
        # The signatures are checked before the program's path is even imported: they bind the blobs to this
        # row's id and program, so a row whose program column was changed stops here.
        raw_args = row.arguments
        if raw_args is not None:
            args, kwargs = unsign(raw_args, blob_context(instance_id, row.program, ARGUMENTS))
        elif row.state is not None:
            args, kwargs = (), {}
            verified(row.state, blob_context(instance_id, row.program, STATE))
        else:
            raise StateTamperedError("the instance has neither signed arguments nor signed state; refusing to run "
                                     "its program")
        program = programs.resolve(row.program)
    except (UnknownProgram, StateTamperedError) as exc:
        _suspend(row, worker_id, f"{type(exc).__name__}: {exc}")
        return Status.SUSPENDED, None
    except Exception as exc:
        _give_up_or_retry(row, worker_id, exc)  # a database error propagates (Celery retries), else suspended
        return Status.SUSPENDED, None
    except BaseException:  # interrupted: nothing ran; hand the instance back
        _release(instance_id, worker_id)
        raise
    manage = durable_settings.ATOMIC_STEPS and not connection.in_atomic_block
    backend = DjangoOrchestrationBackend(worker_id=worker_id, commit=manage, program=row.program)
    backend.prefetched = (row.state, row.status, row.program)
    if row.event_id is not None:
        backend.prefetched_event = (row.waiting_for, row.event_id, row.event_payload)
    backend.lease_expires_at = row.lease_expires_at
    migrate = programs.migrator_for(row.program, row.program_version, program)
    hook = durable_settings.ON_CHECKPOINT
    runtime = program.runtime(backend, instance_id, migrate=migrate, clock=clock.time,
                              on_checkpoint=import_string(hook) if hook else None)
    run = Run(instance_id, worker_id)
    outcome: str
    error: BaseException | None = None
    _local.run = run
    heartbeat = _Heartbeat.get() if durable_settings.HEARTBEAT else None
    if manage:
        transaction.set_autocommit(False)
    if heartbeat is not None:
        heartbeat.add(instance_id, worker_id)
    try:
        _run(backend, runtime.run, program, args, kwargs)
        outcome = Status.COMPLETED
    except PauseForEventException:
        outcome = Status.PAUSED
    except InstanceCancelled:
        outcome = Status.CANCELLED
    except LeaseLost as exc:
        log.warning("%s", exc)
        outcome = LOST
    except Exception as exc:
        if backend.last_status == Status.FAILED:
            outcome = Status.FAILED
        else:
            outcome, error = "error", exc
    finally:
        _local.run = None
        if heartbeat is not None:  # first: nothing below may leave a lease that the heartbeat keeps alive
            heartbeat.remove(instance_id, worker_id)
        if manage:
            _end_manual_transaction()

    if outcome == Status.PAUSED and backend.uncommitted_rejections:
        # A human-task wait rejected events, then paused without a checkpoint (rolled back above): the
        # rejections are kept anyway, or the rejected events would wake the instance again and again.
        backend.commit_rejections()
    if error is not None:
        if isinstance(error, CodeChangedError | StateTamperedError | CheckpointException | UnknownProgram):
            _suspend(row, worker_id, f"{type(error).__name__}: {error}")
        else:
            _give_up_or_retry(row, worker_id, error)
        outcome = Status.SUSPENDED
    elif outcome in (Status.PAUSED, Status.CANCELLED) and backend.saves == 0:
        _release(instance_id, worker_id)  # the wait was not over: nothing ran
    elif outcome == Status.PAUSED and backend.last_status != Status.PAUSED:
        _release(instance_id, worker_id)

    for kind, status, detail in backend.transitions:
        signals.send_transition(kind, instance_id, status, row.program, detail=detail)
    for func in run.after_commit:
        try:
            func()
        except Exception:
            log.exception("after-commit callback of durable instance %s failed", instance_id)
    paused_here = outcome == Status.PAUSED and backend.saves and backend.last_status == Status.PAUSED
    return outcome, (backend.last_wait if paused_here else None)


def _end_manual_transaction() -> None:
    """Roll back what the last checkpoint did not commit and give the connection back in autocommit.

    On a connection that died during the run (database restarted, network cut) neither works: it is closed
    instead, so that the worker's next statement (the lease release, the next task) opens a new one in
    autocommit rather than failing again on the dead one. The database rolled the transaction back.
    """
    try:
        if connection.connection is not None:
            connection.rollback()  # anything after the last checkpoint: not committed, not kept
        transaction.set_autocommit(True)
    except Exception:
        log.warning("the database connection was lost during a run; it is replaced", exc_info=True)
        try:
            connection.close()
        except Exception:  # noqa: BLE001 - closing a dead connection; it is dropped either way
            log.debug("closing the dead connection failed", exc_info=True)
        connection.connection = None


class _InlineExecutor(concurrent.futures.Executor):
    """asgiref's thread-sensitive executor for a run whose event loop is in the executor's own thread.

    Every ``sync_to_async(thread_sensitive=True)`` call of the program (the
    async ORM, ``db_step``) runs right here, in the thread that holds the
    connection and its transaction, with no thread hop. asgiref hands over
    ``thread_handler(loop, exc_info, task_context, func, child)``, which would
    record this loop as the thread's "main loop", so that an ``async_to_sync``
    nested in the call (a signal handler pushing to a channel layer...) would
    wait for this very thread; ``func(child)`` is called instead (it restores
    the caller's context and runs the call), and a nested ``async_to_sync``
    gets a loop of its own as in any sync thread.
    """

    def submit(self, fn, /, *args, **kwargs):
        future: concurrent.futures.Future = concurrent.futures.Future()
        if (isinstance(fn, functools.partial) and getattr(fn.func, "__name__", "") == "thread_handler"
                and len(fn.args) == 5 and not args and not kwargs):
            call, call_args = fn.args[3], fn.args[4:]
        else:
            call, call_args = functools.partial(fn, **kwargs), args
        try:
            future.set_result(_hidden_loop_call(call, *call_args))
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting coroutine
            future.set_exception(exc)
        return future


def _asgiref_fits() -> bool:
    """The inline mode relies on asgiref's ``thread_handler(loop, exc_info, task_context, func, *args)``."""
    try:
        params = list(inspect.signature(SyncToAsync.thread_handler).parameters)
    except (AttributeError, TypeError, ValueError):
        return False
    return params[:5] == ["self", "loop", "exc_info", "task_context", "func"]


_INLINE = _InlineExecutor() if _asgiref_fits() else None


def _close_loop(loop: asyncio.AbstractEventLoop) -> None:
    if not loop.is_running() and not loop.is_closed():
        try:
            loop.close()
        except Exception:  # noqa: BLE001 - best effort at thread exit
            pass


def _run(backend: DjangoOrchestrationBackend, func, *args):
    """Run ``func(*args)`` (the runtime) on an event loop in this thread, kept for the thread's later runs.

    The backend's calls and the program's thread-sensitive calls run inline in
    this thread (see :class:`_InlineExecutor`): the same connection and
    transaction as with ``async_to_sync``, without two thread switches per
    checkpoint and a new thread and event loop per run. Falls back to
    :func:`_run_async` when this thread's loop is already busy (a run nested
    in a step of another run) or asgiref does not fit.
    """
    loop = getattr(_local, "inline_loop", None)
    if _INLINE is None or (loop is not None and loop.is_running()) or asyncio._get_running_loop() is not None:
        return _run_async(func, *args)
    if loop is None or loop.is_closed() or _local.inline_pid != os.getpid():
        loop = asyncio.new_event_loop()
        _local.inline_loop, _local.inline_pid = loop, os.getpid()
        weakref.finalize(threading.current_thread(), _close_loop, loop)

    async def main():
        AsyncToSync.executors.current = _INLINE  # this task's context only (asgiref's Local copies on write)
        return await func(*args)

    backend.inline = True
    try:
        return loop.run_until_complete(main())
    finally:
        backend.inline = False


def _serve_loop(loop: asyncio.AbstractEventLoop) -> None:
    asyncio.set_event_loop(loop)
    try:
        loop.run_forever()
    finally:
        loop.close()


def _stop_loop(loop: asyncio.AbstractEventLoop) -> None:
    if not loop.is_closed():
        try:
            loop.call_soon_threadsafe(loop.stop)
        except RuntimeError:  # closed meanwhile
            pass


def _run_async(func, *args):
    """``async_to_sync(func)(*args)`` on a long-lived event loop of this thread.

    ``async_to_sync`` called from a plain thread starts a new thread and a new
    event loop for every call; a worker runs one instance after the other, so
    each thread gets one loop (in a daemon thread, stopped when this thread is
    gone) and asgiref is pointed at it the way it is inside ``sync_to_async``.
    Everything else is asgiref's: this thread still runs every thread-sensitive
    call (the backend's, the async ORM's), so they share its connection and
    transaction.
    """
    loop = getattr(_local, "loop", None)
    if loop is None or loop.is_closed() or _local.loop_pid != os.getpid():
        loop = asyncio.new_event_loop()
        threading.Thread(target=_serve_loop, args=(loop,), name="durable-loop", daemon=True).start()
        _local.loop, _local.loop_pid = loop, os.getpid()
        weakref.finalize(threading.current_thread(), _stop_loop, loop)
    tl = SyncToAsync.threadlocal
    saved = getattr(tl, "main_event_loop", None), getattr(tl, "main_event_loop_pid", None)
    tl.main_event_loop, tl.main_event_loop_pid = loop, os.getpid()
    try:
        return async_to_sync(func)(*args)
    finally:
        tl.main_event_loop, tl.main_event_loop_pid = saved


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
        from django.db import connections

        while True:
            lease = float(durable_settings.LEASE_SECONDS)
            self.wakeup.wait(lease / 3)
            with self._lock:
                leases = list(self.leases)
            if not leases:
                continue
            try:
                clock.sync()
                for instance_id, worker_id in leases:
                    try:
                        now = clock.now()
                        if not DurableInstance.objects.filter(pk=instance_id, lease_owner=worker_id).update(
                                lease_expires_at=now + timedelta(seconds=lease)):
                            with self._lock:  # released, lost or finished
                                self.leases.pop((instance_id, worker_id), None)
                    except Exception:
                        log.warning("lease heartbeat of %s failed", instance_id, exc_info=True)
            finally:
                connections.close_all()  # this thread's connections only: none is held between beats


def _schedule_timer(instance_id: str, wake_at=None) -> None:
    """Send a delayed wake-up for a timer due soon; the sweep covers later ones and lost messages.

    ``wake_at``: the due time our own pause checkpoint just wrote (else it is read from the row).
    """
    if durable_settings.RUN_INLINE:
        return
    if wake_at is None:
        wake_at = DurableInstance.objects.filter(pk=instance_id, status=Status.PAUSED).values_list(
            "wake_at", flat=True).first()
    if wake_at is None:
        return
    if wake_at - clock.now() <= timedelta(seconds=durable_settings.ETA_MAX_SECONDS):
        from .api import send_task

        send_task(instance_id, eta=wake_at)  # database time: the receiving worker converts it (tasks.ClockRequest)


def due_instances(now=None, limit: int | None = None) -> list[str]:
    """Ids the sweep would wake: due timers, stuck or abandoned runs, pending events.

    Three queries, each served by an index (status+wake_at, status+lease,
    the partial index of unconsumed events), rather than one OR over the
    whole table.
    """
    if now is None:
        clock.sync()
        now = clock.now()
    limit = limit or durable_settings.SWEEP_BATCH
    free = Q(lease_expires_at__isnull=True) | Q(lease_expires_at__lt=now)
    rows = DurableInstance.objects
    ids: dict[str, None] = {}
    for qs in (
        rows.filter(status=Status.PAUSED, wake_at__lte=now).filter(free).order_by("wake_at"),
        rows.filter(status__in=(Status.PENDING, Status.RUNNING)).filter(free).order_by("lease_expires_at"),
    ):
        ids.update(dict.fromkeys(qs.values_list("pk", flat=True)[: limit - len(ids)]))
        if len(ids) >= limit:
            return list(ids)
    waiting = (DurableEvent.objects.filter(consumed_at__isnull=True, instance__status=Status.PAUSED,
                                           instance__wait_kind="event", instance__waiting_for=F("name"))
               .filter(Q(instance__lease_expires_at__isnull=True) | Q(instance__lease_expires_at__lt=now))
               .order_by("id").values_list("instance_id", flat=True))
    for iid in waiting[: limit * 2]:
        ids[iid] = None
        if len(ids) >= limit:
            break
    return list(ids)


def sweep(*, now=None, dry_run: bool = False, inline: bool = False, limit: int | None = None) -> list[str]:
    """Wake every instance that should run and does not (the guarantee behind ETAs and lost messages).

    With ``inline`` the instances are run here, one after the other, instead of
    being sent to Celery.
    """
    ids = due_instances(now, limit)
    if dry_run:
        return ids
    from .api import send_tasks

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


def pending_event_names(instance_id: str) -> list[str]:
    return list(DurableEvent.objects.filter(instance_id=instance_id, consumed_at__isnull=True)
                .values_list("name", flat=True))
