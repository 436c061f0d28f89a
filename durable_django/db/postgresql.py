"""PostgreSQL's fast paths: prepared statements, and writes that take one round trip instead of several.

* :meth:`~PostgreSQLOperations.cursor`: with psycopg 3, each cached statement
  is prepared once per connection and then only executed.
* :meth:`~PostgreSQLOperations.checkpoint`: the row, the events it consumed
  and its history entries in one statement (data-modifying CTEs), in
  autocommit when the step wrote nothing (:meth:`~PostgreSQLOperations.standalone`).
* :meth:`~PostgreSQLOperations.claim_batch`: one statement for any number of
  ids, which also reads the awaited event, and does not wait for its WAL flush.
* :meth:`~PostgreSQLOperations.publish`: the status check and both inserts as one statement.
* :meth:`~PostgreSQLOperations.distinct_programs`: a loose index scan.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Any

from django.db.backends.postgresql.psycopg_any import is_psycopg3
from django.utils import timezone

from ..conf import durable_settings
from ..models import FINISHED, RUNNABLE, DurableEvent, DurableHistory, DurableInstance, HistoryKind
from .features import Features
from .operations import CLAIM_COLUMNS, HISTORY_COLUMNS, Operations, _quoted, checkpoint_update, claim_set

_PUBLISHER = DurableEvent._meta.get_field("publisher")

if TYPE_CHECKING:  # the mixin is only ever combined with psycopg's cursor (see _prepared_cursor_class)
    from psycopg import Cursor as _CursorBase
else:
    _CursorBase = object


class _PreparedCursorMixin(_CursorBase):
    """psycopg 3 cursor (server-side binding) that sends each statement as a prepared statement.

    Django's connection binds parameters on the client (a 2 KB state blob is
    escaped into the SQL text, which the server parses again) and disables
    psycopg's prepared statements. The app's few hot statements (the
    checkpoint, the claim, the event lookup) are fixed strings, so they are
    prepared once per connection and then only executed: measured on the
    benchmark machine, ~0.1-0.3 ms less per checkpoint. The connection's
    ``prepare_threshold`` (None under Django) is lifted only for the duration
    of this cursor's call, so Django's own queries are unaffected.
    """

    def execute(self, query, params=None, **kwargs):
        conn = self._conn
        threshold = conn.prepare_threshold
        if threshold is None:
            conn.prepare_threshold = 1 << 30  # only prepare=True statements are prepared
        try:
            return super().execute(query, params, prepare=True)
        finally:
            if threshold is None:
                conn.prepare_threshold = None


_PreparedCursor: Any = None


def _prepared_cursor_class() -> Any:
    global _PreparedCursor
    if _PreparedCursor is None:
        import psycopg

        _PreparedCursor = type("_PreparedCursor", (_PreparedCursorMixin, psycopg.Cursor), {})
    return _PreparedCursor


class PostgreSQLFeatures(Features):
    #: with psycopg 3 (``psycopg2`` runs the generic two-statement path, as before)
    data_modifying_ctes = is_psycopg3


class PostgreSQLOperations(Operations):
    features_class = PostgreSQLFeatures
    share_lock = " FOR SHARE"
    clock_sql = "SELECT extract(epoch from clock_timestamp())"

    def cursor(self, conn: Any = None) -> Any:
        """Still a Django ``CursorWrapper`` (database errors become Django's, ``execute_wrapper`` hooks and query
        logging see the statement), over a psycopg 3 cursor that prepares its statements; the ordinary cursor
        with psycopg2 or ``DURABLE["PREPARED_STATEMENTS"]`` off."""
        conn = conn or self.connection
        if not is_psycopg3 or not durable_settings.PREPARED_STATEMENTS:
            return conn.cursor()
        conn.close_if_health_check_failed()
        conn.ensure_connection()
        with conn.wrap_database_errors:
            raw = _prepared_cursor_class()(conn.connection)
        conn.validate_thread_sharing()
        return conn.make_debug_cursor(raw) if conn.queries_logged else conn.make_cursor(raw)

    def json_placeholder(self) -> str:
        return "%s::jsonb"

    # -- claim -----------------------------------------------------------------------
    def claim_batch(self, instance_ids: list[str], worker_id: str, now: datetime, expires: datetime,
                    max_attempts: int) -> list[tuple]:
        """One statement for any number of ids (``= ANY(%s)``) that also reads the awaited event (the wake-up's
        first read, in the same round trip). Outside a transaction it does not wait for its WAL flush."""
        if not instance_ids:
            return []
        conn = self.connection
        detached = conn.get_autocommit() and not conn.in_atomic_block
        sql = self._statement(conn, "claim-batch", _claim_batch_sql, detached)
        adapt = conn.ops.adapt_datetimefield_value
        with self.cursor(conn) as cur:
            cur.execute(sql, [worker_id, adapt(expires), adapt(now), list(instance_ids), max_attempts])
            return cur.fetchall()

    # -- checkpoint ------------------------------------------------------------------
    @contextmanager
    def standalone(self) -> Iterator[bool]:
        """Autocommit for the one-statement checkpoint when no transaction is open on the connection (the step
        did no database work): one round trip in all, instead of BEGIN, the statement and COMMIT.

        A transaction that a failed statement aborted (a step's ORM call raised) holds only that step's
        writes, which the database has refused anyway: it is rolled back, so the checkpoint can be written."""
        conn = self.connection
        raw = conn.connection
        idle = False
        if raw is not None and not conn.in_atomic_block and is_psycopg3:
            from psycopg import pq

            status = raw.info.transaction_status
            if status == pq.TransactionStatus.INERROR and not conn.get_autocommit():
                conn.rollback()
                status = raw.info.transaction_status
            idle = status == pq.TransactionStatus.IDLE and not raw.closed
        if not idle:
            yield False
            return
        raw.autocommit = True
        try:
            yield True
        finally:
            raw.autocommit = False

    def checkpoint(self, instance_id: str, worker_id: str, columns: dict[str, Any], consumed: Sequence[int] = (),
                   kinds: Sequence[tuple] = (), now: datetime | None = None) -> int:
        """The row, and the consumed events' UPDATE and the history INSERT in data-modifying CTEs (written only
        if the row was ours to update)."""
        if not (consumed or kinds):
            return super().checkpoint(instance_id, worker_id, columns)
        conn = self.connection
        names = tuple(columns)
        sql = self._statement(conn, "checkpoint", _checkpoint_sql, names, len(consumed), len(kinds))
        params = [*self._column_params(conn, columns), instance_id, worker_id]
        at = conn.ops.adapt_datetimefield_value(now)
        if consumed:
            params += [at, *consumed]
        if kinds:
            params += [instance_id, (worker_id or "")[:255], at]
            for kind, st, detail in kinds:
                params += [str(kind), str(st), detail or ""]
        with self.cursor(conn) as cur:
            cur.execute(sql, params)
            return cur.fetchone()[0]

    # -- events ------------------------------------------------------------------------
    def publish(self, instance_id: str, name: str, payload: Any, text: str, publisher: Any,
                actor: str) -> tuple[str, str, DurableEvent | None] | None:
        """One ``WITH ... INSERT`` statement: the same rows as the generic transaction, written only if the
        instance exists and has not finished. Outside a transaction one round trip instead of five (BEGIN,
        SELECT, INSERT, INSERT, COMMIT), on the critical path from an event to the instance running again."""
        conn = self.connection
        sql = self._statement(conn, "publish", _publish_sql, _PUBLISHER.db_type(conn))
        now = timezone.now()
        at = conn.ops.adapt_datetimefield_value(now)
        with self.cursor(conn) as cur:
            cur.execute(sql, [instance_id, instance_id, name, text, at, _PUBLISHER.get_db_prep_save(publisher, conn),
                              instance_id, str(HistoryKind.EVENT_PUBLISHED), name, actor, at])
            row = cur.fetchone()
        if row is None:
            return None
        status, program, pk = row
        event = None if pk is None else self._event(pk, instance_id, name, payload, now, publisher)
        return status, program, event

    # -- admin, schema ---------------------------------------------------------------
    def distinct_programs(self, limit: int) -> list[str]:
        """A loose index scan (a recursive query that jumps from one program to the next in the index):
        ``SELECT DISTINCT`` reads every row here."""
        conn = self.connection
        sql = self._statement(conn, "distinct-programs", lambda qn: (
            f"WITH RECURSIVE p(program) AS ((SELECT {qn('program')} FROM {qn(DurableInstance._meta.db_table)} "
            f"ORDER BY {qn('program')} LIMIT 1) UNION ALL "
            f"SELECT (SELECT t.{qn('program')} FROM {qn(DurableInstance._meta.db_table)} t "
            f"WHERE t.{qn('program')} > p.program ORDER BY t.{qn('program')} LIMIT 1) "
            f"FROM p WHERE p.program IS NOT NULL) SELECT program FROM p WHERE program IS NOT NULL LIMIT %s"))
        with conn.cursor() as cur:
            cur.execute(sql, [limit])
            return [row[0] for row in cur.fetchall()]

    def set_instance_fillfactor(self, schema_editor: Any, percent: int | None) -> None:
        """A checkpoint rewrites the row but no indexed column: with room on the page it is a HOT update."""
        table = schema_editor.quote_name(DurableInstance._meta.db_table)
        if percent is None:
            schema_editor.execute(f"ALTER TABLE {table} RESET (fillfactor)")
        else:
            schema_editor.execute(f"ALTER TABLE {table} SET (fillfactor = {int(percent)})")


def _claim_batch_sql(qn, detached: bool) -> str:
    table = qn(DurableInstance._meta.db_table)
    returning = [f"{table}.{qn(c)}" for c in CLAIM_COLUMNS]
    event = (f"FROM {qn(DurableEvent._meta.db_table)} e WHERE e.{qn('instance_id')} = "
             f"{table}.{qn('instance_id')} AND e.{qn('name')} = {table}.{qn('waiting_for')} "
             f"AND e.{qn('consumed_at')} IS NULL ORDER BY e.{qn('id')} LIMIT 1")
    returning += [f"{table}.{qn('waiting_for')}", f"(SELECT e.{qn('id')} {event}) AS event_id",
                  f"(SELECT e.{qn('payload')} {event}) AS event_payload"]
    sql = (f"UPDATE {table} SET {claim_set(qn)} "
           f"WHERE {qn('instance_id')} = ANY(%s) AND {qn('lease_owner')} = '' "
           f"AND {qn('status')} IN ({_quoted(RUNNABLE)}) AND {qn('attempts')} < %s "
           f"RETURNING {', '.join(returning)}")
    if detached:
        # A transaction of its own that does not wait for its WAL flush: ``set_config(..., true)``
        # sets synchronous_commit for this statement's implicit transaction only. Safe because a
        # claim needs no durability: other sessions see it once it commits, and the run's first
        # checkpoint commits synchronously, which flushes the WAL up to and including the claim
        # (a database crash in between loses both, and the instance is simply claimed again).
        sql = (f"WITH nosync AS (SELECT set_config('synchronous_commit', 'off', true)), claimed AS ({sql}) "
               "SELECT claimed.* FROM claimed, nosync")
    return sql


def _checkpoint_sql(qn, names: tuple, consumed: int, kinds: int) -> str:
    parts = [f"u AS ({checkpoint_update(qn, names)} RETURNING 1)"]
    if consumed:
        parts.append(f"c AS (UPDATE {qn(DurableEvent._meta.db_table)} SET {qn('consumed_at')} = %s "
                     f"WHERE {qn('id')} IN ({', '.join(['%s'] * consumed)}) AND {qn('consumed_at')} IS NULL "
                     "AND EXISTS (SELECT 1 FROM u))")
    if kinds:
        rows = ", ".join(f"({i}, %s, %s, %s)" for i in range(kinds))
        parts.append(f"h AS (INSERT INTO {qn(DurableHistory._meta.db_table)} ({', '.join(map(qn, HISTORY_COLUMNS))}) "
                     f"SELECT x.i, v.kind, v.status, v.detail, x.actor, x.at "
                     f"FROM u, (SELECT %s AS i, %s AS actor, %s::timestamptz AS at) x, "
                     f"(VALUES {rows}) AS v(n, kind, status, detail) ORDER BY v.n)")
    return f"WITH {', '.join(parts)} SELECT count(*) FROM u"


def _publish_sql(qn, publisher_type: str) -> str:
    return (
        f"WITH i AS (SELECT {qn('status')}, {qn('program')} FROM {qn(DurableInstance._meta.db_table)} "
        f"WHERE {qn('instance_id')} = %s), "
        f"e AS (INSERT INTO {qn(DurableEvent._meta.db_table)} ({qn('instance_id')}, {qn('name')}, "
        f"{qn('payload')}, {qn('created_at')}, {qn('publisher_id')}) "
        f"SELECT %s, %s, %s::jsonb, %s::timestamptz, %s::{publisher_type} FROM i "
        f"WHERE i.{qn('status')} NOT IN ({_quoted(FINISHED)}) RETURNING {qn('id')}), "
        f"h AS (INSERT INTO {qn(DurableHistory._meta.db_table)} ({qn('instance_id')}, {qn('kind')}, "
        f"{qn('status')}, {qn('detail')}, {qn('actor')}, {qn('at')}) "
        f"SELECT %s, %s, i.{qn('status')}, %s, %s, %s::timestamptz FROM i, e) "
        f"SELECT i.{qn('status')}, i.{qn('program')}, e.{qn('id')} FROM i LEFT JOIN e ON TRUE")
