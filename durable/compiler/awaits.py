"""Pass 3, await normalisation: expressions that contain an ``await``.

Takes one expression of a statement being lowered (or the ``await`` /
``raise PauseForEventException(...)`` that is the whole statement).
Produces a list of :data:`Step`: straight-line code in which every
``await`` stands alone (:class:`Suspension`), with the branches that
short-circuiting needs (:class:`CondJump`, :class:`Begin`, :class:`Join`),
and the expression that is left to use, with no ``await`` in it. It knows
nothing of blocks: the lowering (``lower.py``) turns the steps into blocks,
ending one at each :class:`Suspension`.

Python's evaluation order is kept: what is evaluated before an ``await`` and
used after it is saved in a temporary ("spilled"), unless reading it later
gives the same value (see :func:`is_simple`). ``and``/``or``, chained
comparisons and conditional expressions that contain an ``await`` become
branches, so short-circuiting still skips the ``await``.

The lowering asks for one expression at a time, when it reaches it, rather
than normalising the whole body first: temporaries are numbered in one
sequence shared with loops and ``try`` (those names are saved with paused
frames), and a ``while`` test must be evaluated again in the loop's own
block on every iteration.
"""

from __future__ import annotations

import ast
from collections.abc import Callable
from dataclasses import dataclass

from ..exceptions import CompileError
from .builder import Label, Temps
from .syntax import helper, mk_const, mk_name, mk_tuple
from .validate import Analysis

#: (get, put) of one child expression
Slot = tuple[Callable[[], ast.expr], Callable[[ast.expr], None]]


@dataclass(frozen=True)
class Emit:
    """Run a statement (no ``await`` in it)."""

    stmt: ast.stmt


@dataclass(frozen=True)
class Suspension:
    """Await: the block returns ``term`` (``(CALL, ...)`` or ``(AWAIT, ...)``); execution goes on at
    ``resume``, the awaited value in ``tmp`` (None: not used)."""

    node: ast.Await | ast.Raise
    term: ast.Tuple
    resume: Label
    tmp: str | None
    text: str


@dataclass(frozen=True)
class CondJump:
    """Go on at ``if_true`` or ``if_false`` by ``test``."""

    test: ast.expr
    if_true: Label
    if_false: Label


@dataclass(frozen=True)
class Begin:
    """Code from here on is at ``label``."""

    label: Label


@dataclass(frozen=True)
class Goto:
    """Go on at ``label`` (which begins later) from here, if here is reachable."""

    label: Label


@dataclass(frozen=True)
class Join:
    """Go on at ``label`` from here, if reachable, and begin ``label``."""

    label: Label


@dataclass(frozen=True)
class SetLine:
    """Code from here on belongs to source line ``lineno``."""

    lineno: int


Step = Emit | Suspension | CondJump | Begin | Goto | Join | SetLine


def is_simple(e: ast.expr) -> bool:
    """Expressions left in place (evaluated after a later await) instead of saved.

    Frame locals cannot change during an await of this frame; shared (cell)
    variables can, so their reads are saved. Attribute lookups and global
    names are read after the await (saving them would pickle bound methods
    and modules).
    """
    if isinstance(e, ast.Attribute) and e.attr == "cell_contents" and isinstance(e.value, ast.Name):
        return False
    while isinstance(e, ast.Attribute):
        e = e.value
    return isinstance(e, (ast.Name, ast.Constant))


class AwaitNormaliser:
    """Normalises expressions; each method adds to the steps :meth:`take` hands over."""

    def __init__(self, temps: Temps, an: Analysis) -> None:
        self.temps = temps
        self.an = an
        self._steps: list[Step] = []

    def take(self) -> list[Step]:
        """The steps produced since the last call."""
        steps, self._steps = self._steps, []
        return steps

    def _emit(self, stmt: ast.stmt) -> None:
        self._steps.append(Emit(stmt))

    def spill(self, e: ast.expr) -> ast.Name:
        """Save the value of ``e`` in a new temporary."""
        t = self.temps.new()
        self._emit(ast.Assign([mk_name(t, ast.Store())], e))
        return mk_name(t)

    def expr(self, e: ast.expr) -> ast.expr:
        """Normalise ``e``; returns what is left to evaluate after the steps."""
        if not self.an.suspends(e):
            return e
        if isinstance(e, ast.Await):
            tmp = self.suspend(e, keep=True)
            assert tmp is not None
            return mk_name(tmp)
        if isinstance(e, ast.BoolOp):
            return self._boolop(e)
        if isinstance(e, ast.IfExp):
            return self._ifexp(e)
        if isinstance(e, ast.Compare) and len(e.ops) > 1:
            return self._chain(e)
        if isinstance(e, ast.NamedExpr):
            v = self.expr(e.value)
            self._emit(ast.Assign([mk_name(e.target.id, ast.Store())], v))
            return mk_name(e.target.id)
        return self.children(e)

    def children(self, e: ast.expr) -> ast.expr:
        """Normalise the children of ``e`` in evaluation order, up to the last that suspends; ``e`` is updated."""
        slots = ordered_slots(e)
        last = max((i for i, (get, _) in enumerate(slots) if self.an.suspends(get())), default=-1)
        for i, (get, put) in enumerate(slots):
            child = get()
            if i < last:
                new = self.expr(child)
                if not is_simple(new):
                    new = self.spill(new)
                put(new)
            elif i == last:
                put(self.expr(child))
            else:
                break
        return e

    def _boolop(self, e: ast.BoolOp) -> ast.expr:
        t = self.temps.new()
        end = Label()
        first, rest = e.values[0], e.values[1:]
        self._emit(ast.Assign([mk_name(t, ast.Store())], self.expr(first)))
        for v in rest:
            nxt = Label()
            test = mk_name(t) if isinstance(e.op, ast.And) else ast.UnaryOp(ast.Not(), mk_name(t))
            self._steps += [CondJump(test, nxt, end), Begin(nxt)]
            self._emit(ast.Assign([mk_name(t, ast.Store())], self.expr(v)))
        self._steps.append(Join(end))
        return mk_name(t)

    def _ifexp(self, e: ast.IfExp) -> ast.expr:
        """As the statement ``if test: t = body`` / ``else: t = orelse`` on the line of ``e`` is lowered."""
        t = self.temps.new()
        self._steps.append(SetLine(e.lineno))
        test = self.expr(e.test)
        then, other, end = Label(), Label(), Label()
        self._steps += [CondJump(test, then, other), Begin(then)]
        self._assign(t, e.body)
        self._steps += [Goto(end), Begin(other)]
        self._assign(t, e.orelse)
        self._steps.append(Join(end))
        return mk_name(t)

    def _assign(self, t: str, value: ast.expr) -> None:
        self._emit(ast.Assign([mk_name(t, ast.Store())], self.expr(value)))

    def _chain(self, e: ast.Compare) -> ast.expr:
        t = self.temps.new()
        end = Label()
        left = self.expr(e.left)
        for i, (op, comp) in enumerate(zip(e.ops, e.comparators)):
            if not is_simple(left):
                left = self.spill(left)
            right = self.expr(comp)
            if i < len(e.ops) - 1 and not isinstance(right, ast.Constant):
                right = self.spill(right)
            self._emit(ast.Assign([mk_name(t, ast.Store())], ast.Compare(left, [op], [right])))
            if i < len(e.ops) - 1:
                nxt = Label()
                self._steps += [CondJump(mk_name(t), nxt, end), Begin(nxt)]
                left = right
        self._steps.append(Join(end))
        return mk_name(t)

    def suspend(self, node: ast.Await | ast.Raise, keep: bool) -> str | None:
        """An await (or a pause) as a :class:`Suspension`; returns the temporary that receives its value
        when ``keep``."""
        value: ast.expr
        if isinstance(node, ast.Await):
            value = node.value
        else:  # raise PauseForEventException(...)
            assert node.exc is not None
            value = ast.Call(helper("pause"), [node.exc], [])
        text = ast.unparse(node)
        resume = Label()
        tmp = self.temps.new() if keep else None
        if isinstance(value, ast.Call):
            self.children(value)
            args = ast.Tuple(list(value.args), ast.Load())
            kw = ast.Dict([None if k.arg is None else mk_const(k.arg) for k in value.keywords],
                          [k.value for k in value.keywords])
            term = mk_tuple(helper("CALL"), value.func, args, kw, mk_const(resume), mk_const(tmp))
        else:
            value = self.expr(value)
            term = mk_tuple(helper("AWAIT"), value, mk_const(resume), mk_const(tmp))
        self._steps.append(Suspension(node, term, resume, tmp, text[:120]))
        return tmp


def ordered_slots(e: ast.expr) -> list[Slot]:
    """Child expressions of ``e`` in Python's evaluation order, as (get, put)."""
    slots: list[Slot] = []

    def field_slot(obj: ast.AST, name: str) -> None:
        slots.append((lambda: getattr(obj, name), lambda v: setattr(obj, name, v)))

    def list_slot(obj: ast.AST, name: str, i: int) -> None:
        lst = getattr(obj, name)
        slots.append((lambda: lst[i], lambda v: lst.__setitem__(i, v)))

    def each(obj: ast.AST, name: str) -> None:
        for i, item in enumerate(getattr(obj, name)):
            if isinstance(item, ast.Starred):
                field_slot(item, "value")
            else:
                list_slot(obj, name, i)

    if isinstance(e, ast.Call):
        field_slot(e, "func")
        each(e, "args")
        for k in e.keywords:
            field_slot(k, "value")
    elif isinstance(e, ast.Starred):
        field_slot(e, "value")
    elif isinstance(e, ast.BinOp):
        field_slot(e, "left")
        field_slot(e, "right")
    elif isinstance(e, ast.UnaryOp):
        field_slot(e, "operand")
    elif isinstance(e, ast.Attribute):
        field_slot(e, "value")
    elif isinstance(e, ast.Subscript):
        field_slot(e, "value")
        field_slot(e, "slice")
    elif isinstance(e, ast.Slice):
        for f in ("lower", "upper", "step"):
            if getattr(e, f) is not None:
                field_slot(e, f)
    elif isinstance(e, (ast.Tuple, ast.List, ast.Set)):
        each(e, "elts")
    elif isinstance(e, ast.Dict):
        for i in range(len(e.keys)):
            if e.keys[i] is not None:
                list_slot(e, "keys", i)
            list_slot(e, "values", i)
    elif isinstance(e, ast.JoinedStr):
        each(e, "values")
    elif isinstance(e, ast.FormattedValue):
        field_slot(e, "value")
        if e.format_spec is not None:
            field_slot(e, "format_spec")
    elif isinstance(e, ast.Compare):
        field_slot(e, "left")
        each(e, "comparators")
    elif isinstance(e, ast.Await):
        field_slot(e, "value")
    else:
        raise CompileError(f"await inside {type(e).__name__} is not supported", None, getattr(e, "lineno", None))
    return slots
