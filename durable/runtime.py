"""Driving a call stack: run blocks, checkpoint after each step, pause, resume."""

from __future__ import annotations

import functools
import inspect
import logging
import os
import pickle
import sysconfig
import time
import types
import uuid
import weakref
from collections.abc import Callable, Coroutine
from typing import Any, Generic, ParamSpec, TypeVar, cast, overload

import cloudpickle

from .backend import DurableBackend, OrchestrationBackend, as_async_backend
from .blocks import AWAIT, CALL, EXCEPT, NEXT, RETURN, THROW, origin
from .exceptions import (
    CheckpointException,
    CompileError,
    DurableError,
    EventTimeout,
    InstanceCancelled,
    PauseForEventException,
    TimerPause,
)
from .primitives import TimerRequest, WaitRequest, valid_due
from .serialization import pickled
from .stack import CallStack, FunctionCall, check_code, func_ref, resolve_func, transformer
from .state import CANCELLED, COMPLETED, FAILED, PAUSED, RUNNING, SavedState, WaitInfo
from .tracebacks import enter, remember, restore, runtime_file, unwind

log = logging.getLogger("durable")
runtime_file(__file__)

P = ParamSpec("P")
R = TypeVar("R")

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
    frame whose code changed its step layout.
    """

    def __init__(self, backend: OrchestrationBackend, instance_id: str, *, clock: Callable[[], float] = time.time,
                 on_checkpoint: Callable[[str, int], None] | None = None,
                 migrate: Callable[[FunctionCall], bool] | None = None) -> None:
        self.backend = backend
        #: What the runtime calls: ``backend``, or an adapter of its plain ``def`` methods.
        self._io = as_async_backend(backend)
        self.instance_id = instance_id
        self.clock = clock
        self.on_checkpoint = on_checkpoint
        self.migrate = migrate
        self.state: SavedState | None = None
        self._deferred: tuple[FunctionCall, int, dict[str, Any]] | None = None

    async def run(self, program: DurableProgram[..., Any] | Callable[..., Any], args: tuple[Any, ...] = (),
                  kwargs: dict[str, Any] | None = None) -> Any:
        """Start, continue or report the instance; see :class:`DurableProgram`."""
        state = await self._io.load_state(self.instance_id)
        if state is None:
            func = program.fn if isinstance(program, DurableProgram) else program
            frame = FunctionCall.start(func, args, kwargs)
            state = new_state(CallStack([frame]), getattr(program, "name", func.__qualname__))
            self.state = state
            return await self._drive(None)
        if not isinstance(state, dict):
            raise TypeError(f"{type(self.backend).__name__}.load_state returned {type(state).__name__}: it returns "
                            "the dict save_state was given, or None")
        self.state = state
        status = state["status"]
        if status == COMPLETED:
            return state["result"]
        if status == FAILED:
            raise _stored_error(state)
        if status == CANCELLED:
            raise InstanceCancelled(f"instance {self.instance_id!r} was cancelled")
        for frame in state["stack"]:
            check_code(frame, self.migrate)
        throw = None
        wait = state.get("wait")
        if wait is not None:
            value, throw = await self._check_wait(wait)
            top = state["stack"].top
            if top.tmp is not None and throw is None:
                top.locals[top.tmp] = value
            state["wait"] = None
            state["status"] = RUNNING
        return await self._drive(throw)

    async def run_stack(self, stack: CallStack, name: str = "<stack>") -> Any:
        """Run a hand-built call stack (e.g. a script call with appended chunks)."""
        self.state = new_state(stack, name)
        return await self._drive(None)

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
            state = self._live()
            state["wait"] = wait
            state["status"] = PAUSED
            await self._checkpoint()
            raise pause

    # -- the step loop ----------------------------------------------------
    def _live(self) -> SavedState:
        """The state of the instance being run (set by :meth:`run` before any step)."""
        state = self.state
        if state is None:  # pragma: no cover - only a call out of order gets here
            raise DurableError("the runtime has no state: call run() first")
        return state

    async def _drive(self, throw: BaseException | None) -> Any:
        state = self._live()
        stack: CallStack = state["stack"]
        frames = stack.frames
        fr = frames[-1]
        blocks, L = fr.blocks, fr.locals
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
                elif cls is DurableProgram and "instance_id" not in kwargs and "orchestration_backend" not in kwargs:
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
                try:
                    aw = func(*args, **kwargs)
                except Exception as exc:
                    fr, blocks, L, done = self._throw(exc)
                    if done:
                        return await self._finish_failed(exc)
                    continue
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
            elif kind == AWAIT:
                _, aw, fr.pc, fr.tmp = r
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
            # a leaf await: a wait request, or any awaitable run as one step
            throw = value = None
            if aw.__class__ is WaitRequest or aw.__class__ is TimerRequest:
                ok, value, throw = await self._begin_wait(aw)
            else:
                try:
                    value = await aw
                except PauseForEventException:
                    throw = DurableError(
                        f"{aw!r} raised PauseForEventException while running as one step; pauses must be "
                        "written in durable code (`raise PauseForEventException(name)` or "
                        "`await wait_for_event(name)`)")
                except Exception as exc:
                    throw = exc
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
        state = self._live()
        try:
            pickle.loads(pickled(exc))
            stored = exc
        except Exception:
            stored = DurableError(f"{type(exc).__name__}: {exc}").with_traceback(exc.__traceback__)
        remember(stored)
        state.update({"status": FAILED, "error": stored, "stack": CallStack([]), "wait": None})
        await self._checkpoint()
        raise exc


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


_default_backend: DurableBackend | None = None


def default_backend() -> DurableBackend:
    """An in-memory backend for calls that pass none."""
    global _default_backend
    if _default_backend is None:
        _default_backend = DurableBackend()
    return _default_backend


#: async def -> the program make_durable() made of it in this process (the first one still alive).
_declared: weakref.WeakKeyDictionary[Any, weakref.ref[DurableProgram[..., Any]]] = weakref.WeakKeyDictionary()


def declared_program(fn: Callable[P, Coroutine[Any, Any, R]]) -> DurableProgram[P, R] | None:
    """The :class:`DurableProgram` that :func:`make_durable` made of ``fn`` in this process, or None.

    Lets a host that stores programs by dotted path tell a function its
    code declared durable (``process = make_durable(_process)`` stores the
    path of ``_process``) from any other importable ``async def``.
    """
    try:
        ref = _declared.get(fn)
    except TypeError:  # not weak-referenceable: never declared
        return None
    # the registry holds programs of any signature; the one made of ``fn`` has ``fn``'s
    return cast("DurableProgram[P, R] | None", ref() if ref is not None else None)


class DurableProgram(Generic[P, R]):
    """A durable version of an ``async def``; call it like the function.

    ``await program(*args, orchestration_backend=b, instance_id=i, **kw)``
    starts the instance, continues it if what it waits for has happened,
    returns the stored result if it completed, or raises the stored error if
    it failed. A pause raises :class:`PauseForEventException` (or
    :class:`TimerPause`). ``program.instance(i, orchestration_backend=b)(*args, **kw)``
    is the same call with the function's own signature (what a type checker
    can check in full; see docs/typing.md).

    ``declare=False`` does not record ``fn`` as declared durable (see
    :func:`declared_program`): for hosts that wrap a function only because
    their configuration allows it.
    """

    fn: Callable[P, Coroutine[Any, Any, R]]

    def __init__(self, fn: Callable[P, Coroutine[Any, Any, R]] | DurableProgram[P, R], *, name: str | None = None,
                 version: str | None = None, migrate: Callable[[FunctionCall], bool] | None = None,
                 declare: bool = True) -> None:
        if isinstance(fn, DurableProgram):
            fn = fn.fn
        if inspect.isasyncgenfunction(fn):
            code = fn.__code__
            raise CompileError(f"{fn.__qualname__} is an async generator (yield inside async def); async generators "
                               "cannot be made durable", code.co_filename, code.co_firstlineno)
        if not inspect.iscoroutinefunction(fn):
            raise TypeError(f"make_durable() needs an async def function, got {fn!r}")
        self.fn = fn
        self.compiled = transformer.compile(fn)
        self.name = name or f"{fn.__module__}.{fn.__qualname__}"
        self.version = version
        self.migrate = migrate
        durable_packages.add((fn.__module__ or "").partition(".")[0])
        functools.update_wrapper(self, fn)
        if declare and declared_program(fn) is None:  # see declared_program()
            _declared[fn] = weakref.ref(self)

    # The documented call passes the runtime's keywords among the function's own arguments, which a
    # ParamSpec cannot express: the first form is checked in full, the other two (with a keyword) are not.
    @overload
    async def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R: ...

    @overload
    async def __call__(self, *args: Any, instance_id: str, orchestration_backend: OrchestrationBackend | None = None,
                       **kwargs: Any) -> R: ...

    @overload
    async def __call__(self, *args: Any, orchestration_backend: OrchestrationBackend, instance_id: str | None = None,
                       **kwargs: Any) -> R: ...

    async def __call__(self, *args: Any, **kwargs: Any) -> R:
        backend = kwargs.pop("orchestration_backend", None)
        return await self._run(backend, kwargs.pop("instance_id", None), args, kwargs)

    def instance(self, instance_id: str | None = None, *,
                 orchestration_backend: OrchestrationBackend | None = None) -> Callable[P, Coroutine[Any, Any, R]]:
        """This program bound to one instance (and backend): call the result with the function's arguments.

        ``await program.instance("greet-1", orchestration_backend=b)("Ada")`` is
        ``await program("Ada", instance_id="greet-1", orchestration_backend=b)``
        in a form whose arguments a type checker checks against the function.
        """
        async def call(*args: P.args, **kwargs: P.kwargs) -> R:
            return await self._run(orchestration_backend, instance_id, args, kwargs)

        return call

    async def _run(self, backend: OrchestrationBackend | None, instance_id: str | None, args: tuple[Any, ...],
                   kwargs: dict[str, Any]) -> R:
        runtime = DurableRuntime(backend if backend is not None else default_backend(),
                                 instance_id or uuid.uuid4().hex, migrate=self.migrate)
        result: R = await runtime.run(self, args, kwargs)
        return result

    def runtime(self, backend: OrchestrationBackend, instance_id: str, **options: Any) -> DurableRuntime:
        """A runtime for this program's instance, with options (clock, hooks)."""
        options.setdefault("migrate", self.migrate)
        return DurableRuntime(backend, instance_id, **options)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_program_by_ref, (func_ref(self.fn),))

    def __repr__(self) -> str:
        return f"<DurableProgram {self.name}>"


def _program_by_ref(ref: Any) -> DurableProgram[..., Any]:
    fn = resolve_func(ref)
    return DurableProgram(fn)


class _Decorator:
    """What ``make_durable(name=..., ...)`` returns: a decorator that keeps the function's types."""

    def __init__(self, options: dict[str, Any]) -> None:
        self.options = options

    def __call__(self, fn: Callable[P, Coroutine[Any, Any, R]], /) -> DurableProgram[P, R]:
        return DurableProgram(fn, **self.options)


@overload
def make_durable(fn: Callable[P, Coroutine[Any, Any, R]], *, name: str | None = None, version: str | None = None,
                 migrate: Callable[[FunctionCall], bool] | None = None,
                 declare: bool = True) -> DurableProgram[P, R]: ...


@overload
def make_durable(fn: None = None, *, name: str | None = None, version: str | None = None,
                 migrate: Callable[[FunctionCall], bool] | None = None, declare: bool = True) -> _Decorator: ...


def make_durable(fn: Callable[P, Coroutine[Any, Any, R]] | None = None,
                 **options: Any) -> DurableProgram[P, R] | _Decorator:
    """Wrap an ``async def`` into a :class:`DurableProgram` (also a decorator).

    The function is compiled now, so constructs that cannot be checkpointed
    are reported with file and line before anything runs. The program keeps
    the function's parameter and return types for type checkers.
    """
    if fn is None:
        return _Decorator(options)
    return DurableProgram(fn, **options)


__all__ = ["DurableProgram", "DurableRuntime", "make_durable", "default_backend"]
