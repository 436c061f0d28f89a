"""Driving a call stack: run blocks, checkpoint after each step, pause, resume."""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import sysconfig
import time
import types
from collections.abc import Callable
from datetime import datetime
from typing import Any, cast

from .attempts import pause_in_step
from .backend import OrchestrationBackend, as_async_backend
from .blocks import AWAIT, CALL, EXCEPT, NEXT, RETURN, THROW, origin
from .branches import Branches, exclusive
from .children import ChildHandle, StartChild
from .endings import Endings
from .exceptions import (
    CompileError,
    DurableError,
    InstanceCancelled,
    PauseForEventException,
)
from .gathering import GatherRequest, from_asyncio
from .history import supports_history
from .interrupts import Interrupts, as_posix
from .primitives import TimerRequest, WaitRequest
from .progress import current_runtime
from .retries import RetryPolicy, Step
from .stack import CallStack, FunctionCall, check_code, transformer
from .state import (
    CANCELLED,
    COMPLETED,
    FAILED,
    RUNNING,
    RetryInfo,
    SavedState,
    WaitInfo,
    reopen_failed,
    stored_error,
)
from .tracebacks import enter, runtime_file, unwind

log = logging.getLogger("durable")
runtime_file(__file__)

_NATIVE_PREFIXES = tuple(
    os.path.normcase(os.path.realpath(p)) + os.sep
    for p in {sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")}
) + (os.path.dirname(os.path.realpath(__file__)) + os.sep,)
_SITE = tuple(p for p in _NATIVE_PREFIXES if "site-packages" in p or "dist-packages" in p)

#: Top-level packages whose async functions run as nested durable calls even
#: when installed in site-packages (every package of a ``make_durable`` program
#: is added).
durable_packages: set[str] = set()

_targets: dict[Any, Any] = {}


def _durable_code(func: types.FunctionType) -> Any:
    """The compiled form of ``func`` if it runs as a nested durable call, else None."""
    code = func.__code__
    hit = _targets.get(id(code))
    if hit is not None and hit[0] is code and hit[1] is func.__globals__:
        return hit[2]
    result = None
    if code.co_flags & inspect.CO_COROUTINE:
        filename = origin(func)[0]
        path = os.path.normcase(os.path.realpath(filename))
        top = (getattr(func, "__module__", None) or "").partition(".")[0]
        native = filename.startswith("<") or (
            path.startswith(_NATIVE_PREFIXES) and not (top in durable_packages and path.startswith(_SITE)))
        if not native:
            try:
                result = transformer.compile(func)
            except CompileError as exc:
                log.warning("%s runs as one step, not as a durable call: %s", func.__qualname__, exc)
    _targets[id(code)] = (code, func.__globals__, result)
    return result


class DurableRuntime(Branches, Endings, Interrupts):
    """Runs one instance: restores its state, drives its stack, persists it.

    ``clock`` (POSIX seconds) is injectable for tests of timers;
    ``on_checkpoint(instance_id, step)`` runs after every saved step (a
    fault-injection point for tests); ``migrate(frame) -> bool`` may adapt a
    frame whose code changed its step layout; ``deadline`` (an aware datetime
    or POSIX time) is the deadline of a new instance, overriding its program's.
    """

    def __init__(self, backend: OrchestrationBackend, instance_id: str, *, clock: Callable[[], float] = time.time,
                 on_checkpoint: Callable[[str, int], None] | None = None,
                 migrate: Callable[[FunctionCall], bool] | None = None,
                 deadline: datetime | float | None = None) -> None:
        self.backend = backend
        #: What the runtime calls: ``backend``, or an adapter of its plain ``def`` methods.
        self._io = as_async_backend(backend)
        self.instance_id = instance_id
        self.clock = clock
        self.on_checkpoint = on_checkpoint
        self.migrate = migrate
        self.deadline = as_posix(deadline)
        self.state: SavedState | None = None
        self._deferred: tuple[FunctionCall, int, dict[str, Any]] | None = None
        #: The program's default retry policy of step calls (set by :meth:`run`).
        self.retry: RetryPolicy | None = None
        #: (function, args, kwargs) of a new instance: its frame again if it fails before its first checkpoint.
        self._start: tuple[Any, tuple[Any, ...], dict[str, Any]] | None = None
        #: A cancellation requested and not yet raised in the program (its reason), see request_cancel().
        self._cancel: str | None = None
        #: The deadline not yet raised in the program (POSIX seconds).
        self._deadline: float | None = None
        #: Anything to raise at the next await (a cancellation or a deadline): one test per step when not.
        self._watch = False
        #: (frame, pc) where the last exception was raised in the program: where a failed instance failed.
        self._raised_at: tuple[FunctionCall, int] | None = None
        #: Parallel branches (see durable.branches): this runtime's branch path (None: the instance itself),
        #: the instance's runtime, the running group's branch runtimes, branch states to delete.
        self.branch: str | None = None
        self.root: DurableRuntime = self
        self._subs: dict[str, DurableRuntime] | None = None
        self._dropped: list[str] | None = None
        self._ended = False
        #: This branch holds the instance's lock of exclusive steps until its next checkpoint (see durable.branches).
        self._holding = False
        #: The "branches" wait a resumed group was paused on (its pause is not saved again when nothing changed).
        self._paused_on: WaitInfo | None = None
        self._lock: asyncio.Lock | None = None
        #: ``(parent instance id, parent-close policy)`` of a new child instance (see durable.children).
        self.parent: tuple[str, str] | None = None

    # -- entry points -----------------------------------------------------
    async def run(self, program: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None) -> Any:
        """Start, continue or report the instance; see :class:`~durable.DurableProgram`."""
        self.retry = getattr(program, "retry_policy", None)
        state = await self._io.load_state(self.instance_id)
        if state is None:
            func = getattr(program, "fn", program)
            kwargs = kwargs or {}
            frame = FunctionCall.start(func, args, kwargs)
            self._start = (func, args, kwargs)
            state = new_state(CallStack([frame]), getattr(program, "name", func.__qualname__))
            self._options(state, program)
            self.state = state
            self._arm()
            return await self._drive_current(None)
        state = self._loaded(state)
        status = state["status"]
        if status == COMPLETED:
            return state["result"]
        if status == FAILED:
            raise stored_error(state)
        if status == CANCELLED:
            raise InstanceCancelled(f"instance {self.instance_id!r} was cancelled")
        return await self._continue(state)

    async def retry_failed(self, program: Any) -> Any:
        """Continue a failed instance from the checkpoint it kept (see :meth:`DurableProgram.retry`)."""
        self.retry = getattr(program, "retry_policy", None)
        loaded = await self._io.load_state(self.instance_id)
        if loaded is None:
            raise DurableError(f"no instance {self.instance_id!r}")
        state = self._loaded(loaded)
        if state["status"] != FAILED:
            raise DurableError(f"instance {self.instance_id!r} is {state['status']}: only a failed instance is retried")
        reopen_failed(state, self.instance_id)
        if state.get("group"):
            await self._reopen_group()
        return await self._continue(state)

    async def cancel(self, program: Any, reason: str = "", *, force: bool = False) -> Any:
        """Cancel the instance: raise the cancellation at its current await and run its cleanup.

        ``force`` (or a cancellation already raised, whose cleanup has not
        ended) ends it cancelled at once, running nothing.
        """
        self.retry = getattr(program, "retry_policy", None)
        loaded = await self._io.load_state(self.instance_id)
        if loaded is None:
            raise DurableError(f"no instance {self.instance_id!r}")
        state = self._loaded(loaded)
        if state["status"] in (COMPLETED, FAILED, CANCELLED):
            raise DurableError(f"instance {self.instance_id!r} is {state['status']}; it cannot be cancelled")
        if force or state.get("cancel") is not None:
            return await self._finish_cancelled(InstanceCancelled(reason or f"instance {self.instance_id!r} was "
                                                                  "cancelled (forced)"))
        self.request_cancel(reason)
        return await self._continue(state)

    async def run_stack(self, stack: CallStack, name: str = "<stack>") -> Any:
        """Run a hand-built call stack (e.g. a script call with appended chunks)."""
        self.state = new_state(stack, name)
        self._arm()
        return await self._drive_current(None)

    def _loaded(self, loaded: Any) -> SavedState:
        if not isinstance(loaded, dict):
            raise TypeError(f"{type(self.backend).__name__}.load_state returned {type(loaded).__name__}: it returns "
                            "the dict save_state was given, or None")
        state: SavedState = cast(SavedState, loaded)
        self.state = state
        return state

    def _options(self, state: SavedState, program: Any) -> None:
        """The program's options that live in the state of a new instance (deadline, history)."""
        deadline = self.deadline
        relative = getattr(program, "deadline", None)
        if deadline is None and relative is not None:
            deadline = self.clock() + relative
        if deadline is not None:
            state["deadline"] = deadline
        if self.parent is not None:
            state["parent"] = self.parent
        history = getattr(program, "history", None)
        if history is not None:
            if not supports_history(self.backend):
                raise DurableError(f"{getattr(program, 'name', program)!r} keeps checkpoint history (history=...), "
                                   f"but {type(self.backend).__name__} cannot store it")
            state["history"] = history

    async def _continue(self, state: SavedState) -> Any:
        """Go on with a loaded instance: check its code, end its wait (or raise into it), drive it."""
        for frame in state["stack"]:
            check_code(frame, self.migrate)
        self._arm()
        closing = state.get("closing")
        if closing is not None:  # it returned; children it waits for were running (see durable.children)
            stop = self._interruption() if self._watch else None
            if isinstance(stop, InstanceCancelled):  # nothing of the program is left to run: it ends cancelled
                return await self._finish_cancelled(stop)
            wait = state.get("wait")
            if wait is not None:
                await self._check_wait(wait)
            state.update({"wait": None, "status": RUNNING})
            state.pop("closing")
            return await self._finish(closing[1])
        if state.get("group") is not None:  # parallel branches: their waits are theirs (see durable.branches)
            self._paused_on = state.get("wait")
            state["wait"] = None
            state["status"] = RUNNING
            return await self._drive_current(None, group=True)
        throw = None
        retry = None
        wait = state.get("wait")
        if wait is not None:
            throw = self._interruption() if self._watch else None
            if throw is None:
                value, throw = await self._check_wait(wait)
                top = state["stack"].top
                if top.tmp is not None and throw is None:
                    top.locals[top.tmp] = value
            retry = state.pop("retry", None)
            if throw is not None:
                retry = None
            state["wait"] = None
            state["status"] = RUNNING
        return await self._drive_current(throw, retry)

    # -- the step loop ----------------------------------------------------
    async def _drive_current(self, throw: BaseException | None, retry: RetryInfo | None = None,
                             group: bool = False) -> Any:
        """:meth:`_drive` with the instance's runtime as the current one (what ``durable.set_status()`` writes
        to): one context variable set per run, none per step."""
        token = current_runtime.set(self.root)
        try:
            return await self._drive(throw, retry, group)
        finally:
            current_runtime.reset(token)

    async def _drive(self, throw: BaseException | None, retry: RetryInfo | None = None, group: bool = False) -> Any:
        state = self._live()
        stack: CallStack = state["stack"]
        frames = stack.frames
        fr = frames[-1]
        blocks, L = fr.blocks, fr.locals
        if retry is not None or group:  # the next attempt of a step, after its backoff; or a group's branches
            if group:
                value, throw = await self._resume_group()
            else:
                assert retry is not None
                func, args, kwargs = retry["call"]
                value, throw = await self._step(func, args, kwargs, retry["attempt"])
            if throw is None:
                if fr.tmp is not None:
                    L[fr.tmp] = value
                if not self._defer(fr, frames):
                    await self._checkpoint()
        if throw is not None:
            fr, blocks, L, done = self._throw(throw)
            if done:
                return await self._finish_failed(throw)
        while True:
            try:
                r = blocks[fr.pc].fn(L)
            except Exception as exc:
                if isinstance(exc, PauseForEventException):
                    exc = DurableError(
                        "PauseForEventException raised outside a pause point; write "
                        "`raise PauseForEventException(name)` directly in durable code, or "
                        "`await wait_for_event(name)`").with_traceback(exc.__traceback__)
                fr, blocks, L, done = self._throw(exc, True)
                if done:
                    return await self._finish_failed(exc)
                continue
            if r.__class__ is int:
                fr.pc = r
                continue
            kind = r[0]
            throw = value = None
            if kind == CALL:
                _, func, args, kwargs, fr.pc, fr.tmp = r
                cls = func.__class__
                compiled = None
                if cls is types.FunctionType:
                    compiled = _durable_code(func)
                elif cls is types.MethodType and func.__func__.__class__ is types.FunctionType:
                    compiled = _durable_code(func.__func__)
                    if compiled is not None:
                        args = (func.__self__, *args)
                        func = func.__func__
                elif (getattr(cls, "_durable_program", False) and "instance_id" not in kwargs
                      and "orchestration_backend" not in kwargs):
                    compiled = func.compiled
                    func = func.fn
                if compiled is not None:
                    try:
                        L = compiled.bind(func, args, kwargs)
                    except Exception as exc:
                        fr, blocks, L, done = self._throw(exc)
                        if done:
                            return await self._finish_failed(exc)
                        continue
                    fr = FunctionCall(func, compiled, L)
                    frames.append(fr)
                    blocks = fr.blocks
                    continue
                # a leaf call: a wait, or a step (with its retry policy)
                if self._watch:
                    throw = self._interruption()
                if self.branch is not None and throw is None and exclusive(func):
                    await self._hold()
                if throw is not None:
                    pass
                elif cls is Step:
                    value, throw = await self._step(func, args, kwargs)
                else:
                    try:
                        aw: Any = func(*args, **kwargs) if func is not _asyncio_gather else from_asyncio(args, kwargs)
                    except Exception as exc:
                        aw, throw = None, exc
                    if throw is not None:
                        pass
                    elif aw.__class__ in _REQUESTS:
                        value, throw = await self._request(aw)
                    elif self.retry is not None:
                        value, throw = await self._step(func, args, kwargs, first=aw)
                    else:  # the common step, awaited here (as for AWAIT below): no extra coroutine per step
                        try:
                            value = await aw
                        except PauseForEventException:
                            throw = pause_in_step(aw)
                        except Exception as exc:
                            throw = exc
                            await self._discard()
            elif kind == AWAIT:
                _, aw, fr.pc, fr.tmp = r
                if self._watch:
                    throw = self._interruption()
                if throw is not None:
                    getattr(aw, "close", _nothing)()  # a coroutine that will not run: no "never awaited" warning
                elif aw.__class__ in _REQUESTS:
                    value, throw = await self._request(aw)
                else:
                    try:
                        value = await aw
                    except PauseForEventException:
                        throw = pause_in_step(aw)
                    except Exception as exc:
                        throw = exc
                        await self._discard()
            elif kind == RETURN:
                value = r[1]
                frames.pop()
                if not frames:
                    return await self._finish(value)
                fr = frames[-1]
                blocks, L = fr.blocks, fr.locals
                if fr.tmp is not None:
                    L[fr.tmp] = value
                if not self._defer(fr, frames):
                    await self._checkpoint()
                continue
            elif kind == NEXT:
                if fr.pc + 1 < len(blocks):
                    fr.pc += 1
                    continue
                frames.pop()
                if not frames:
                    return await self._finish(None)
                fr = frames[-1]
                blocks, L = fr.blocks, fr.locals
                if fr.tmp is not None:
                    L[fr.tmp] = None
                if not self._defer(fr, frames):
                    await self._checkpoint()
                continue
            else:  # pragma: no cover - the compiler emits nothing else
                raise DurableError(f"bad block result {r!r}")
            # the outcome of a leaf await
            if throw is not None:
                fr, blocks, L, done = self._throw(throw)
                if done:
                    return await self._finish_failed(throw)
                continue
            if fr.tmp is not None:
                L[fr.tmp] = value
            if not self._defer(fr, frames):
                await self._checkpoint()

    async def _request(self, req: Any) -> tuple[Any, BaseException | None]:
        """What durable code awaits that is not a step: a wait, a group of branches (value, exception)."""
        if req.__class__ is GatherRequest:
            return await self._group(req)
        if req.__class__ is StartChild:
            return await self._start_child(req)
        if req.__class__ is ChildHandle:
            return await self._await_children({"kind": "child", "child": req.instance_id, "due": None})
        _, value, throw = await self._begin_wait(req)
        return value, throw

    def _defer(self, fr: FunctionCall, frames: list[FunctionCall]) -> bool:
        """Leave the checkpoint after a step to the completion when only a bare return follows?

        When the outermost frame's next block is a :attr:`~durable.blocks.CodeBlock.tail` (it copies
        names and returns one: ``return await step()``), nothing with effects runs between this step
        and the completion, so the completion's checkpoint records both: one write instead of two. The
        frame is kept aside in case the completion cannot be saved (see :meth:`_finish`).
        """
        if len(frames) == 1 and fr.blocks[fr.pc].tail:
            self._deferred = (fr, fr.pc, dict(fr.locals))
            return True
        return False

    def _throw(self, exc: BaseException, from_block: bool = False) -> tuple[Any, Any, Any, bool]:
        """Route ``exc`` to the innermost handler; unwind frames that have none.

        Returns the handling frame, its blocks and its locals, and False; or (None, None, None, True)
        when no frame handles it (the instance fails). ``from_block``: a block raised it (else the
        runtime did, at the top frame's await). Its traceback gets an entry for each durable call it
        leaves (see :mod:`durable.tracebacks`).
        """
        frames = self._live()["stack"].frames
        if self._holding:
            self._release()
        enter(exc, frames[-1] if frames else None, from_block)
        if frames:
            self._raised_at = (frames[-1], frames[-1].pc)
        while frames:
            fr = frames[-1]
            blk = fr.blocks[fr.pc]
            if blk.pending is not None and exc.__context__ is None:
                c = fr.locals.get(blk.pending)
                if c is not None and c[0] == THROW and c[1] is not exc:
                    exc.__context__ = c[1]
            h = blk.handler
            if h is not None:
                kind, pc, var = h
                fr.locals[var] = exc if kind == EXCEPT else (THROW, exc)
                fr.pc = pc
                return fr, fr.blocks, fr.locals, False
            frames.pop()
            if frames:
                unwind(exc, frames[-1])
        return None, None, None, True

#: What the step loop hands to :meth:`DurableRuntime._request` instead of awaiting it.
_REQUESTS = frozenset({WaitRequest, TimerRequest, GatherRequest, StartChild, ChildHandle})
#: ``asyncio.gather`` awaited in durable code runs as :func:`durable.gather`, never called (it would start tasks).
_asyncio_gather = asyncio.gather


def new_state(stack: CallStack, name: str) -> SavedState:
    return {"format": 1, "status": RUNNING, "program": name, "stack": stack, "wait": None,
            "result": None, "error": None, "steps": 0}


def _nothing() -> None:
    return None


