"""Finding programs by dotted path, and migrations for instances of changed code.

An instance row stores the dotted path of its program (``"shop.processes.order_process"``);
a worker imports it again to resume. Which paths may run:

* ``DURABLE['PROGRAMS'] = None`` (the default): only programs the code declared
  durable: a :class:`durable.DurableProgram` made by :func:`durable.make_durable`
  (decorator, or ``process = make_durable(_process)`` at module level), or a
  program passed to :func:`register`. Any other importable callable, a plain
  ``async def`` included, is refused with :class:`UnknownProgram`.
* a list of dotted paths (or prefixes ending in ``"."``): exactly those, and a
  listed plain ``async def`` is made durable when it is first used.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Coroutine
from typing import Any, ParamSpec, TypeVar, overload

from django.utils.module_loading import import_string

from durable import DurableProgram, FunctionCall, declared_program, make_durable

from .conf import durable_settings
from .exceptions import UnknownProgram

#: (path, whether PROGRAMS was set) -> resolved program (a listed plain async def is only valid while listed).
_cache: dict[tuple[str, bool], DurableProgram[..., Any]] = {}
#: dotted path -> program declared with register() (allowed with PROGRAMS=None).
_registered: dict[str, DurableProgram[..., Any]] = {}

P = ParamSpec("P")
R = TypeVar("R")
#: A migration hook: adapts a paused frame whose step layout changed; True when it can resume.
Migration = Callable[[FunctionCall], bool]
M = TypeVar("M", bound=Migration)
#: (program path, program version or None) -> migration functions, tried in order.
_migrations: dict[tuple[str, str | None], list[Callable[[FunctionCall], bool]]] = {}


def path_of(program: DurableProgram[..., Any] | Callable[..., Any] | str) -> str:
    """The dotted path under which ``program`` is stored and imported again."""
    if isinstance(program, str):
        return program
    fn = program.fn if isinstance(program, DurableProgram) else program
    qualname = getattr(fn, "__qualname__", "")
    if "<locals>" in qualname or not getattr(fn, "__module__", None):
        raise UnknownProgram(
            f"{qualname or program!r} is not defined at module level; a worker could not import it again. "
            "Define durable programs at module level.")
    return f"{fn.__module__}.{qualname}"


@overload
def register(program: DurableProgram[P, R]) -> DurableProgram[P, R]: ...


@overload
def register(program: Callable[P, Coroutine[Any, Any, R]]) -> DurableProgram[P, R]: ...


def register(program: DurableProgram[P, R] | Callable[P, Coroutine[Any, Any, R]]) -> DurableProgram[P, R]:
    """Declare ``program`` (a :class:`DurableProgram` or an ``async def``) as startable; returns the program.

    For code that builds its programs without :func:`durable.make_durable` at
    module level. The program must still be importable by its dotted path (a
    worker imports it again), and it must be registered in every process
    (do it at import time of a module the app loads, e.g. its
    ``durable_programs.py``). Usable as a decorator.
    """
    prog: DurableProgram[P, R]
    if isinstance(program, DurableProgram):
        prog = program
    else:
        if not inspect.iscoroutinefunction(program):
            raise TypeError(f"register() needs an async def or a make_durable() program, got {program!r}")
        declared = declared_program(program)
        prog = declared if declared is not None else make_durable(program)
    path = path_of(prog)
    _registered[path] = prog
    _cache.pop((path, False), None)
    _cache.pop((path, True), None)
    return prog


def allowed(path: str) -> bool:
    """True if ``path`` passes ``DURABLE['PROGRAMS']`` (with the default None, every path does; :func:`resolve`
    then accepts only declared programs)."""
    allow = durable_settings.PROGRAMS
    if allow is None:
        return True
    return any(path == a or (a.endswith(".") and path.startswith(a)) for a in allow)


def resolve(path: str) -> DurableProgram[..., Any]:
    """Import the program stored under ``path``; raise :class:`UnknownProgram` with the reason."""
    if not isinstance(path, str) or not path:
        raise UnknownProgram(f"program path must be a non-empty dotted path, got {path!r}")
    listed = durable_settings.PROGRAMS is not None
    if not allowed(path):
        raise UnknownProgram(f"program {path!r} is not in DURABLE['PROGRAMS']")
    hit = _cache.get((path, listed))
    if hit is not None:
        return hit
    program = _registered.get(path)
    if program is None:
        try:
            obj = import_string(path)
        except ImportError as exc:
            raise UnknownProgram(f"cannot import durable program {path!r}: {exc}") from exc
        if isinstance(obj, DurableProgram):
            program = obj
        elif inspect.iscoroutinefunction(obj):
            program = declared_program(obj)
            if program is None and listed:  # allowed by the list only: not declared for later
                program = DurableProgram(obj, declare=False)
            if program is None:
                raise UnknownProgram(
                    f"{path!r} is a plain async def, not a declared durable program: decorate it with "
                    "@make_durable, call durable_django.register() on it, or list it in DURABLE['PROGRAMS']")
        else:
            raise UnknownProgram(f"{path!r} is a {type(obj).__name__}, not a make_durable() program"
                                 + ("" if listed else " (only declared durable programs may run; see "
                                                      "DURABLE['PROGRAMS'])"))
    _cache[(path, listed)] = program
    return program


def program_version(program: DurableProgram[..., Any]) -> str:
    """The version declared with ``make_durable(..., version=...)``, or "" (what migrations are keyed by)."""
    return str(program.version) if getattr(program, "version", None) is not None else ""


@overload
def register_migration(program: DurableProgram[..., Any] | str, func: M, *, from_version: str | None = None) -> M: ...


@overload
def register_migration(program: DurableProgram[..., Any] | str, func: None = None, *,
                       from_version: str | None = None) -> Callable[[M], M]: ...


def register_migration(program: DurableProgram[..., Any] | str, func: M | None = None, *,
                       from_version: str | None = None) -> M | Callable[[M], M]:
    """Register ``func(frame) -> bool`` to adapt paused frames of ``program`` whose step layout changed.

    The core calls it for each frame that cannot resume as is (see
    ``durable.DurableRuntime(migrate=...)``); it may move ``frame.pc`` and edit
    ``frame.locals`` and returns True when the frame can now resume.
    ``from_version`` restricts it to instances started under that
    ``make_durable(version=...)``. Usable as a decorator.
    """
    key = (path_of(program), from_version)

    def add(f: M) -> M:
        _migrations.setdefault(key, []).append(f)
        return f

    return add(func) if func is not None else add


def migrator_for(path: str, version: str, program: DurableProgram[..., Any]) -> Migration | None:
    """The ``migrate`` hook for an instance of ``path`` started under ``version``, or None."""
    funcs = [*_migrations.get((path, version or None), ()), *_migrations.get((path, None), ())]
    if program.migrate is not None:
        funcs.append(program.migrate)
    if not funcs:
        return None

    def migrate(frame: FunctionCall) -> bool:
        return any(f(frame) for f in funcs)

    return migrate
