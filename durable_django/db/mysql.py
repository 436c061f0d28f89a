"""MySQL and MariaDB: the generic path, with what differs there.

``UPDATE`` has no ``RETURNING`` on either (MariaDB has it on ``INSERT`` from
10.5, which :class:`~.features.Features` reads from Django).
"""

from __future__ import annotations

from .features import Features
from .operations import Operations


class MySQLFeatures(Features):
    def __init__(self, connection) -> None:
        super().__init__(connection)
        self.update_returning = False


class MySQLOperations(Operations):
    features_class = MySQLFeatures
    clock_sql = "SELECT UNIX_TIMESTAMP(NOW(6))"
