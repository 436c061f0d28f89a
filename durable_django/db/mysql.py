"""MySQL and MariaDB: the generic path, with what differs there.

``UPDATE`` has no ``RETURNING`` on either (MariaDB has it on ``INSERT`` from
10.5, which :class:`~.features.Features` reads from Django), so a batch claim
is a locking read of the free rows and one ``UPDATE`` of those, in one
transaction (:meth:`MySQLOperations.claim_batch`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from ..models import RUNNABLE, DurableInstance, Status
from .features import Features
from .operations import CLAIM_COLUMNS, Operations, _in, _quoted, claim_set

_STATUS, _VERSION, _OWNER, _ATTEMPTS = (CLAIM_COLUMNS.index(c) for c in ("status", "version", "lease_owner",
                                                                        "attempts"))


class MySQLFeatures(Features):
    def __init__(self, connection: Any) -> None:
        super().__init__(connection)
        self.update_returning = False


class MySQLOperations(Operations):
    features_class = MySQLFeatures
    share_lock = " LOCK IN SHARE MODE"  # MariaDB and MySQL 8 both read it
    clock_sql = "SELECT UNIX_TIMESTAMP(NOW(6))"

    def claim_batch(self, instance_ids: list[str], worker_id: str, now: datetime, expires: datetime,
                    max_attempts: int) -> list[tuple]:
        """``SELECT ... FOR UPDATE`` of the free runnable rows (``SKIP LOCKED`` where the server has it: MariaDB
        10.6+, MySQL 8), then one ``UPDATE`` of exactly those, in one transaction: the rows as ``RETURNING``
        would give them. A second worker claiming the same ids skips (or waits for, then no longer sees as
        free) the rows the first one locked."""
        n = len(instance_ids)
        if not n:
            return []
        conn = self.connection
        skip_locked = self.features.skip_locked

        def build_select(qn, n: int, skip_locked: bool) -> str:
            return (f"SELECT {', '.join(qn(c) for c in CLAIM_COLUMNS)} FROM {qn(DurableInstance._meta.db_table)} "
                    f"WHERE {qn('instance_id')} IN ({_in(n)}) AND {qn('lease_owner')} = '' "
                    f"AND {qn('status')} IN ({_quoted(RUNNABLE)}) AND {qn('attempts')} < %s "
                    f"ORDER BY {qn('instance_id')} FOR UPDATE{' SKIP LOCKED' if skip_locked else ''}")

        def build_update(qn, n: int) -> str:
            return (f"UPDATE {qn(DurableInstance._meta.db_table)} SET {claim_set(qn)} "
                    f"WHERE {qn('instance_id')} IN ({_in(n)}) AND {qn('lease_owner')} = ''")

        select = self._statement(conn, "claim-batch-select", build_select, n, skip_locked)
        adapt = conn.ops.adapt_datetimefield_value
        with self.atomic(), self.cursor(conn) as cur:
            cur.execute(select, [*instance_ids, max_attempts])
            rows = cur.fetchall()
            if not rows:
                return []
            update = self._statement(conn, "claim-batch", build_update, len(rows))
            cur.execute(update, [worker_id, adapt(expires), adapt(now), *(r[0] for r in rows)])
        return [_claimed(row, worker_id, expires) for row in rows]


def _claimed(row: tuple, worker_id: str, expires: datetime) -> tuple:
    """A row read before the claim's UPDATE, as the UPDATE left it."""
    out = list(row)
    if out[_STATUS] == Status.PENDING:
        out[_STATUS] = Status.RUNNING.value
    out[_VERSION] += 1
    out[_ATTEMPTS] += 1
    out[_OWNER] = worker_id
    out[CLAIM_COLUMNS.index("lease_expires_at")] = expires
    return tuple(out)
