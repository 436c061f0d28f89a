"""The app's database work as named operations: the generic path (SQLite, and any database Django supports).

Every statement the app writes by hand lives here or in a vendor's module
(:mod:`.postgresql`, :mod:`.mysql`) that overrides an operation with a faster
or a working form; the callers (leases, events, the backend, the worker, the
admin, the clock, a migration) only name the operation, through
``ops(using)``. Statements come from the one cache (:mod:`.statements`).
Plain ORM queries stay where they are written, except the few that belong to
an operation here (release, extend).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from django.db import connections, transaction
from django.db.models import Case, F, Value, When
from django.utils import timezone

from ..models import (
    FINISHED,
    RUNNABLE,
    DurableCheckpoint,
    DurableEvent,
    DurableHistory,
    DurableInstance,
    HistoryKind,
    Status,
)
from .features import Features
from .statements import statement

_PAYLOAD = DurableEvent._meta.get_field("payload")
_PUBLISHER = DurableEvent._meta.get_field("publisher")
#: The JSON columns a checkpoint may write (adapted by their field, not passed raw).
_JSON_COLUMNS: dict[str, Any] = {name: DurableInstance._meta.get_field(name)
                                 for name in ("result", "progress", "published")}

#: Statuses in which a checkpoint must not write (checked by every checkpoint's UPDATE).
CHECKPOINT_REFUSED = (Status.CANCELLED, Status.SUSPENDED, Status.COMPLETED, Status.FAILED)
#: The columns of an instance row a claim reads (see ``durable_django.leases._Claimed``).
CLAIM_COLUMNS = ("instance_id", "program", "program_version", "status", "version", "lease_owner",
                 "lease_expires_at", "attempts", "state", "arguments", "cancel_requested_at", "cancel_reason",
                 "deadline", "priority", "flow_key", "parent_id", "on_parent_close")
HISTORY_COLUMNS = ("instance_id", "kind", "status", "detail", "actor", "at")
CHECKPOINT_COLUMNS = ("instance_id", "step", "status", "position", "created_at", "state")
#: (name, unique, columns) of the full indexes that stand in for the event table's partial ones (see
#: ``Operations.replace_partial_indexes``)
_PARTIAL_SUBSTITUTES = (("durable_event_idem_full", True, ("instance_id", "idempotency_key")),
                        ("durable_event_inbox_full", False, ("instance_id", "name")))


def _in(n: int) -> str:
    return ", ".join(["%s"] * n)


def _quoted(values: Sequence[Any]) -> str:
    return ", ".join(f"'{v.value}'" for v in values)


def pending_to_running(qn) -> str:
    """The claim's SET clause that shows a pending instance as ``running`` while its first step runs (no extra
    statement). A paused one stays paused: if its wait is not over, the run only gives the lease back."""
    return (f"{qn('status')} = CASE WHEN {qn('status')} = '{Status.PENDING.value}' THEN '{Status.RUNNING.value}' "
            f"ELSE {qn('status')} END")


def claim_set(qn) -> str:
    """The SET clause of every claim: owner, expiry, attempt, version, time (and no longer waiting for a slot)."""
    return (f"{pending_to_running(qn)}, {qn('flow_waiting')} = '', "
            f"{qn('lease_owner')} = %s, {qn('lease_expires_at')} = %s, "
            f"{qn('attempts')} = {qn('attempts')} + 1, {qn('version')} = {qn('version')} + 1, {qn('updated_at')} = %s")


def checkpoint_update(qn, names: tuple) -> str:
    """The checkpoint's UPDATE of the row under the lease (``names``: the columns it writes)."""
    sets = ", ".join(f"{qn(c)} = %s" for c in names)
    return (f"UPDATE {qn(DurableInstance._meta.db_table)} SET {sets}, {qn('version')} = {qn('version')} + 1 "
            f"WHERE {qn('instance_id')} = %s AND {qn('lease_owner')} = %s "
            f"AND {qn('status')} NOT IN ({_quoted(CHECKPOINT_REFUSED)})")


class Operations:
    """The named operations of one database alias; a vendor's subclass overrides what it does better."""

    features_class: type[Features] = Features
    #: the database's clock as POSIX seconds (None: the local clock; see ``durable_django.clock``)
    clock_sql: str | None = None

    def __init__(self, alias: str) -> None:
        self.alias = alias
        self._features: Features | None = None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.alias!r}>"

    # -- plumbing --------------------------------------------------------------------
    @property
    def connection(self) -> Any:
        """This thread's connection of the alias (the object itself, not Django's proxy)."""
        return connections[self.alias]

    @property
    def features(self) -> Features:
        """The database's facts, read once (some need the server's version: a connection)."""
        if self._features is None:
            self._features = self.features_class(self.connection)
        return self._features

    def cursor(self, conn: Any = None) -> Any:
        """A Django cursor for the cached statements (a vendor may make it a faster one)."""
        return (conn or self.connection).cursor()

    def atomic(self) -> Any:
        return transaction.atomic(using=self.alias)

    def _statement(self, conn: Any, name: str, build: Any, *key: Any) -> str:
        return statement(conn, name, build, *key)

    # -- the clock -------------------------------------------------------------------
    def database_time(self) -> float:
        """The database's time now, in POSIX seconds (one SELECT)."""
        if self.clock_sql is None:
            return time.time()
        with self.connection.cursor() as cur:
            cur.execute(self.clock_sql)
            return float(cur.fetchone()[0])

    # -- claim, release, extend --------------------------------------------------------
    def claim_batch(self, instance_ids: list[str], worker_id: str, now: datetime, expires: datetime,
                    max_attempts: int) -> list[tuple]:
        """Take the lease of the free runnable instances among ``instance_ids`` with one
        ``UPDATE ... RETURNING``; their :data:`CLAIM_COLUMNS`. Free: nobody holds or held the lease.
        Without ``UPDATE ... RETURNING`` nothing is claimed here (each goes through :meth:`claim`)."""
        n = len(instance_ids)
        if not n or not self.features.update_returning:
            return []
        conn = self.connection

        def build(qn, n: int) -> str:
            table = qn(DurableInstance._meta.db_table)
            return (f"UPDATE {table} SET {claim_set(qn)} WHERE {qn('instance_id')} IN ({_in(n)}) "
                    f"AND {qn('lease_owner')} = '' AND {qn('status')} IN ({_quoted(RUNNABLE)}) "
                    f"AND {qn('attempts')} < %s RETURNING {', '.join(f'{table}.{qn(c)}' for c in CLAIM_COLUMNS)}")

        sql = self._statement(conn, "claim-batch", build, n)
        adapt = conn.ops.adapt_datetimefield_value
        with self.cursor(conn) as cur:
            cur.execute(sql, [worker_id, adapt(expires), adapt(now), *instance_ids, max_attempts])
            return cur.fetchall()

    def claim_read(self, instance_id: str) -> tuple | None:
        """The row's :data:`CLAIM_COLUMNS`, before a conditional :meth:`claim` (None: no such row)."""
        return self._read_row("claim-read", CLAIM_COLUMNS, instance_id)

    def claim(self, instance_id: str, worker_id: str, now: datetime, expires: datetime, version: int) -> bool:
        """Take the lease, conditional on the row's ``version`` read by :meth:`claim_read`."""
        conn = self.connection
        sql = self._statement(conn, "claim", lambda qn: (
            f"UPDATE {qn(DurableInstance._meta.db_table)} SET {claim_set(qn)} "
            f"WHERE {qn('instance_id')} = %s AND {qn('version')} = %s"))
        adapt = conn.ops.adapt_datetimefield_value
        with self.cursor(conn) as cur:
            cur.execute(sql, [worker_id, adapt(expires), adapt(now), instance_id, version])
            return cur.rowcount == 1

    def release(self, instance_id: str, worker_id: str, now: datetime, count_attempt: bool = False) -> int:
        """Give the lease back (``count_attempt``: the run ended before its next checkpoint)."""
        extra = {} if count_attempt else {"attempts": 0}
        return DurableInstance.objects.using(self.alias).filter(pk=instance_id, lease_owner=worker_id).update(
            lease_owner="", lease_expires_at=None, updated_at=now, **extra)

    def release_unstarted(self, instance_ids: list[str], worker_id: str, now: datetime) -> int:
        """Give back claimed instances that did not run: lease and attempt undone, pending again if they were."""
        never_ran = When(status=Status.RUNNING, state__isnull=True, then=Value(Status.PENDING.value))
        return DurableInstance.objects.using(self.alias).filter(pk__in=instance_ids, lease_owner=worker_id).update(
            lease_owner="", lease_expires_at=None, attempts=F("attempts") - 1, updated_at=now,
            status=Case(never_ran, default=F("status")))

    def extend(self, instance_id: str, worker_id: str, expires: datetime) -> bool:
        """Move the lease's expiry; False when ``worker_id`` no longer holds it."""
        return bool(DurableInstance.objects.using(self.alias).filter(pk=instance_id, lease_owner=worker_id)
                    .update(lease_expires_at=expires))

    # -- checkpoint ------------------------------------------------------------------
    @contextmanager
    def standalone(self) -> Iterator[bool]:
        """Around a one-statement :meth:`checkpoint`: True when it runs in autocommit, committed by itself
        (the step wrote nothing in the database), False when it joins the open transaction."""
        yield False

    def checkpoint(self, instance_id: str, worker_id: str, columns: dict[str, Any], consumed: Sequence[int] = (),
                   kinds: Sequence[tuple] = (), now: datetime | None = None) -> int:
        """The checkpoint's UPDATE of the row under ``worker_id``'s lease; how many rows it updated.

        ``consumed`` events and ``kinds`` of history (kind, status, detail) are written by the same statement
        only where :attr:`Features.data_modifying_ctes`; elsewhere the caller writes them
        (:meth:`consume_events`, :meth:`add_history`).
        """
        if consumed or kinds:
            raise NotImplementedError("a one-statement checkpoint needs data-modifying CTEs")
        conn = self.connection
        names = tuple(columns)
        sql = self._statement(conn, "checkpoint", checkpoint_update, names)
        with self.cursor(conn) as cur:
            cur.execute(sql, [*self._column_params(conn, columns), instance_id, worker_id])
            return cur.rowcount

    @staticmethod
    def _column_params(conn: Any, columns: dict[str, Any]) -> list:
        adapt = conn.ops.adapt_datetimefield_value
        params = [adapt(v) if isinstance(v, datetime) else (str(v) if isinstance(v, Status) else v)
                  for v in columns.values()]
        if "result" in columns or "progress" in columns or "published" in columns:  # rare: no loop otherwise
            for i, name in enumerate(columns):
                field = _JSON_COLUMNS.get(name)
                if field is not None:  # JSON column: the backend's JSON adapter
                    params[i] = field.get_db_prep_save(columns[name], conn)
        return params

    #: What makes :meth:`lease_fence`'s SELECT lock the instance row until the commit (a vendor's clause); none
    #: where the database serializes its writers (SQLite: the branch row written first holds the write lock).
    share_lock = ""

    def lease_fence(self, instance_id: str, worker_id: str, expires: datetime | None = None) -> bool:
        """Does ``worker_id`` still hold the instance's lease, and may the instance still checkpoint?

        The fence of a parallel branch's checkpoint, which writes the branch's row and not the instance's: in
        the checkpoint's transaction, after that write, the instance row is read with a share lock (a claim by
        another worker waits for the commit, or has committed and is seen), so a worker that lost the lease
        writes nothing. ``expires``: extend the lease to it instead (an UPDATE, which fences as well)."""
        conn = self.connection
        if expires is not None:
            sql = self._statement(conn, "fence-extend", lambda qn: (
                f"UPDATE {qn(DurableInstance._meta.db_table)} SET {qn('lease_expires_at')} = %s "
                f"WHERE {qn('instance_id')} = %s AND {qn('lease_owner')} = %s "
                f"AND {qn('status')} NOT IN ({_quoted(CHECKPOINT_REFUSED)})"))
            with self.cursor(conn) as cur:
                cur.execute(sql, [conn.ops.adapt_datetimefield_value(expires), instance_id, worker_id])
                return cur.rowcount == 1
        sql = self._statement(conn, "fence", lambda qn: (
            f"SELECT 1 FROM {qn(DurableInstance._meta.db_table)} WHERE {qn('instance_id')} = %s "
            f"AND {qn('lease_owner')} = %s AND {qn('status')} NOT IN ({_quoted(CHECKPOINT_REFUSED)})"
            f"{self.share_lock}"))
        with self.cursor(conn) as cur:
            cur.execute(sql, [instance_id, worker_id])
            return cur.fetchone() is not None

    def consume_events(self, event_ids: Sequence[int], now: datetime) -> None:
        """Mark the events a checkpoint consumed (usually one)."""
        conn = self.connection

        def build(qn, n: int) -> str:
            return (f"UPDATE {qn(DurableEvent._meta.db_table)} SET {qn('consumed_at')} = %s "
                    f"WHERE {qn('id')} IN ({_in(n)}) AND {qn('consumed_at')} IS NULL")

        sql = self._statement(conn, "consume", build, len(event_ids))
        with self.cursor(conn) as cur:
            cur.execute(sql, [conn.ops.adapt_datetimefield_value(now), *event_ids])

    def add_history(self, instance_id: str, kind: str, status: str, detail: str = "", actor: str = "",
                    now: datetime | None = None) -> None:
        """Insert a history row (what ``DurableHistory.objects.create`` does, minus the ORM)."""
        conn = self.connection
        sql = self._statement(conn, "history", lambda qn: (
            f"INSERT INTO {qn(DurableHistory._meta.db_table)} ({', '.join(map(qn, HISTORY_COLUMNS))}) "
            f"VALUES ({_in(len(HISTORY_COLUMNS))})"))
        at = conn.ops.adapt_datetimefield_value(now or timezone.now())
        with self.cursor(conn) as cur:
            cur.execute(sql, [instance_id, str(kind), str(status), detail or "", (actor or "")[:255], at])

    def keep_checkpoint(self, instance_id: str, step: int, keep: int, status: str, position: str, blob: bytes,
                        now: datetime) -> None:
        """Keep checkpoint ``step`` of an instance with history: drop the rows it replaces (a step number
        reused after a retry or a crash) and the one that falls out of the last ``keep`` (none when ``keep``
        is -1), then insert it. Two cached statements, in the caller's transaction."""
        conn = self.connection
        delete = self._statement(conn, "checkpoint-prune", lambda qn: (
            f"DELETE FROM {qn(DurableCheckpoint._meta.db_table)} WHERE {qn('instance_id')} = %s "
            f"AND ({qn('step')} >= %s OR {qn('step')} <= %s)"))
        insert = self._statement(conn, "checkpoint-keep", lambda qn: (
            f"INSERT INTO {qn(DurableCheckpoint._meta.db_table)} ({', '.join(map(qn, CHECKPOINT_COLUMNS))}) "
            f"VALUES ({_in(len(CHECKPOINT_COLUMNS))})"))
        with self.cursor(conn) as cur:
            cur.execute(delete, [instance_id, step, step - keep if keep > 0 else -1])
            cur.execute(insert, [instance_id, step, status, position[:500], conn.ops.adapt_datetimefield_value(now),
                                 DurableCheckpoint._meta.get_field("state").get_db_prep_value(blob, conn)])

    # -- events ------------------------------------------------------------------------
    def next_event(self, instance_id: str, name: str, skip: Sequence[int] = ()) -> tuple[int, Any] | None:
        """(id, payload) of the oldest unconsumed event ``name`` of the instance, other than ``skip``."""
        conn = self.connection

        def build(qn, n: int) -> str:
            others = f" AND {qn('id')} NOT IN ({_in(n)})" if n else ""
            return (f"SELECT {qn('id')}, {qn('payload')} FROM {qn(DurableEvent._meta.db_table)} "
                    f"WHERE {qn('instance_id')} = %s AND {qn('name')} = %s AND {qn('consumed_at')} IS NULL{others} "
                    f"ORDER BY {qn('id')} LIMIT 1")

        sql = self._statement(conn, "next-event", build, len(skip))
        with self.cursor(conn) as cur:
            cur.execute(sql, [instance_id, name, *skip])
            row = cur.fetchone()
        return None if row is None else (row[0], _PAYLOAD.from_db_value(row[1], None, conn))  # type: ignore[arg-type]

    def event_payload(self, value: Any) -> Any:
        """A payload read by a raw statement (e.g. the claim's), as the ORM would return it."""
        return _PAYLOAD.from_db_value(value, None, self.connection)  # type: ignore[arg-type]  # no expression

    def event_pending(self, instance_id: str, name: str | None) -> bool:
        """Is an unconsumed event ``name`` in the instance's inbox?"""
        conn = self.connection
        sql = self._statement(conn, "event-pending", lambda qn: (
            f"SELECT 1 FROM {qn(DurableEvent._meta.db_table)} WHERE {qn('instance_id')} = %s "
            f"AND {qn('name')} = %s AND {qn('consumed_at')} IS NULL LIMIT 1"))
        with self.cursor(conn) as cur:
            cur.execute(sql, [instance_id, name])
            return cur.fetchone() is not None

    def cancel_flag(self, instance_id: str) -> tuple[Any, str] | None:
        """(cancel_requested_at, cancel_reason) of an instance, or None: what a running worker reads at a
        checkpoint to learn of a cancel requested meanwhile (see ``durable_django.backend``)."""
        return self._read_row("cancel-flag", ("cancel_requested_at", "cancel_reason"), instance_id)

    def instance_status(self, instance_id: str) -> tuple[str, str] | None:
        """(status, program) of an instance, or None."""
        return self._read_row("status", ("status", "program"), instance_id)

    def _read_row(self, name: str, columns: Sequence[str], instance_id: str) -> Any:
        """One instance row's ``columns`` (a tuple), or None; the statement is cached under ``name``."""
        conn = self.connection
        sql = self._statement(conn, name, lambda qn: (
            f"SELECT {', '.join(qn(c) for c in columns)} FROM {qn(DurableInstance._meta.db_table)} "
            f"WHERE {qn('instance_id')} = %s"))
        with self.cursor(conn) as cur:
            cur.execute(sql, [instance_id])
            return cur.fetchone()

    def insert_event(self, instance_id: str, name: str, payload: Any, text: str, publisher: Any = None) -> DurableEvent:
        """An event without idempotency key; ``text`` is the payload's JSON, written as is."""
        conn = self.connection
        if not self.features.insert_returning:
            return DurableEvent.objects.using(self.alias).create(instance_id=instance_id, name=name, payload=payload,
                                                                 publisher_id=publisher)
        sql = self._statement(conn, "insert-event", lambda qn: (
            f"INSERT INTO {qn(DurableEvent._meta.db_table)} ({qn('instance_id')}, {qn('name')}, "
            f"{qn('payload')}, {qn('created_at')}, {qn('publisher_id')}) "
            f"VALUES (%s, %s, {self.json_placeholder()}, %s, %s) RETURNING {qn('id')}"))
        now = timezone.now()
        with self.cursor(conn) as cur:
            cur.execute(sql, [instance_id, name, text, conn.ops.adapt_datetimefield_value(now),
                              _PUBLISHER.get_db_prep_save(publisher, conn)])
            pk = cur.fetchone()[0]
        return self._event(pk, instance_id, name, payload, now, publisher)

    def json_placeholder(self) -> str:
        """The placeholder of a JSON text parameter (a vendor may cast it)."""
        return "%s"

    def _event(self, pk: int, instance_id: str, name: str, payload: Any, now: datetime, publisher: Any) -> DurableEvent:
        event = DurableEvent(id=pk, instance_id=instance_id, name=name, payload=payload, created_at=now,
                             publisher_id=publisher)
        event._state.adding, event._state.db = False, self.alias
        return event

    def publish(self, instance_id: str, name: str, payload: Any, text: str, publisher: Any,
                actor: str) -> tuple[str, str, DurableEvent | None] | None:
        """An event without idempotency key and its history entry, if the instance exists and has not finished.

        Returns None for an unknown instance, else (status, program, event), the event None (nothing written)
        when the instance has finished.
        """
        with self.atomic():
            row = self.instance_status(instance_id)
            if row is None:
                return None
            status, program = row
            if status in FINISHED:
                return status, program, None
            event = self.insert_event(instance_id, name, payload, text, publisher)
            self.add_history(instance_id, HistoryKind.EVENT_PUBLISHED, status, name, actor)
        return status, program, event

    # -- admin, schema ---------------------------------------------------------------
    def distinct_programs(self, limit: int) -> list[str]:
        """The distinct program paths, in order."""
        rows = DurableInstance.objects.using(self.alias).order_by("program")
        return list(rows.values_list("program", flat=True).distinct()[:limit])

    def replace_partial_indexes(self, schema_editor: Any, add: bool) -> None:
        """Where the database has no partial indexes, full ones in place of the event table's two (``add``), or
        drop them again: the idempotency key's unique index (NULL keys allowed, as in the partial one) and the
        index of the inbox."""
        if schema_editor.connection.features.supports_partial_indexes:
            return
        qn = schema_editor.quote_name
        table = DurableEvent._meta.db_table
        for name, unique, columns in _PARTIAL_SUBSTITUTES:
            if add:
                schema_editor.execute(f"CREATE {'UNIQUE ' if unique else ''}INDEX {qn(name)} ON {qn(table)} "
                                      f"({', '.join(map(qn, columns))})")
            else:
                schema_editor.execute(schema_editor.sql_delete_index % {"name": qn(name), "table": qn(table)})

    def set_instance_fillfactor(self, schema_editor: Any, percent: int | None) -> None:
        """Leave room on the instance table's pages for in-place updates (None: the default). Only where it
        exists."""


class SQLiteOperations(Operations):
    """SQLite: the generic path; its clock is SQLite's own ``now``."""

    clock_sql = "SELECT (julianday('now') - 2440587.5) * 86400.0"
