"""Exceptions raised by the durable core.

Every pause surfaces to the caller as :class:`PauseForEventException` (or its
timer subclass), so a caller handles one exception type.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any


class DurableError(Exception):
    """Base class for errors of the durable machinery itself (not user code)."""


class PauseForEventException(Exception):
    """Pause the running instance until ``event`` is published.

    Raised by user code (``raise PauseForEventException("name")``) to pause, and
    raised to the caller of a program while the instance waits. ``due`` is the
    POSIX time at which the wait ends by itself (a timer, or a wait with a
    timeout), or ``None``.
    """

    def __init__(self, event: str | None = None, *, due: float | None = None, instance_id: str | None = None):
        super().__init__(event)
        self.event = event
        self.due = due
        self.instance_id = instance_id

    @property
    def due_at(self) -> datetime | None:
        """``due`` as an aware UTC datetime."""
        return None if self.due is None else datetime.fromtimestamp(self.due, tz=UTC)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_pause, (type(self), self.event, self.due, self.instance_id))

    def __str__(self) -> str:
        due_at = self.due_at
        if due_at is not None and self.event is None:
            return f"sleeping until {due_at.isoformat()}"
        if due_at is not None:
            return f"waiting for event {self.event!r} until {due_at.isoformat()}"
        return f"waiting for event {self.event!r}"


def _rebuild_pause(cls: type[PauseForEventException], event: str | None, due: float | None,
                   instance_id: str | None) -> PauseForEventException:
    return cls(event, due=due, instance_id=instance_id)


class TimerPause(PauseForEventException):
    """The instance sleeps on a durable timer until ``due``."""


class EventTimeout(TimeoutError):
    """``wait_for_event(..., timeout=...)`` ran out of time before the event came."""


class CheckpointException(DurableError):
    """A checkpoint could not be written; the previous checkpoint is kept."""


class CompileError(DurableError, SyntaxError):
    """A function uses a construct the durable compiler cannot checkpoint."""

    def __init__(self, message: str, filename: str | None = None, lineno: int | None = None):
        where = f"{filename}:{lineno}: " if filename else ""
        SyntaxError.__init__(self, where + message)
        self.msg = where + message
        self.filename = filename
        self.lineno = lineno


class StateTamperedError(DurableError):
    """A saved state blob failed its signature check; it was not unpickled."""


class CodeChangedError(DurableError):
    """A paused frame's function changed its step layout since the checkpoint."""


class InstanceCancelled(DurableError):
    """The instance was cancelled.

    Raised to the caller of a cancelled instance, and inside the program at
    its current ``await`` when a cancellation is requested, so that its
    ``except`` and ``finally`` blocks run (re-raise it after cleaning up: an
    instance whose program swallows it goes on running).
    """


class DeadlineExceeded(DurableError, TimeoutError):
    """The instance's deadline passed: raised once inside the program, at its current ``await``."""


class StepTimeout(DurableError, TimeoutError):
    """An attempt of a step ran longer than its ``timeout`` (retried like any other error)."""


class UnsignedStateWarning(UserWarning):
    """An unsigned :class:`~durable.DurableBackend` read state from a persistent store.

    Without a ``signing_key`` the core unpickles whatever the store holds, and
    unpickling runs code: whoever can write to the store (its folder, its
    database) can run code in the process that loads the state. Pass
    ``signing_key=...`` to check every blob before it is unpickled.
    """
