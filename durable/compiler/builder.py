"""The blocks under construction, for the lowering (``lower.py``).

A :class:`Block` is a list of statements plus how it ends: its :data:`Exit`
values (typed: :class:`Jump`, :class:`Branch`, :class:`Suspend`,
:class:`Return`, :class:`Dispatch`, :class:`FinallyExit`, :class:`ChunkEnd`).
Jump targets are :class:`Label` objects until the block they name exists.
The assembler turns blocks into :class:`~durable.blocks.CodeBlock` and the
exits into the layout fingerprint.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from typing import ClassVar, NamedTuple

from ..blocks import LOCAL_PREFIX
from .syntax import mk_const, mk_return


class Label:
    """A block to be; ``pc`` is set when the block is started."""

    __slots__ = ("pc",)

    def __init__(self) -> None:
        self.pc: int | None = None


# The exits of a block. ``TAG`` and the order of ``targets()`` go into the layout fingerprint saved
# with every frame (see ``assemble.layout``): they never change.

@dataclass(frozen=True)
class Jump:
    """Unconditional jump (also ``break``/``continue``, and a block ending where the next begins)."""

    target: Label
    TAG: ClassVar[str] = "J"

    def targets(self) -> tuple[Label, ...]:
        return (self.target,)


@dataclass(frozen=True)
class Branch:
    """Conditional jump: ``if``, loop tests, short-circuit operators (a ``for`` loop's exhaustion test
    names only the exit target)."""

    labels: tuple[Label, ...]
    TAG: ClassVar[str] = "B"

    def targets(self) -> tuple[Label, ...]:
        return self.labels


@dataclass(frozen=True)
class Suspend:
    """The block ends at an await; execution goes on at ``resume`` with its value."""

    resume: Label
    TAG: ClassVar[str] = "S"

    def targets(self) -> tuple[Label, ...]:
        return (self.resume,)


@dataclass(frozen=True)
class Return:
    """``return`` (possibly routed through a lowered ``finally``)."""

    TAG: ClassVar[str] = "R"

    def targets(self) -> tuple[Label, ...]:
        return ()


@dataclass(frozen=True)
class Dispatch:
    """The dispatch of a lowered ``try``: to one of its ``except`` clauses, or re-raise."""

    handlers: tuple[Label, ...]
    TAG: ClassVar[str] = "D"

    def targets(self) -> tuple[Label, ...]:
        return self.handlers


@dataclass(frozen=True)
class FinallyExit:
    """The end of a lowered ``finally``: on by its completion record (to ``end`` when normal)."""

    end: Label
    TAG: ClassVar[str] = "F"

    def targets(self) -> tuple[Label, ...]:
        return (self.end,)


@dataclass(frozen=True)
class ChunkEnd:
    """The end of an appended code chunk (the block returns ``(NEXT,)``)."""

    TAG: ClassVar[str] = "N"

    def targets(self) -> tuple[Label, ...]:
        return ()


Exit = Jump | Branch | Suspend | Return | Dispatch | FinallyExit | ChunkEnd


class BlockHandler(NamedTuple):
    """A :class:`~durable.blocks.Handler` whose target block may not exist yet."""

    kind: str
    label: Label
    var: str


class Block:
    """One block being built."""

    __slots__ = ("index", "stmts", "handler", "handling", "pending", "exits", "lineno", "closed")

    def __init__(self, index: int, handler: BlockHandler | None, lineno: int) -> None:
        self.index = index
        self.stmts: list[ast.stmt] = []
        self.handler = handler
        self.handling: str | None = None  # the handled-exception variable, in a lowered except body
        self.pending: str | None = None   # the completion variable, in a lowered finally body
        self.exits: list[Exit] = []
        self.lineno = lineno
        self.closed = False


class Temps:
    """Names of compiler temporaries, numbered in the order the lowering asks for them.

    The names are saved with paused frames (the value an await delivers, loop
    iterators, completion records): the numbering must stay as it is.
    """

    def __init__(self) -> None:
        self.n = 0

    def new(self, kind: str = "t") -> str:
        self.n += 1
        return f"{LOCAL_PREFIX}{kind}{self.n}"


@dataclass
class Loop:
    """A lowered loop: where ``break`` and ``continue`` go, and how many ``finally`` enclose it."""

    brk: Label
    cont: Label
    depth: int


@dataclass
class Finally:
    """A lowered ``finally`` being protected: its block, its completion variable, its nesting depth."""

    label: Label
    comp: str
    depth: int


class BlockBuilder:
    """Appends statements to the current block, closes blocks with their exits, starts new ones."""

    def __init__(self, filename: str, temps: Temps, base: int = 0) -> None:
        self.filename = filename
        self.base = base
        self.temps = temps
        self.blocks: list[Block] = []
        self.cur: Block | None = None
        self.handlers: list[BlockHandler] = []
        self.exc_vars: list[str] = []     # handled-exception variables, for bare ``raise``
        self.pending: list[str] = []      # completion variables of the finally bodies being lowered
        self.lineno = 1

    def new_block(self, label: Label | None = None) -> Block:
        b = Block(self.base + len(self.blocks), self.handlers[-1] if self.handlers else None, self.lineno)
        if self.exc_vars:
            b.handling = self.exc_vars[-1]
        if self.pending:
            b.pending = self.pending[-1]
        self.blocks.append(b)
        self.cur = b
        if label is not None:
            label.pc = b.index
        return b

    def block(self) -> Block:
        """The open block (a new one if the last was closed)."""
        if self.cur is None or self.cur.closed:
            return self.new_block()
        return self.cur

    def is_open(self) -> bool:
        return self.cur is not None and not self.cur.closed

    def emit(self, *stmts: ast.stmt) -> None:
        b = self.block()
        for s in stmts:
            if not hasattr(s, "lineno"):
                s.lineno = self.lineno
            b.stmts.append(s)

    def close(self, stmt: ast.stmt, exit_: Exit) -> None:
        self.emit(stmt)
        self.end_block(exit_)

    def end_block(self, exit_: Exit) -> None:
        """Close the current block (its last statement already emitted) with ``exit_``."""
        self.add_exit(exit_)
        self.seal()

    def add_exit(self, exit_: Exit) -> None:
        """Record a way out of the current block (a statement emitted into it jumps or returns)."""
        self.block().exits.append(exit_)

    def seal(self) -> None:
        """Close the current block: its last statement left it (``raise``, or jumps recorded as exits)."""
        self.block().closed = True

    def close_many(self, stmts: list[ast.stmt], exit_: Exit) -> None:
        self.emit(*stmts[:-1])
        self.close(stmts[-1], exit_)

    def jump(self, label: Label) -> None:
        self.close(mk_return(mk_const(label)), Jump(label))

    def start(self, label: Label) -> None:
        """Start the block ``label`` names, jumping there from the open block."""
        if self.is_open():
            self.jump(label)
        self.new_block(label)

    def start_jump(self, label: Label) -> None:
        """Jump to ``label`` from the open block, if any."""
        if self.is_open():
            self.jump(label)
