"""What durable code awaits to wait: events and timers.

These return request objects; the runtime recognises them at a step boundary
and turns them into a pause that is saved with the instance. Awaiting them
outside durable code is an error, not a silent no-op.
"""

from __future__ import annotations

import math
import time
from collections.abc import Generator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from .exceptions import PauseForEventException

#: The range of due times a wait may have (POSIX seconds): what a ``datetime`` (and a database
#: timestamp column) can hold, years 1 to 9999, with a day's margin for time zones.
MIN_DUE = datetime(1, 1, 2, tzinfo=UTC).timestamp()
MAX_DUE = datetime(9999, 12, 30, tzinfo=UTC).timestamp()


def _seconds(what: str, value: object) -> float:
    """``value`` as a finite, non-negative number of seconds that ends before :data:`MAX_DUE`.

    Refused where the program gives it (a ``ValueError`` or ``TypeError`` at its await, which it
    can catch), not later in the worker when the due time is stored.
    """
    if isinstance(value, timedelta):
        value = value.total_seconds()
    seconds = _number(what, value, "a number of seconds (or a timedelta)")
    if math.isnan(seconds) or math.isinf(seconds):
        raise ValueError(f"{what} must be a finite number of seconds, got {value!r}")
    if seconds < 0:
        raise ValueError(f"{what} must be >= 0 seconds, got {value!r}")
    if time.time() + seconds > MAX_DUE:
        raise ValueError(f"{what} of {value!r} seconds ends after the year 9999, beyond what a timestamp holds")
    return seconds


def _number(what: str, value: Any, expected: str) -> float:
    """``float(value)`` for a real number (not a bool or a string); a ``TypeError`` naming ``what`` otherwise."""
    try:
        if isinstance(value, bool | str | bytes):
            raise TypeError
        return float(value)
    except OverflowError:
        raise ValueError(f"{what}: {value!r} is too large") from None
    except (TypeError, ValueError):
        raise TypeError(f"{what} must be {expected}, got {type(value).__name__} {value!r}") from None


def valid_due(due: float) -> bool:
    """Is ``due`` (POSIX seconds) a due time that can be stored? (False for NaN and infinities.)"""
    return MIN_DUE <= due <= MAX_DUE


@dataclass(frozen=True)
class WaitRequest:
    """Wait until ``event`` is published (and return its payload).

    ``timeout`` (seconds) makes the wait end with :class:`EventTimeout`.
    """

    event: str
    timeout: float | None = None
    kind: str = "event"
    meta: dict[str, Any] | None = None

    def __await__(self) -> Generator[Any, None, Any]:
        """The runtime intercepts the await; the payload is whatever was published (``Any``)."""
        raise RuntimeError(
            f"wait_for_event({self.event!r}) must be awaited directly inside a durable function "
            "(one compiled by make_durable, or called from one)")
        yield  # pragma: no cover


@dataclass(frozen=True)
class TimerRequest:
    """Sleep until the POSIX time ``due`` (or for ``seconds`` from now)."""

    seconds: float | None = None
    due: float | None = None
    kind: str = "timer"

    def __await__(self) -> Generator[Any, None, None]:
        raise RuntimeError("durable.sleep() must be awaited directly inside a durable function")
        yield  # pragma: no cover


def wait_for_event(event: str, timeout: float | timedelta | None = None, **meta: Any) -> WaitRequest:
    """Pause until ``event`` is published for this instance; return its payload.

    With ``timeout`` (seconds), raise :class:`durable.EventTimeout` if it has
    not come by then. The deadline is fixed when the wait starts and survives
    restarts. Keyword arguments are metadata saved with the wait (in the
    state's ``wait["meta"]``) for the layers above: e.g. who may answer it and
    the form its payload must fit. Keep them JSON-compatible.
    """
    if not isinstance(event, str) or not event:
        raise ValueError(f"event name must be a non-empty string, got {event!r}")
    if timeout is not None:
        return WaitRequest(event, _seconds("wait_for_event() timeout", timeout), meta=meta or None)
    return WaitRequest(event, None, meta=meta or None)


def sleep(seconds: float | timedelta) -> TimerRequest:
    """A durable timer: pause the instance for ``seconds`` (a number or a ``timedelta``; finite, >= 0, ending
    before the year 9999)."""
    return TimerRequest(seconds=_seconds("sleep()", seconds))


def sleep_until(when: datetime | float) -> TimerRequest:
    """A durable timer until an aware datetime (naive means UTC) or POSIX time (finite, years 1-9999)."""
    if isinstance(when, datetime):
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        due = when.timestamp()
    else:
        due = _number("sleep_until()", when, "a datetime or a POSIX time")
    if not valid_due(due):
        raise ValueError(f"sleep_until({when!r}): not a time between the years 1 and 9999")
    return TimerRequest(due=due)


def pause_request(exc: PauseForEventException) -> WaitRequest:
    """``raise PauseForEventException(name)`` in durable code is this wait."""
    # A nameless ``raise PauseForEventException()`` waits for the event named None, as it always has.
    return WaitRequest(cast(str, exc.event), None, "raise")


def now() -> float:
    return time.time()
