"""Fakes a skewed wall clock in a worker subprocess (tests/django/test_clock_skew.py).

On ``PYTHONPATH`` with ``DURABLE_TEST_CLOCK_SKEW=<seconds>``, this process's
``time.time``/``time.time_ns``, ``datetime.now``/``utcnow``/``today`` (hence
``django.utils.timezone.now``, Celery's and kombu's clocks and log
timestamps) run that many seconds ahead (negative: behind), as on a machine
whose clock is off. ``time.monotonic`` is left alone, as real skew leaves it.
"""

import copyreg
import datetime as _dt
import os
import time as _time

_skew = float(os.environ.get("DURABLE_TEST_CLOCK_SKEW") or 0)

if _skew:
    _real_time, _real_time_ns, _Real = _time.time, _time.time_ns, _dt.datetime

    def _fake_time() -> float:
        return _real_time() + _skew

    def _fake_time_ns() -> int:
        return _real_time_ns() + int(_skew * 1e9)

    class _Meta(type):
        # Real datetimes (from C code, database drivers, pickles) still pass isinstance(x, datetime.datetime).
        def __instancecheck__(cls, obj):
            return isinstance(obj, _Real)

        def __subclasscheck__(cls, sub):
            return issubclass(sub, _Real)

    class datetime(_Real, metaclass=_Meta):  # noqa: N801 - stands in for datetime.datetime
        __slots__ = ()  # same instance size: C extensions that check it at import stay quiet

        @classmethod
        def now(cls, tz=None):
            return _Real.fromtimestamp(_fake_time(), tz)

        @classmethod
        def utcnow(cls):
            return _Real.fromtimestamp(_fake_time(), _dt.UTC).replace(tzinfo=None)

        @classmethod
        def today(cls):
            return _Real.fromtimestamp(_fake_time())

    datetime.__module__ = "datetime"
    # Pickles name the class "datetime.datetime", which is now this one: real instances pickle through it too.
    copyreg.pickle(_Real, lambda d: (datetime, d.__reduce__()[1]))
    _time.time, _time.time_ns, _dt.datetime = _fake_time, _fake_time_ns, datetime
