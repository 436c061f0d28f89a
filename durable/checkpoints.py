"""Saving checkpoints: the base every part of the runtime builds on.

:class:`Checkpoints` holds what the parts of :class:`~durable.DurableRuntime`
share (the backend, the instance, the clock, the state being run) and writes a
checkpoint. The parts are mixins, each a concept: waits (:mod:`durable.waits`),
step attempts (:mod:`durable.attempts`), cancellation and deadlines
(:mod:`durable.interrupts`), and how an instance ends (:mod:`durable.endings`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import cloudpickle

from .backend import OrchestrationBackend
from .exceptions import CheckpointException, DurableError
from .retries import RetryPolicy
from .stack import FunctionCall
from .state import FAILED, SavedState
from .tracebacks import runtime_file

runtime_file(__file__)  # frames of this module are the runtime's own (see durable.tracebacks)


class Checkpoints:
    """The runtime's shared attributes (set by ``DurableRuntime.__init__``) and the checkpoint write."""

    backend: OrchestrationBackend
    _io: OrchestrationBackend
    instance_id: str
    clock: Callable[[], float]
    on_checkpoint: Callable[[str, int], None] | None
    state: SavedState | None
    retry: RetryPolicy | None
    deadline: float | None
    _deferred: tuple[FunctionCall, int, dict[str, Any]] | None
    _start: tuple[Any, tuple[Any, ...], dict[str, Any]] | None
    _cancel: str | None
    _deadline: float | None
    _watch: bool
    _raised_at: tuple[FunctionCall, int] | None
    branch: str | None
    _dropped: list[str] | None
    _ended: bool
    _holding: bool

    def _release(self) -> None:
        """Let the next exclusive step of another branch run (see :class:`durable.branches.Branches`)."""
        raise NotImplementedError

    async def _save_branch(self, state: SavedState) -> None:
        """Save a branch's checkpoint (see :class:`durable.branches.Branches`)."""
        raise NotImplementedError

    async def _drop_branches(self) -> None:
        """Delete the states of the branches of a group that ended (see :class:`durable.branches.Branches`)."""
        raise NotImplementedError

    async def _load_own(self) -> SavedState | None:
        """This runtime's last checkpoint: the instance's, or its branch's."""
        raise NotImplementedError

    def _interruption(self) -> BaseException | None:
        """The cancellation or deadline to raise at this await (see :class:`durable.interrupts.Interrupts`)."""
        raise NotImplementedError

    def _live(self) -> SavedState:
        """The state of the instance being run (set by :meth:`run` before any step)."""
        state = self.state
        if state is None:  # pragma: no cover - only a call out of order gets here
            raise DurableError("the runtime has no state: call run() first")
        return state

    async def _checkpoint(self) -> None:
        state = self._live()
        state["steps"] += 1
        try:
            if self.branch is None:
                await self._io.save_state(self.instance_id, state)
            else:
                await self._save_branch(state)
        except CheckpointException as exc:
            raise _diagnose(state, exc) from exc
        if self._holding:
            self._release()
        if self._dropped is not None and state["status"] != FAILED:
            await self._drop_branches()
        if self.on_checkpoint is not None:
            self.on_checkpoint(self.instance_id, state["steps"])


def _diagnose(state: SavedState, exc: CheckpointException) -> CheckpointException:
    """Name the local that cannot be pickled (only on the failure path)."""
    for frame in reversed(state["stack"].frames):
        for name, value in frame.locals.items():
            if frame.compiled is not None and name in frame.compiled.freevars:
                continue
            try:
                cloudpickle.dumps(value)
            except Exception as err:
                shown = name if not name.startswith("_dur__") else "a temporary value (e.g. a for-loop iterator)"
                return CheckpointException(
                    f"cannot checkpoint {frame.position()}: local variable {shown!r} of type "
                    f"{type(value).__module__}.{type(value).__qualname__} cannot be pickled ({err}); "
                    "the previous checkpoint is kept. Delete or convert it before the next await.")
    return exc
