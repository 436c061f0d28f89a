"""Interruptions: a cancellation or a deadline, raised inside the program at its next ``await``."""

from __future__ import annotations

from datetime import UTC, datetime

from .checkpoints import Checkpoints
from .exceptions import DeadlineExceeded, InstanceCancelled
from .primitives import valid_due
from .tracebacks import runtime_file

runtime_file(__file__)  # frames of this module are the runtime's own (see durable.tracebacks)


class Interrupts(Checkpoints):
    """What the runtime raises at an await besides a step's own error (a mixin of :class:`~durable.DurableRuntime`).

    Each is raised once; while none is pending the step loop tests one flag.
    """

    def request_cancel(self, reason: str = "") -> None:
        """Raise :class:`~durable.InstanceCancelled` in the program at its next await (safe from any thread)."""
        self._cancel = reason or f"instance {self.instance_id!r} was cancelled"
        self._watch = True

    def _arm(self) -> None:
        """Watch for what is raised at an await: a cancellation, a deadline not raised yet."""
        state = self._live()
        deadline = state.get("deadline")
        self._deadline = deadline if deadline is not None and not state.get("deadline_hit") else None
        self._watch = self._cancel is not None or self._deadline is not None

    def _interruption(self) -> BaseException | None:
        """The cancellation or deadline to raise at this await, if any (each is raised once)."""
        state = self._live()
        if self._cancel is not None:
            reason, self._cancel = self._cancel, None
            self._watch = self._deadline is not None
            state["cancel"] = reason
            return InstanceCancelled(reason)
        if self._deadline is not None and self.clock() >= self._deadline:
            due, self._deadline = self._deadline, None
            self._watch = False
            state["deadline_hit"] = True
            return DeadlineExceeded(f"the deadline of instance {self.instance_id!r} "
                                    f"({datetime.fromtimestamp(due, tz=UTC).isoformat()}) passed")
        return None


def as_posix(when: datetime | float | None) -> float | None:
    """A deadline as POSIX seconds (an aware datetime, naive meaning UTC, or a number)."""
    if when is None:
        return None
    if isinstance(when, datetime):
        return (when if when.tzinfo is not None else when.replace(tzinfo=UTC)).timestamp()
    if isinstance(when, bool) or not isinstance(when, int | float) or not valid_due(float(when)):
        raise ValueError(f"deadline must be an aware datetime or a POSIX time, got {when!r}")
    return float(when)
