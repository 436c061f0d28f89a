"""Waiting: events and timers, checked when an instance resumes and begun at an ``await``."""

from __future__ import annotations

from typing import Any

from .checkpoints import Checkpoints
from .exceptions import DurableError, EventTimeout, PauseForEventException, TimerPause
from .primitives import TimerRequest, WaitRequest, valid_due
from .state import PAUSED, WaitInfo
from .tracebacks import runtime_file

runtime_file(__file__)  # frames of this module are the runtime's own (see durable.tracebacks)


class Waits(Checkpoints):
    """The runtime's waits (a mixin of :class:`~durable.DurableRuntime`)."""

    async def _check_wait(self, wait: WaitInfo) -> tuple[Any, BaseException | None]:
        """Return (value, exception-to-throw) if the wait is over; else raise the pause again."""
        due = wait.get("due")
        if wait["kind"] in ("child", "children"):
            return await self._check_children(wait)
        if wait["kind"] == "timer":
            if due is None:
                raise DurableError(f"instance {self.instance_id!r}: a timer wait without a due time")
            if self.clock() >= due:  # a timer cut at the instance's deadline ends with it
                return None, self._interruption() if wait.get("deadline") else None
            raise TimerPause(None, due=due, instance_id=self.instance_id)
        event = wait.get("event", "")  # every event wait names its event
        try:
            meta = wait.get("meta")
            if meta:  # a backend that enforces the wait's metadata (who may answer, payload form) sees it
                answer = getattr(self._io, "wait_for_answer", None)
                if answer is not None:
                    return await answer(self.instance_id, event, meta), None
            return await self._io.wait_for_event(self.instance_id, event), None
        except PauseForEventException:
            if due is not None and self.clock() >= due:
                if wait.get("deadline"):  # the wait was cut at the instance's deadline, which is raised instead
                    return None, self._interruption()
                return None, EventTimeout(f"event {event!r} did not arrive in time")
            raise PauseForEventException(event, due=due, instance_id=self.instance_id) from None

    async def _check_children(self, wait: WaitInfo) -> tuple[Any, BaseException | None]:
        """A child wait's outcome, or the pause again (see :class:`durable.children.Children`)."""
        raise NotImplementedError

    async def _begin_wait(self, req: WaitRequest | TimerRequest) -> tuple[bool, Any, BaseException | None]:
        """Try to satisfy a new wait now; otherwise record it and pause."""
        now = self.clock()
        wait: WaitInfo
        due: float | None
        if isinstance(req, TimerRequest):
            due = req.due if req.due is not None else now + (req.seconds or 0.0)
            wait = {"kind": "timer", "due": due}
        else:
            due = None if req.timeout is None else now + req.timeout
            wait = {"kind": "event", "event": req.event, "due": due}
            if req.meta:
                wait["meta"] = req.meta
        if due is not None and not valid_due(due):  # a request built by hand, or a clock gone wrong
            return False, None, ValueError(f"{req!r}: its due time {due!r} is not a time between the years 1 and 9999")
        try:
            value, throw = await self._check_wait(wait)
            return True, value, throw
        except PauseForEventException as pause:
            await self._pause(wait, pause)
            raise  # pragma: no cover - _pause raises

    async def _pause(self, wait: WaitInfo, pause: PauseForEventException) -> None:
        """Save the instance paused on ``wait`` and raise ``pause``; a wait ends at the deadline at the latest."""
        state = self._live()
        if self._deadline is not None and (wait["due"] is None or self._deadline < wait["due"]):
            wait["due"] = self._deadline
            wait["deadline"] = True
            pause.due = self._deadline
        state["wait"] = wait
        state["status"] = PAUSED
        await self._checkpoint()
        raise pause
