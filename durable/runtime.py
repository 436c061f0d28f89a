"""Driving a call stack: run blocks, checkpoint after each step, pause, resume."""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import pickle
import sysconfig
import time
import types
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, cast

import cloudpickle

from .backend import OrchestrationBackend, as_async_backend
from .blocks import AWAIT, CALL, EXCEPT, NEXT, RETURN, THROW, origin
from .exceptions import (
    CheckpointException,
    CompileError,
    DeadlineExceeded,
    DurableError,
    EventTimeout,
    InstanceCancelled,
    PauseForEventException,
    StepTimeout,
    TimerPause,
)
from .history import supports_history
from .primitives import TimerRequest, WaitRequest, valid_due
from .retries import RetryPolicy, Step, _attempt
from .serialization import pickled
from .stack import CallStack, FunctionCall, check_code, transformer
from .state import CANCELLED, COMPLETED, FAILED, PAUSED, RUNNING, RetryInfo, SavedState, WaitInfo
from .tracebacks import enter, remember, restore, runtime_file, unwind

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


class DurableRuntime:
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
        self.deadline = _posix(deadline)
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
            return await self._drive(None)
        state = self._loaded(state)
        status = state["status"]
        if status == COMPLETED:
            return state["result"]
        if status == FAILED:
            raise _stored_error(state)
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
        reopen(state, self.instance_id)
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

    def request_cancel(self, reason: str = "") -> None:
        """Raise :class:`~durable.InstanceCancelled` in the program at its next await (safe from any thread)."""
        self._cancel = reason or f"instance {self.instance_id!r} was cancelled"
        self._watch = True

    async def run_stack(self, stack: CallStack, name: str = "<stack>") -> Any:
        """Run a hand-built call stack (e.g. a script call with appended chunks)."""
        self.state = new_state(stack, name)
        self._arm()
        return await self._drive(None)

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
        history = getattr(program, "history", None)
        if history is not None:
            if not supports_history(self.backend):
                raise DurableError(f"{getattr(program, 'name', program)!r} keeps checkpoint history (history=...), "
                                   f"but {type(self.backend).__name__} cannot store it")
            state["history"] = history

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

    async def _continue(self, state: SavedState) -> Any:
        """Go on with a loaded instance: check its code, end its wait (or raise into it), drive it."""
        for frame in state["stack"]:
            check_code(frame, self.migrate)
        self._arm()
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
        return await self._drive(throw, retry)

    # -- waiting ----------------------------------------------------------
    async def _check_wait(self, wait: WaitInfo) -> tuple[Any, BaseException | None]:
        """Return (value, exception-to-throw) if the wait is over; else raise the pause again."""
        due = wait.get("due")
        if wait["kind"] == "timer":
            if due is None:
                raise DurableError(f"instance {self.instance_id!r}: a timer wait without a due time")
            if self.clock() >= due:
                return None, None
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
                if wait.get("deadline"):  # the wait was cut at the instance's deadline, which raises at the await
                    return None, None
                return None, EventTimeout(f"event {event!r} did not arrive in time")
            raise PauseForEventException(event, due=due, instance_id=self.instance_id) from None

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

    # -- steps ------------------------------------------------------------
    async def _step(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any], attempt: int = 1,
                    first: Any = None) -> tuple[Any, BaseException | None]:
        """Run a step call with its retry policy and timeout: (value, None) or (None, exception to raise).

        A failed attempt that is retried after a delay pauses the instance on
        a durable timer (``state["retry"]`` says what to call again).
        """
        if func.__class__ is Step:
            policy, timeout, call = func.retry or self.retry, func.timeout, func.fn
        else:
            policy, timeout, call = self.retry, None, func
        while True:
            token = _attempt.set(attempt)
            limit = None
            try:
                aw, first = (call(*args, **kwargs) if first is None else first), None
                if timeout is None:
                    return await aw, None
                async with asyncio.timeout(timeout) as limit:
                    value = await aw
                return value, None
            except PauseForEventException:
                return None, _pause_in_step(call)
            except Exception as exc:
                if limit is not None and isinstance(exc, TimeoutError) and limit.expired():
                    exc = StepTimeout(f"{_name(call)} ran longer than its timeout of {timeout} s (attempt {attempt})")
                await self._discard()
                if policy is None or not policy.retries(exc, attempt):
                    return None, exc
                delay = policy.delay(attempt)
                attempt += 1
                if delay > 0:
                    await self._backoff(func, args, kwargs, attempt, exc, delay, policy.max_attempts)
            finally:
                _attempt.reset(token)

    async def _backoff(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any], attempt: int,
                       exc: BaseException, delay: float, max_attempts: int) -> None:
        """Pause on a durable timer before attempt ``attempt`` of a step (raises the pause)."""
        state = self._live()
        due = self.clock() + delay
        state["retry"] = {"call": (func, args, kwargs), "attempt": attempt, "max_attempts": max_attempts,
                          "step": _name(func), "error": f"{type(exc).__name__}: {exc}"[:1000]}
        try:
            await self._pause({"kind": "timer", "due": due, "retry": True}, TimerPause(
                None, due=due, instance_id=self.instance_id))
        except CheckpointException as err:
            state.pop("retry", None)
            raise CheckpointException(f"the retry of {_name(func)} cannot be saved (its function and arguments are "
                                      f"kept for the next attempt and must be picklable): {err}") from err

    async def _discard(self) -> None:
        """Tell the backend a step failed: it drops the step's writes (the Django app rolls them back)."""
        hook = getattr(self._io, "discard_step_writes", None)
        if hook is not None:
            done = hook(self.instance_id)
            if inspect.isawaitable(done):
                await done

    # -- the step loop ----------------------------------------------------
    def _live(self) -> SavedState:
        """The state of the instance being run (set by :meth:`run` before any step)."""
        state = self.state
        if state is None:  # pragma: no cover - only a call out of order gets here
            raise DurableError("the runtime has no state: call run() first")
        return state

    async def _drive(self, throw: BaseException | None, retry: RetryInfo | None = None) -> Any:
        state = self._live()
        stack: CallStack = state["stack"]
        frames = stack.frames
        fr = frames[-1]
        blocks, L = fr.blocks, fr.locals
        if retry is not None:  # the next attempt of a step, after its backoff
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
                if throw is not None:
                    pass
                elif cls is Step:
                    value, throw = await self._step(func, args, kwargs)
                else:
                    try:
                        aw = func(*args, **kwargs)
                    except Exception as exc:
                        aw, throw = None, exc
                    if throw is not None:
                        pass
                    elif aw.__class__ is WaitRequest or aw.__class__ is TimerRequest:
                        _, value, throw = await self._begin_wait(aw)
                    elif self.retry is not None:
                        value, throw = await self._step(func, args, kwargs, first=aw)
                    else:
                        try:
                            value = await aw
                        except PauseForEventException:
                            throw = _pause_in_step(aw)
                        except Exception as exc:
                            throw = exc
                            await self._discard()
            elif kind == AWAIT:
                _, aw, fr.pc, fr.tmp = r
                if self._watch:
                    throw = self._interruption()
                if throw is not None:
                    getattr(aw, "close", _nothing)()  # a coroutine that will not run: no "never awaited" warning
                elif aw.__class__ is WaitRequest or aw.__class__ is TimerRequest:
                    _, value, throw = await self._begin_wait(aw)
                else:
                    try:
                        value = await aw
                    except PauseForEventException:
                        throw = _pause_in_step(aw)
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
        enter(exc, frames[-1] if frames else None, from_block)
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

    async def _checkpoint(self) -> None:
        state = self._live()
        state["steps"] += 1
        try:
            await self._io.save_state(self.instance_id, state)
        except CheckpointException as exc:
            raise _diagnose(state, exc) from exc
        if self.on_checkpoint is not None:
            self.on_checkpoint(self.instance_id, state["steps"])

    async def _finish(self, value: Any) -> Any:
        state = self._live()
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
        self.state = failed
        await self._checkpoint()
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
            loaded = await self._io.load_state(self.instance_id)
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
        await self._checkpoint()
        raise exc


def reopen(state: SavedState, instance_id: str) -> SavedState:
    """Make a failed state runnable again from the checkpoint it kept (for a retry of the instance).

    The wait it was paused on, if any, is waited for again; a step in backoff
    gets a fresh set of attempts. Raises :class:`DurableError` when the
    failure kept no checkpoint.
    """
    if state.get("status") != FAILED:
        raise DurableError(f"instance {instance_id!r} is {state.get('status')}: only a failed instance is retried")
    if not state.get("stack"):
        raise DurableError(f"instance {instance_id!r} failed without a checkpoint to retry from (it failed before "
                           "failed instances kept one, or its store returns the dict it was given): start it again")
    wait = state.pop("failed_wait", None)
    retry = state.get("retry")
    if retry:
        retry["attempt"] = 1
    state.update({"status": PAUSED if wait else RUNNING, "wait": wait, "error": None})
    return state


def new_state(stack: CallStack, name: str) -> SavedState:
    return {"format": 1, "status": RUNNING, "program": name, "stack": stack, "wait": None,
            "result": None, "error": None, "steps": 0}


def _stored_error(state: SavedState) -> BaseException:
    err = state.get("error")
    return restore(err) if isinstance(err, BaseException) else DurableError(str(err))


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




def _pause_in_step(aw: Any) -> DurableError:
    return DurableError(f"{aw!r} raised PauseForEventException while running as one step; pauses must be written "
                        "in durable code (`raise PauseForEventException(name)` or `await wait_for_event(name)`)")


def _name(func: Any) -> str:
    return getattr(func, "__qualname__", None) or repr(func)


def _nothing() -> None:
    return None


def _posix(when: datetime | float | None) -> float | None:
    """A deadline as POSIX seconds (an aware datetime, naive meaning UTC, or a number)."""
    if when is None:
        return None
    if isinstance(when, datetime):
        return (when if when.tzinfo is not None else when.replace(tzinfo=UTC)).timestamp()
    if isinstance(when, bool) or not isinstance(when, int | float) or not valid_due(float(when)):
        raise ValueError(f"deadline must be an aware datetime or a POSIX time, got {when!r}")
    return float(when)
