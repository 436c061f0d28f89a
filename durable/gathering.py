"""Parallel branches as plain Python: what ``gather`` and ``first`` hand to the runtime.

Inside durable code, ``await durable.gather(a(), b())`` (or
``asyncio.gather``) and ``await durable.first(a(), b())`` run each awaitable
as a *branch*: its own durable call stack, checkpointed on its own, which can
pause on an event or a timer while the others go on (see
:mod:`durable.branches`). The runtime needs each branch as a call it can save
and make again after a crash, not as a coroutine object (which cannot be
pickled): :func:`branch_call` turns an awaitable into ``(function, args,
kwargs)``.

Outside durable code the same calls run with asyncio, so a program can be run
natively (tests use that as the oracle): ``gather`` cancels the other
awaitables when one fails, as the durable form does (``asyncio.gather`` leaves
them running), and ``first`` returns (or raises) the outcome of the first to
finish and cancels the rest.
"""

from __future__ import annotations

import asyncio
import inspect
import sys
import types
from collections.abc import Awaitable, Generator
from typing import Any, Literal

from .primitives import TimerRequest, WaitRequest

Mode = Literal["all", "first"]

#: The most branches one ``gather``/``first`` may start (each is a saved call stack).
MAX_BRANCHES = 10_000


class GatherRequest:
    """``gather(*aws)`` / ``first(*aws)``: what the runtime runs as a group of branches."""

    __slots__ = ("aws", "mode", "return_exceptions", "prepared")

    def __init__(self, aws: tuple[Any, ...], mode: Mode, return_exceptions: bool = False,
                 prepared: list[tuple[Any, tuple[Any, ...], dict[str, Any]]] | None = None) -> None:
        if len(aws) > MAX_BRANCHES:
            for aw in aws:
                _close(aw)
            raise ValueError(f"{len(aws)} awaitables in one {_name(mode)}(): at most {MAX_BRANCHES}")
        if mode == "first" and not aws and prepared is None:
            raise ValueError("durable.first() needs at least one awaitable")
        self.aws = aws
        self.mode = mode
        self.return_exceptions = return_exceptions
        #: The awaitables already taken apart into calls (a group nested in a branch's call, see branch_call).
        self.prepared = prepared

    def __await__(self) -> Generator[Any, None, Any]:
        """Outside durable code: run the awaitables with asyncio (see the module's docstring)."""
        if self.mode == "first":
            return _first_natively(self.aws).__await__()
        return _gather_natively(self.aws, self.return_exceptions).__await__()

    def calls(self) -> list[tuple[Any, tuple[Any, ...], dict[str, Any]]]:
        """Each awaitable as a call (see :func:`branch_call`); closes the coroutines, which will not run."""
        if self.prepared is not None:
            return self.prepared
        try:
            return [branch_call(aw) for aw in self.aws]
        finally:
            for aw in self.aws:
                _close(aw)

    def __repr__(self) -> str:
        return f"<durable.{_name(self.mode)} of {len(self.aws)}>"


def gather(*aws: Awaitable[Any], return_exceptions: bool = False) -> Any:
    """Run the awaitables as parallel branches; return their results in order.

    As ``asyncio.gather``: the first exception is raised (or, with
    ``return_exceptions=True``, every outcome is returned in place). Unlike
    ``asyncio.gather``, the other branches are cancelled when one fails: their
    ``finally`` blocks run before the exception reaches the caller.
    """
    return GatherRequest(aws, "all", return_exceptions)


def first(*aws: Awaitable[Any]) -> Any:
    """Run the awaitables as parallel branches; return the result of the first to finish (or raise its
    exception) once the others are cancelled (their ``finally`` blocks run)."""
    return GatherRequest(aws, "first")


def from_asyncio(args: tuple[Any, ...], kwargs: dict[str, Any]) -> GatherRequest:
    """``asyncio.gather(*args, **kwargs)`` awaited in durable code, as a durable gather."""
    extra = set(kwargs) - {"return_exceptions"}
    if extra:
        for aw in args:
            _close(aw)
        raise TypeError(f"asyncio.gather() got unexpected keyword arguments {sorted(extra)}")
    return GatherRequest(args, "all", bool(kwargs.get("return_exceptions", False)))


class Spent:
    """What a local holding a coroutine given to a group holds from then on: the coroutine cannot be saved in a
    checkpoint (nor awaited again); this can."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __await__(self) -> Generator[Any, None, Any]:
        raise RuntimeError(f"{self.name}() was given to a durable gather/first: it runs as a branch, await its "
                           "result there")
        yield  # pragma: no cover

    def __reduce__(self) -> tuple[Any, ...]:
        return (Spent, (self.name,))

    def __repr__(self) -> str:
        return f"<{self.name}() given to a durable gather>"


def scrub(local_vars: dict[str, Any], aws: tuple[Any, ...]) -> None:
    """Replace the coroutines of ``aws`` where the frame keeps them (a local, or an item of a list, tuple or dict
    in a local: ``coros = [f(x) for x in xs]; await gather(*coros)``) by :class:`Spent`, so the checkpoint that
    records the group can save the frame."""
    spent = {id(aw): Spent(aw.__qualname__) for aw in aws if inspect.iscoroutine(aw)}
    if not spent:
        return
    for name, value in list(local_vars.items()):
        if id(value) in spent:
            local_vars[name] = spent[id(value)]
        elif value.__class__ is list:
            value[:] = [spent.get(id(item), item) for item in value]
        elif value.__class__ is tuple and any(id(item) in spent for item in value):
            local_vars[name] = tuple(spent.get(id(item), item) for item in value)
        elif value.__class__ is dict:
            for key, item in value.items():
                if id(item) in spent:
                    value[key] = spent[id(item)]


def _ready(value: Any) -> Any:
    """A branch's call that hands the runtime ``value`` (a wait, a child, a nested group) to await."""
    return value


def _prepared(calls: list[tuple[Any, tuple[Any, ...], dict[str, Any]]], mode: Mode,
              return_exceptions: bool) -> GatherRequest:
    """A nested group, its awaitables already calls: what a branch of an outer group awaits."""
    return GatherRequest((), mode, return_exceptions, calls)


def branch_call(aw: Any) -> tuple[Any, tuple[Any, ...], dict[str, Any]]:
    """``aw`` as ``(function, args, kwargs)``: a call the runtime can save and make again.

    A coroutine is taken apart: its function (found by name, else rebuilt
    from its code) and the arguments it was called with. A durable wait, a
    child's handle or a nested ``gather`` is handed over as it is. A task or a
    future already runs outside the instance: it cannot be a branch.
    """
    if inspect.iscoroutine(aw):
        return _coroutine_call(aw)
    if isinstance(aw, asyncio.Future):
        raise TypeError(f"{aw!r} is a task or future: it runs outside the instance and cannot be a durable branch; "
                        "pass the coroutine itself (e.g. gather(work(x)), not gather(asyncio.create_task(work(x))))")
    if isinstance(aw, GatherRequest):
        return _prepared, (aw.calls(), aw.mode, aw.return_exceptions), {}
    if isinstance(aw, WaitRequest | TimerRequest) or callable(getattr(aw, "__await__", None)):
        return _ready, (aw,), {}
    raise TypeError(f"a durable branch must be awaitable, got {type(aw).__name__} {aw!r}")


def _coroutine_call(coro: types.CoroutineType[Any, Any, Any]) -> tuple[Any, tuple[Any, ...], dict[str, Any]]:
    frame = coro.cr_frame
    if frame is None or inspect.getcoroutinestate(coro) != inspect.CORO_CREATED:
        raise RuntimeError(f"{coro.__qualname__}() was already awaited: a durable branch takes a coroutine that has "
                           "not started")
    code = coro.cr_code
    values = frame.f_locals
    func = _function_of(coro, code, frame.f_globals, values)
    flags = code.co_flags
    n, k = code.co_argcount, code.co_kwonlyargcount
    names = code.co_varnames
    args = tuple(values[name] for name in names[:n])
    kwargs = {name: values[name] for name in names[n:n + k] if name in values}
    extra = n + k
    if flags & inspect.CO_VARARGS:
        args += tuple(values[names[extra]])
        extra += 1
    if flags & inspect.CO_VARKEYWORDS:
        kwargs.update(values[names[extra]])
    program = args[0] if args else None
    if getattr(type(program), "_durable_program", False) and func is type(program).__call__:
        # ``program(x)``: the program's call, as ``await program(x)`` is in durable code (a nested durable call)
        return program, args[1:], kwargs
    return func, args, kwargs


def _function_of(coro: types.CoroutineType[Any, Any, Any], code: types.CodeType, globals_: dict[str, Any],
                 values: dict[str, Any]) -> Any:
    """The function whose call made ``coro``: by its module and name, else rebuilt from its code.

    Found by name, a function decorated with :func:`durable.step` is the step
    (with its retry policy) and a method is the class's function (``self`` is
    then the first argument).
    """
    qualname = coro.__qualname__
    if "<locals>" not in qualname:
        obj: Any = sys.modules.get(globals_.get("__name__", ""))
        for part in qualname.split("."):
            obj = getattr(obj, part, None)
        inner = getattr(obj, "fn", obj)
        if getattr(inner, "__code__", None) is code:
            return obj
    closure = tuple(types.CellType(values[name]) for name in code.co_freevars)
    func = types.FunctionType(code, globals_, code.co_name, None, closure or None)
    func.__qualname__ = qualname
    func.__durable_origin__ = (code.co_filename, code.co_firstlineno)  # type: ignore[attr-defined]  # see origin()
    return func


def _close(aw: Any) -> None:
    if inspect.iscoroutine(aw) and inspect.getcoroutinestate(aw) == inspect.CORO_CREATED:
        aw.close()


def _name(mode: str) -> str:
    return "first" if mode == "first" else "gather"


async def _gather_natively(aws: tuple[Any, ...], return_exceptions: bool) -> list[Any]:
    tasks = [asyncio.ensure_future(aw) for aw in aws]
    if return_exceptions:
        return list(await asyncio.gather(*tasks, return_exceptions=True))
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


async def _first_natively(aws: tuple[Any, ...]) -> Any:
    tasks = [asyncio.ensure_future(aw) for aw in aws]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            if not task.done():
                task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    winner = next(task for task in tasks if task in done)
    return winner.result()
