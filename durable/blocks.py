"""The block protocol: what the compiler produces and the runtime runs.

A compiled ``async def`` is a tuple of :class:`CodeBlock`. Each block is a
plain Python function ``block(L)`` over the frame's locals dict ``L``; it
returns the next step:

* an ``int``: jump to that block;
* ``(CALL, func, args, kwargs, resume_pc, temp)``: await ``func(*args, **kwargs)``;
* ``(AWAIT, awaitable, resume_pc, temp)``: await any other awaitable;
* ``(RETURN, value)``: the function returns;
* ``(NEXT,)``: end of an appended code chunk.

The resumed block finds the awaited value in ``L[temp]`` (``temp`` is None
when the value is not used). An exception raised in a block goes to its
:class:`Handler`: an ``except`` dispatch gets the exception in its variable, a
``finally`` gets the completion record ``(THROW, exc)``.

These values are saved in checkpoints (the completion records, the names of
compiler temporaries) and baked into the compiled blocks: they never change.
"""

from __future__ import annotations

import textwrap
import types
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

#: What a block returns (first item of its result tuple).
CALL, AWAIT, RETURN, NEXT = 0, 1, 2, 3

#: Completion kinds of a lowered ``finally`` (first item of its completion record): the protected
#: code ended normally, raised ``(THROW, exc)``, returned ``(RETURNING, value)``, or left by
#: ``break``/``continue`` ``(JUMPING, pc, loop depth)``.
NORMAL, THROW, RETURNING, JUMPING = 0, 1, 2, 3

#: Handler kinds of :class:`Handler`.
EXCEPT, FINALLY = "except", "finally"

#: Prefix of every name the compiler adds to a frame's locals (temporaries, iterators of loops
#: that span awaits, completion records): not the user's variables.
LOCAL_PREFIX = "_dur__"


class Handler(NamedTuple):
    """Where an exception raised in a block goes: the block ``pc``, with the exception (``EXCEPT``)
    or the completion record ``(THROW, exc)`` (``FINALLY``) stored in the local ``var``."""

    kind: str
    pc: int
    var: str


class Cell:
    """A variable shared with nested functions, kept in the frame.

    Plain picklable (unlike ``types.CellType``), so closures survive a
    checkpoint and still see later assignments of the enclosing function.
    """

    __slots__ = ("cell_contents", "name")

    def __init__(self, name: str, *value: Any) -> None:
        self.name = name
        if value:
            self.cell_contents = value[0]

    def __getattr__(self, attr: str) -> Any:
        if attr == "cell_contents":
            raise NameError(f"cannot access free variable {self.name!r} where it is not associated with a value")
        raise AttributeError(attr)

    def __reduce__(self) -> tuple[type[Cell], tuple[Any, ...]]:
        try:
            return (Cell, (self.name, self.cell_contents))
        except NameError:
            return (Cell, (self.name,))

    def __repr__(self) -> str:
        try:
            return f"<Cell {self.name}={self.cell_contents!r}>"
        except NameError:
            return f"<Cell {self.name} (empty)>"


@dataclass
class CodeBlock:
    """One straight-line step of a compiled function.

    ``fn(L)`` runs the block over the locals dict ``L``. ``handler`` says where
    an exception raised in it goes: ``None`` (out of the function) or a
    :class:`Handler`.
    """

    fn: Any
    handler: Handler | None = None
    lineno: int = 0
    index: int = 0
    pending: str | None = None
    #: The block only copies names or constants and returns one (``return x``, the second half of
    #: ``return await f()``): it runs no code with effects, so the runtime may save the checkpoint
    #: before it together with the one after it.
    tail: bool = False

    @classmethod
    def from_source(cls, source: str, filename: str = "<durable-chunk>") -> CodeChunk:
        """Make a chunk of code for :meth:`FunctionCall.append_code_block`."""
        return CodeChunk(textwrap.dedent(source), filename)


@dataclass(frozen=True)
class CodeChunk:
    """Source text to append to a running call; compiled on first use."""

    source: str
    filename: str = "<durable-chunk>"


@dataclass
class CompiledFunction:
    """The blocks and metadata of one compiled ``async def``."""

    name: str
    qualname: str
    filename: str
    firstlineno: int
    blocks: tuple[CodeBlock, ...]
    cellvars: tuple[str, ...]
    freevars: tuple[str, ...]
    argnames: tuple[str, ...]
    bind_code: types.CodeType
    source_hash: str
    layout_hash: str
    #: pc -> (line, the await's source as Python prints it, the temp that receives its value)
    resume_points: dict[int, tuple[int, str, str | None]] = field(default_factory=dict)
    #: pc -> (the await's own source text, the source lines it spans), as written in the file (for move_to)
    resume_sources: dict[int, tuple[str, str]] = field(default_factory=dict)

    def bind(self, func: Any, args: tuple, kwargs: dict) -> dict[str, Any]:
        """Bind call arguments like Python would; return the initial locals."""
        binder = types.FunctionType(self.bind_code, {}, self.name, getattr(func, "__defaults__", None))
        binder.__kwdefaults__ = getattr(func, "__kwdefaults__", None)
        L: dict[str, Any] = binder(*args, **kwargs)
        for name in self.cellvars:
            L[name] = Cell(name, L[name]) if name in L else Cell(name)
        closure = getattr(func, "__closure__", None)
        if closure:
            L.update(free_cells(self.freevars, closure))
        return L

    def describe(self, pc: int) -> str:
        """Human-readable position of a resume point, for status displays."""
        point = self.resume_points.get(pc)
        if point is None:
            return f"{self.qualname} block {pc}"
        return f"{self.qualname} line {point[0]}: {point[1]}"


def free_cells(names: tuple[str, ...], closure: tuple[types.CellType, ...]) -> Iterator[tuple[str, Any]]:
    """(name, cell) pairs for a function's free variables.

    A variable the enclosing durable frame shares is a :class:`Cell` inside the
    closure cell; the frame then uses that same ``Cell``.
    """
    for name, cell in zip(names, closure):
        try:
            content = cell.cell_contents
        except ValueError:
            content = None
        yield name, content if content.__class__ is Cell else cell


def origin(func: Any) -> tuple[str, int]:
    """(file, first line) of a function's source.

    Async functions defined inside durable code are tagged with it, because a
    copy restored from a checkpoint by value no longer names its file.
    """
    tagged: tuple[str, int] | None = getattr(func, "__durable_origin__", None)
    if tagged is not None:
        return tagged
    return func.__code__.co_filename, func.__code__.co_firstlineno
