"""Declaring a program: ``make_durable`` and :class:`DurableProgram`, what user code calls.

A program is an ``async def`` compiled once, with its options (name, version,
migration, default retry policy, deadline, checkpoint history). Calling it runs
an instance through a :class:`~durable.DurableRuntime`; ``retry``, ``cancel``
and ``instance`` are the other ways in.
"""

from __future__ import annotations

import functools
import inspect
import uuid
import weakref
from collections.abc import Callable, Coroutine
from datetime import datetime, timedelta
from typing import Any, Generic, ParamSpec, TypeVar, cast, overload

from .backend import DurableBackend, OrchestrationBackend
from .exceptions import CompileError
from .history import check_history
from .retries import RetryPolicy, as_policy
from .runtime import DurableRuntime, durable_packages
from .stack import FunctionCall, func_ref, resolve_func, transformer
from .tracebacks import runtime_file

runtime_file(__file__)  # frames of this module are the runtime's own (see durable.tracebacks)

P = ParamSpec("P")
R = TypeVar("R")

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


def _relative_seconds(what: str, value: float | timedelta | None) -> float | None:
    if value is None:
        return None
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < float("inf"):
        raise ValueError(f"{what} must be a positive number of seconds or a timedelta, got {value!r}")
    return float(value)


class DurableProgram(Generic[P, R]):
    """A durable version of an ``async def``; call it like the function.

    ``await program(*args, orchestration_backend=b, instance_id=i, **kw)``
    starts the instance, continues it if what it waits for has happened,
    returns the stored result if it completed, or raises the stored error if
    it failed. A pause raises :class:`PauseForEventException` (or
    :class:`TimerPause`). ``program.instance(i, orchestration_backend=b)(*args, **kw)``
    is the same call with the function's own signature (what a type checker
    can check in full; see docs/typing.md).

    Options (see docs/failures.md): ``retry`` is the default
    :class:`~durable.RetryPolicy` of the program's step calls; ``deadline``
    (seconds or a timedelta from the start) raises
    :class:`~durable.DeadlineExceeded` inside the program when it passes;
    ``history`` keeps the last N checkpoints (True: all) for
    :func:`durable.fork`. ``declare=False`` does not record ``fn`` as declared
    durable (see :func:`declared_program`): for hosts that wrap a function only
    because their configuration allows it.
    """

    _durable_program = True  # how the runtime recognises a program awaited inside another one
    fn: Callable[P, Coroutine[Any, Any, R]]

    def __init__(self, fn: Callable[P, Coroutine[Any, Any, R]] | DurableProgram[P, R], *, name: str | None = None,
                 version: str | None = None, migrate: Callable[[FunctionCall], bool] | None = None,
                 declare: bool = True, retry: RetryPolicy | int | None = None,
                 deadline: float | timedelta | None = None, history: int | bool | None = None) -> None:
        if isinstance(fn, DurableProgram):
            fn = fn.fn
        if inspect.isasyncgenfunction(fn):
            code = fn.__code__
            raise CompileError(f"{fn.__qualname__} is an async generator (yield inside async def); async generators "
                               "cannot be made durable", code.co_filename, code.co_firstlineno)
        if not inspect.iscoroutinefunction(fn):
            raise TypeError(f"make_durable() needs an async def function, got {fn!r}")
        self.retry_policy = as_policy(retry)
        self.deadline = _relative_seconds("make_durable(deadline=...)", deadline)
        self.history = check_history(history)
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

    def instance(self, instance_id: str | None = None, *, orchestration_backend: OrchestrationBackend | None = None,
                 deadline: datetime | float | None = None) -> Callable[P, Coroutine[Any, Any, R]]:
        """This program bound to one instance (and backend): call the result with the function's arguments.

        ``await program.instance("greet-1", orchestration_backend=b)("Ada")`` is
        ``await program("Ada", instance_id="greet-1", orchestration_backend=b)``
        in a form whose arguments a type checker checks against the function.
        ``deadline`` (an aware datetime or POSIX time) overrides the program's
        for a new instance.
        """
        async def call(*args: P.args, **kwargs: P.kwargs) -> R:
            return await self._run(orchestration_backend, instance_id, args, kwargs, deadline=deadline)

        return call

    async def retry(self, instance_id: str, *, orchestration_backend: OrchestrationBackend | None = None) -> R:
        """Continue a failed instance from its last checkpoint (its completed steps do not run again).

        Returns its result, or raises as a call does (a pause, or the error if it fails again).
        """
        runtime = self.runtime(orchestration_backend or default_backend(), instance_id)
        result: R = await runtime.retry_failed(self)
        return result

    async def cancel(self, instance_id: str, *, orchestration_backend: OrchestrationBackend | None = None,
                     reason: str = "", force: bool = False) -> R:
        """Cancel a paused instance: raise :class:`~durable.InstanceCancelled` at its current await.

        Its ``except``/``finally`` blocks run; this returns when the program
        ends: it raises ``InstanceCancelled`` (cancelled), a pause (the cleanup
        waits), or returns a result if the program caught the cancellation and
        finished. ``force=True``, or a second cancel while it cleans up, ends
        it cancelled at once without running anything.
        """
        runtime = self.runtime(orchestration_backend or default_backend(), instance_id)
        result: R = await runtime.cancel(self, reason, force=force)
        return result

    async def _run(self, backend: OrchestrationBackend | None, instance_id: str | None, args: tuple[Any, ...],
                   kwargs: dict[str, Any], deadline: datetime | float | None = None) -> R:
        runtime = DurableRuntime(backend if backend is not None else default_backend(),
                                 instance_id or uuid.uuid4().hex, migrate=self.migrate, deadline=deadline)
        result: R = await runtime.run(self, args, kwargs)
        return result

    def runtime(self, backend: OrchestrationBackend, instance_id: str, **options: Any) -> DurableRuntime:
        """A runtime for this program's instance, with options (clock, hooks, deadline)."""
        options.setdefault("migrate", self.migrate)
        return DurableRuntime(backend, instance_id, **options)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_program_by_ref, (func_ref(self.fn),))

    def __repr__(self) -> str:
        return f"<DurableProgram {self.name}>"


def _program_by_ref(ref: Any) -> DurableProgram[..., Any]:
    fn = resolve_func(ref)
    return declared_program(fn) or DurableProgram(fn)


class _Decorator:
    """What ``make_durable(name=..., ...)`` returns: a decorator that keeps the function's types."""

    def __init__(self, options: dict[str, Any]) -> None:
        self.options = options

    def __call__(self, fn: Callable[P, Coroutine[Any, Any, R]], /) -> DurableProgram[P, R]:
        return DurableProgram(fn, **self.options)


@overload
def make_durable(fn: Callable[P, Coroutine[Any, Any, R]], *, name: str | None = None, version: str | None = None,
                 migrate: Callable[[FunctionCall], bool] | None = None, declare: bool = True,
                 retry: RetryPolicy | int | None = None, deadline: float | timedelta | None = None,
                 history: int | bool | None = None) -> DurableProgram[P, R]: ...


@overload
def make_durable(fn: None = None, *, name: str | None = None, version: str | None = None,
                 migrate: Callable[[FunctionCall], bool] | None = None, declare: bool = True,
                 retry: RetryPolicy | int | None = None, deadline: float | timedelta | None = None,
                 history: int | bool | None = None) -> _Decorator: ...


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


__all__ = ["DurableProgram", "declared_program", "default_backend", "make_durable"]
