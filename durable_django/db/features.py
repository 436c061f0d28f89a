"""What a database can do, as the app's hand-written SQL needs to know it.

Read from Django's own ``connection.features`` where Django knows the fact
(e.g. ``can_return_columns_from_insert``: PostgreSQL, SQLite 3.35+, MariaDB
10.5+); a vendor's module overrides what Django does not say (MariaDB's
``UPDATE`` has no ``RETURNING``).
"""

from __future__ import annotations

from typing import Any


class Features:
    """The facts of one connection, read once per database alias."""

    #: data-modifying CTEs (``WITH u AS (UPDATE ... RETURNING) INSERT ...``): a checkpoint or a publish
    #: written as one statement.
    data_modifying_ctes = False

    def __init__(self, connection: Any) -> None:
        features = connection.features
        #: ``INSERT ... RETURNING``: an event's id without a second query.
        self.insert_returning: bool = bool(features.can_return_columns_from_insert)
        #: ``UPDATE ... RETURNING``: a batch claim in one statement. SQLite added it with INSERT's (3.35).
        self.update_returning: bool = self.insert_returning
        #: ``SELECT ... FOR UPDATE SKIP LOCKED`` (a claim that does not wait for another worker's).
        self.skip_locked: bool = bool(features.has_select_for_update_skip_locked)
