"""The one cache of the app's hand-written SQL: each statement is built once, then only looked up.

The key is the database vendor, the operation's name, the app's table names
(a project may rename them with ``db_table``), and whatever else shapes the
text (a number of placeholders, the columns a checkpoint writes).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

from ..models import DurableEvent, DurableHistory, DurableInstance

#: (vendor, name, tables, *key) -> statement
_CACHE: dict[tuple, str] = {}


def tables() -> tuple[str, str, str]:
    """The instance, event and history tables' names."""
    return (DurableInstance._meta.db_table, DurableEvent._meta.db_table, DurableHistory._meta.db_table)


def statement(conn: Any, name: str, build: Callable[..., str], *key: Hashable) -> str:
    """The statement ``name`` for ``conn``'s vendor (and ``key``), built by ``build(quote_name, *key)`` once."""
    full = (conn.vendor, name, _TABLES, *key)
    sql = _CACHE.get(full)
    if sql is None:
        sql = _CACHE[full] = build(conn.ops.quote_name, *key)
    return sql


def cached() -> dict[tuple, str]:
    """A copy of the cache (for tests and the curious)."""
    return dict(_CACHE)


def clear() -> None:
    """Forget every statement (a test that renames a table)."""
    global _TABLES
    _CACHE.clear()
    _TABLES = tables()


_TABLES = tables()
