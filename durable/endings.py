"""How an instance ends: completed, failed (keeping its last checkpoint to retry from), or cancelled."""

from __future__ import annotations

import logging
import pickle
from typing import Any

from .children import Children
from .exceptions import CheckpointException, DurableError, InstanceCancelled
from .serialization import pickled
from .stack import CallStack, FunctionCall
from .state import CANCELLED, COMPLETED, FAILED, PAUSED, RUNNING, SavedState
from .tracebacks import remember, runtime_file

runtime_file(__file__)  # frames of this module are the runtime's own (see durable.tracebacks)

log = logging.getLogger("durable")


class Endings(Children):
    """The runtime's last checkpoint of an instance (a mixin of :class:`~durable.DurableRuntime`)."""

    async def _finish(self, value: Any) -> Any:
        state = self._live()
        if state.get("children") and self._waited_children():
            await self._close_later(("ok", value))
        stack = state["stack"]
        state.update({"status": COMPLETED, "result": value, "stack": CallStack([]), "wait": None})
        try:
            await self._checkpoint()
        except CheckpointException as exc:
            if self._deferred is not None:  # keep the step that ran: save the checkpoint that was left out
                fr, pc, saved = self._deferred
                fr.pc = pc
                fr.locals.clear()
                fr.locals.update(saved)
                stack.frames[:] = [fr]
                state.update({"status": RUNNING, "result": None, "stack": stack, "steps": state["steps"] - 1})
                await self._checkpoint()
            raise CheckpointException(f"the result of type {type(value).__name__} cannot be saved: {exc}") from exc
        self._ended = True
        await self._after_end()
        return value

    async def _finish_failed(self, exc: BaseException) -> Any:
        """The program raised ``exc``: save the instance failed, keeping its last checkpoint to retry from.

        A cancellation that leaves the program ends it cancelled instead.
        """
        if isinstance(exc, InstanceCancelled):
            return await self._finish_cancelled(exc)
        state = self._live()
        try:
            pickle.loads(pickled(exc))
            stored = exc
        except Exception:
            stored = DurableError(f"{type(exc).__name__}: {exc}").with_traceback(exc.__traceback__)
        remember(stored)
        kept = await self._last_checkpoint()
        failed: SavedState = {**kept, "status": FAILED, "error": stored, "wait": None, "steps": state["steps"]}
        if kept.get("wait") is not None:
            failed["failed_wait"] = kept["wait"]
        if self._raised_at is not None:
            failed["failed_at"] = _where(exc, *self._raised_at)
        self.state = failed
        await self._checkpoint()
        self._ended = True
        await self._after_end()
        raise exc

    async def _last_checkpoint(self) -> SavedState:
        """The checkpoint a failed run goes back to: the last one saved, or the start of a new instance.

        Read again from the backend (the failure path only): the frames in
        memory moved on since it was saved. A backend that hands back the very
        dict it was given (not a copy) has no earlier version to give: the
        instance then fails without a checkpoint to retry from.
        """
        state = self._live()
        self._deferred = None
        try:
            loaded = await self._load_own()
        except Exception:  # e.g. a function defined inside another cannot be compiled again from a blob
            log.warning("instance %s: its last checkpoint cannot be read back; it fails without one to retry from",
                        self.instance_id, exc_info=True)
            loaded = state
        if isinstance(loaded, dict) and loaded is not state and loaded.get("status") in (RUNNING, PAUSED):
            return loaded
        if self._start is not None and (loaded is None or loaded is state):
            func, args, kwargs = self._start
            try:
                frame = FunctionCall.start(func, args, kwargs)
            except Exception:  # the arguments do not bind: nothing to retry from
                frame = None
            if frame is not None:
                return {**state, "stack": CallStack([frame]), "wait": None, "retry": None}
        return {**state, "stack": CallStack([]), "wait": None}

    async def _finish_cancelled(self, exc: InstanceCancelled) -> Any:
        """End the instance cancelled (the cancellation left the program, or it was forced)."""
        state = self._live()
        remember(exc)
        state.update({"status": CANCELLED, "error": exc, "stack": CallStack([]), "wait": None})
        state.pop("retry", None)
        group = state.pop("group", None)
        if group:  # forced while its branches were live: they end with it
            self._dropped = list(group["branches"])
        await self._checkpoint()
        self._ended = True
        await self._after_end()
        raise exc

    async def _after_end(self) -> None:
        """The instance ended: close its children, tell its parent (see :mod:`durable.children`)."""
        state = self._live()
        if self.branch is not None:
            return
        if state.get("children"):
            await self._close_children()
        if state.get("parent"):
            await self._notify_parent()



def _where(exc: BaseException, frame: FunctionCall, pc: int) -> str:
    """Where ``exc`` was raised in ``frame``: its function and the line (from the traceback), for people."""
    compiled = frame.compiled
    if compiled is None:
        return f"<script> block {pc}"
    line = None
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == compiled.filename:
            line = tb.tb_lineno
        tb = tb.tb_next
    return f"{compiled.qualname} line {line}" if line is not None else compiled.describe(pc)
