"""What durable code awaits to wait: events and timers.

These return request objects; the runtime recognises them at a step boundary
and turns them into a pause that is saved with the instance. Awaiting them
outside durable code is an error, not a silent no-op.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime


@dataclass(frozen=True)
class WaitRequest:
    """Wait until ``event`` is published (and return its payload).

    ``timeout`` (seconds) makes the wait end with :class:`EventTimeout`.
    """

    event: str
    timeout: float | None = None
    kind: str = "event"
    meta: dict | None = None

    def __await__(self):
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

    def __await__(self):
        raise RuntimeError("durable.sleep() must be awaited directly inside a durable function")
        yield  # pragma: no cover


def wait_for_event(event: str, timeout: float | None = None, **meta) -> WaitRequest:
    """Pause until ``event`` is published for this instance; return its payload.

    With ``timeout`` (seconds), raise :class:`durable.EventTimeout` if it has
    not come by then. The deadline is fixed when the wait starts and survives
    restarts. Keyword arguments are metadata saved with the wait (in the
    state's ``wait["meta"]``) for the layers above: e.g. who may answer it and
    the form its payload must fit. Keep them JSON-compatible.
    """
    if not isinstance(event, str) or not event:
        raise ValueError(f"event name must be a non-empty string, got {event!r}")
    if timeout is not None and timeout < 0:
        raise ValueError("timeout must be >= 0")
    return WaitRequest(event, timeout, meta=meta or None)


def sleep(seconds: float) -> TimerRequest:
    """A durable timer: pause the instance for ``seconds``."""
    if seconds < 0:
        raise ValueError("sleep() needs seconds >= 0")
    return TimerRequest(seconds=float(seconds))


def sleep_until(when: datetime | float) -> TimerRequest:
    """A durable timer until an aware datetime (naive means UTC) or POSIX time."""
    if isinstance(when, datetime):
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        return TimerRequest(due=when.timestamp())
    return TimerRequest(due=float(when))


def pause_request(exc) -> WaitRequest:
    """``raise PauseForEventException(name)`` in durable code is this wait."""
    return WaitRequest(exc.event, None, "raise")


def now() -> float:
    return time.time()
