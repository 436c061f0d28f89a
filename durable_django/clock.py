"""The database's clock: what leases and timers are measured with, so a worker's own clock does not matter.

Why: a lease written by a worker whose clock runs 2 minutes ahead would look
alive 2 minutes too long to everyone else, a worker 2 minutes behind would
take over live leases, and timers would fire 2 minutes early or late. Every
time the app writes or compares (lease expiry, due times of timers and event
timeouts, the sweep's "now", Celery ETAs) comes from :func:`time` instead.

How, without a round trip per step: each process reads the database's time
once (``clock_timestamp()`` on PostgreSQL, ``julianday('now')`` on SQLite,
``NOW(6)`` on MySQL/MariaDB) and extrapolates with ``time.monotonic()``,
which no wall-clock skew or NTP step affects. It reads it again when the
sample is older than ``DURABLE['CLOCK_SYNC_SECONDS']`` (at a claim, a sweep,
a heartbeat: at most one extra SELECT per process per interval), so the
drift between the two clocks stays in milliseconds. :func:`time` itself
never queries: the core runtime calls it from its event loop.

On SQLite the "database" clock is the machine's C-library clock, read in the
worker's own process: there is one machine, so skew can only come from a
process whose Python clock is faked; the rule still holds (the sample is
taken with SQLite's own ``now``).
"""

from __future__ import annotations

import logging
import os
import threading
import time as _time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

from django.conf import settings

from .conf import durable_settings
from .db import connection, ops

log = logging.getLogger("durable_django")

_lock = threading.Lock()
#: (database POSIX seconds, time.monotonic() at that moment, pid) of the last reading.
_sample: tuple[float, float, int] | None = None
#: A test's clock (:func:`override`): when set, :func:`time` returns what it returns and nothing is read.
_override: Callable[[], float] | None = None


@contextmanager
def override(clock: Callable[[], float] | float | datetime) -> Iterator[None]:
    """Within the block, the app's time is ``clock``: a callable returning POSIX seconds, or a fixed time.

    For tests (:class:`durable_django.testing.DurableTestEnv` uses it): leases,
    due times of timers and event timeouts, the sweep's "now" and the
    instances' ``wake_at`` all follow it, so moving it makes timers due at
    once. The database's clock is not read meanwhile. Blocks nest; the
    previous clock comes back at the end. Process-wide, like the clock itself.
    """
    global _override
    if isinstance(clock, datetime):
        fixed = (clock if clock.tzinfo is not None else clock.replace(tzinfo=UTC)).timestamp()
        clock = lambda: fixed  # noqa: E731
    elif not callable(clock):
        fixed = float(clock)
        clock = lambda: fixed  # noqa: E731
    previous, _override = _override, clock
    try:
        yield
    finally:
        _override = previous


def _query(conn) -> float:
    """The database's current time in POSIX seconds (one SELECT; see ``Operations.database_time``)."""
    return ops(conn.alias).database_time()


def sync(conn=None, force: bool = False) -> None:
    """Read the database's time if the last reading is older than ``CLOCK_SYNC_SECONDS`` (or ``force``).

    Sync code only (it may run a query). A failed reading keeps the previous
    one (or the local clock) and is logged: callers are about to hit the
    database anyway and will report the real error.
    """
    global _sample
    interval = durable_settings.CLOCK_SYNC_SECONDS
    if not interval or _override is not None:
        return
    s = _sample
    pid = os.getpid()
    if not force and s is not None and s[2] == pid and _time.monotonic() - s[1] < interval:
        return
    if conn is None:
        conn = connection()
    t0 = _time.monotonic()
    try:
        db = _query(conn)
    except Exception:  # noqa: BLE001 - the caller's own query will raise the real error
        log.debug("could not read the database's clock", exc_info=True)
        return
    t1 = _time.monotonic()
    with _lock:
        _sample = (db, (t0 + t1) / 2, pid)


def time() -> float:
    """The database's time now (POSIX seconds), from the last reading; never queries.

    Before the first reading in this process, or with ``CLOCK_SYNC_SECONDS``
    set to 0, this is the local clock.
    """
    if _override is not None:
        return _override()
    s = _sample
    if s is None or s[2] != os.getpid() or not durable_settings.CLOCK_SYNC_SECONDS:
        return _time.time()
    return s[0] + (_time.monotonic() - s[1])


def now() -> datetime:
    """:func:`time` as ``django.utils.timezone.now()`` would return it (aware UTC, or naive local without USE_TZ)."""
    t = time()
    if settings.USE_TZ:
        return datetime.fromtimestamp(t, tz=UTC)
    return datetime.fromtimestamp(t)


def offset() -> float:
    """Database time minus this process's wall clock, in seconds (to turn database times into local ones)."""
    return time() - _time.time()
