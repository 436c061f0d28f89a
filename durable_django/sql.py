"""The plumbing of the app's hand-written SQL, shared by every layer that writes rows on a hot path.

One way to get the connection (:func:`real_connection`), one cursor for the
cached statements (:func:`hot_cursor`: prepared statements on PostgreSQL with
psycopg 3), one statement cache (:func:`cached_sql`), the vendor fact the
claim and the publish path ask (:func:`_returning_supported`), and the
history insert that the public functions and the backend both write
(:func:`add_history`). Nothing here knows about leases, wake-ups or programs.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from django.db import connection
from django.utils import timezone

from .conf import durable_settings
from .models import DurableHistory

#: (vendor, *key) -> statement: the one cache of the app's hand-written SQL.
_SQL_CACHE: dict[tuple, str] = {}

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


def real_connection(conn: Any = None) -> Any:
    """The connection object itself, not ``django.db.connection``'s proxy.

    Every attribute read through the proxy looks the connection up again in a
    context-local mapping (asgiref's ``Local``): a few µs each, paid many
    times per checkpoint on the hot path.
    """
    from django.db import DEFAULT_DB_ALIAS, connections

    if conn is None:
        return connections[DEFAULT_DB_ALIAS]
    alias = conn.__dict__.get("_alias") if "_connections" in conn.__dict__ else None
    return connections[alias] if alias is not None else conn


def cached_sql(conn: Any, key: tuple, build: Any) -> str:
    """The app's hot-path SQL, built once per database vendor and ``key`` by ``build(quote_name)``."""
    full = (conn.vendor, *key)
    sql = _SQL_CACHE.get(full)
    if sql is None:
        sql = _SQL_CACHE[full] = build(conn.ops.quote_name)
    return sql


def hot_cursor(conn) -> Any:
    """A Django cursor for the app's cached hot-path SQL: prepared statements on PostgreSQL with psycopg 3.

    Still a Django ``CursorWrapper``: database errors become Django's, and
    ``connection.execute_wrapper`` hooks and query logging see the statement.
    Elsewhere (SQLite, psycopg2, ``PREPARED_STATEMENTS`` off) it is the
    connection's ordinary cursor.
    """
    conn = real_connection(conn)
    if conn.vendor != "postgresql" or not durable_settings.PREPARED_STATEMENTS:
        return conn.cursor()
    from django.db.backends.postgresql.psycopg_any import is_psycopg3

    if not is_psycopg3:
        return conn.cursor()
    conn.close_if_health_check_failed()
    conn.ensure_connection()
    with conn.wrap_database_errors:
        raw = _prepared_cursor_class()(conn.connection)
    conn.validate_thread_sharing()
    return conn.make_debug_cursor(raw) if conn.queries_logged else conn.make_cursor(raw)


def _returning_supported(connection=connection) -> bool:
    """``UPDATE ... RETURNING``: PostgreSQL, and SQLite from 3.35."""
    if connection.vendor == "postgresql":
        return True
    if connection.vendor == "sqlite":
        import sqlite3

        return sqlite3.sqlite_version_info >= (3, 35)
    return False


def add_history(instance_id: str, kind: str, status: str, detail: str = "", actor: str = "",
                now: datetime | None = None, using: str | None = None) -> None:
    """Insert a history row with one cached INSERT (what ``DurableHistory.objects.create`` does, minus the ORM)."""
    from django.db import connections

    conn = connections[using or "default"]
    key = (conn.vendor, "history")
    sql = _SQL_CACHE.get(key)
    if sql is None:
        qn = conn.ops.quote_name
        cols = ("instance_id", "kind", "status", "detail", "actor", "at")
        sql = _SQL_CACHE[key] = (f"INSERT INTO {qn(DurableHistory._meta.db_table)} ({', '.join(map(qn, cols))}) "
                                 f"VALUES ({', '.join(['%s'] * len(cols))})")
    at = conn.ops.adapt_datetimefield_value(now or timezone.now())
    with hot_cursor(conn) as cur:
        cur.execute(sql, [instance_id, str(kind), str(status), detail or "", (actor or "")[:255], at])
