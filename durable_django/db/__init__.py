"""The app's hand-written SQL, behind named operations: ``ops(using).checkpoint(...)``, ``.claim_batch(...)``...

Modelled on Django's ``db/backends/<vendor>/{features,operations}.py``: the
generic path (:mod:`.operations`, SQLite and any database Django supports),
PostgreSQL's fast paths (:mod:`.postgresql`), MySQL/MariaDB's differences
(:mod:`.mysql`), the vendor facts (:mod:`.features`), one statement cache
(:mod:`.statements`) and one router-aware way to a connection
(:mod:`.connections`). Nothing here knows about leases' rules, wake-ups or
programs: it reads and writes rows.
"""

from __future__ import annotations

from django.utils.module_loading import import_string

from .connections import alias, connection
from .operations import Operations, SQLiteOperations

__all__ = ["VENDORS", "Operations", "alias", "connection", "ops"]

#: vendor -> the Operations class for it (a dotted path: a vendor's driver is imported only when it is used).
#: Any other vendor gets the generic :class:`Operations`.
VENDORS: dict[str, str | type[Operations]] = {
    "postgresql": "durable_django.db.postgresql.PostgreSQLOperations",
    "mysql": "durable_django.db.mysql.MySQLOperations",
    "sqlite": SQLiteOperations,
}

#: alias -> its Operations (one per alias and process; it holds no connection, so threads share it).
_OPS: dict[str, Operations] = {}


def ops(using: str | None = None) -> Operations:
    """The operations of database ``using``; None: the one the routers pick for the app's rows."""
    name = alias(using)
    found = _OPS.get(name)
    if found is None:
        cls = VENDORS.get(connection(name).vendor, Operations)
        if isinstance(cls, str):
            cls = VENDORS[connection(name).vendor] = import_string(cls)
        found = _OPS[name] = cls(name)
    return found
