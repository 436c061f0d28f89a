"""Which database the app's rows live in, and a connection and cursor for it.

One way in for every layer: :func:`alias` asks Django's database routers
(``router.db_for_write(DurableInstance)``) when the caller names no database,
so a project that routes the app's models elsewhere gets its hand-written SQL
there too, as it gets the ORM's queries.
"""

from __future__ import annotations

from typing import Any

from django.db import DEFAULT_DB_ALIAS, connections, router

from ..models import DurableInstance


def alias(using: str | None = None) -> str:
    """``using``, or the database the routers pick for writing the app's rows (``default`` without routers)."""
    if using:
        return using
    return router.db_for_write(DurableInstance) or DEFAULT_DB_ALIAS


def connection(using: str | None = None) -> Any:
    """The connection of ``using`` (see :func:`alias`) for this thread.

    The connection object itself, not ``django.db.connection``'s proxy: every
    attribute read through the proxy looks the connection up again in a
    context-local mapping (a few µs each, paid many times per checkpoint).
    """
    return connections[alias(using)]
