"""Pass 3, await normalisation: expressions that contain an ``await``.

Takes one expression of a statement being lowered. Produces an expression
with no ``await`` left in it, valid in the block that is open afterwards,
having emitted what must run first: every ``await`` ends the block (a
:class:`~durable.compiler.builder.Suspend` exit returning ``(CALL, ...)`` or
``(AWAIT, ...)``) and its value arrives in a temporary of the next block.

Python's evaluation order is kept: what is evaluated before an ``await`` and
used after it is saved in a temporary ("spilled"), unless reading it later
gives the same value (see :func:`is_simple`). ``and``/``or``, chained
comparisons and conditional expressions that contain an ``await`` become
branches between blocks, so short-circuiting still skips the ``await``.

This pass runs inside the lowering (``lower.py`` asks it for each expression
in turn) rather than before it: the lowering numbers temporaries in one
sequence shared with loops and ``try``, and those names are saved with
paused frames; and a ``while`` test must be evaluated again in the loop's
own block on every iteration.
"""

from __future__ import annotations

import ast
from collections.abc import Callable

from ..exceptions import CompileError
from .builder import BlockBuilder, Branch, Label, Suspend, Temps
from .syntax import helper, mk_const, mk_name, mk_return, mk_tuple
from .validate import Analysis

#: (get, put) of one child expression
Slot = tuple[Callable[[], ast.expr], Callable[[ast.expr], None]]


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


class AwaitLowering(BlockBuilder):
    """The expression half of the lowering (the statement half, :class:`~durable.compiler.lower.Lowerer`,
    derives from it and provides :meth:`stmt`)."""

    def __init__(self, filename: str, temps: Temps, base: int = 0) -> None:
        super().__init__(filename, temps, base)
        self.an = Analysis()
        self.resume_points: dict[Label, tuple[int, str, str | None]] = {}
        self.resume_nodes: dict[Label, ast.Await | ast.Raise] = {}

    def stmt(self, s: ast.stmt) -> None:
        raise NotImplementedError

    def spill(self, e: ast.expr) -> ast.Name:
        """Save the value of ``e`` in a new temporary."""
        t = self.temps.new()
        self.emit(ast.Assign([mk_name(t, ast.Store())], e))
        return mk_name(t)

    def expr(self, e: ast.expr) -> ast.expr:
        """Lower ``e``; returns an expression valid in the current block."""
        if not self.an.suspends(e):
            return e
        if isinstance(e, ast.Await):
            return mk_name(self.suspend(e, keep=True) or "")
        if isinstance(e, ast.BoolOp):
            return self.boolop(e)
        if isinstance(e, ast.IfExp):
            t = self.temps.new()
            self.stmt(ast.copy_location(ast.If(e.test, [ast.Assign([mk_name(t, ast.Store())], e.body)],
                                               [ast.Assign([mk_name(t, ast.Store())], e.orelse)]), e))
            return mk_name(t)
        if isinstance(e, ast.Compare) and len(e.ops) > 1:
            return self.chain(e)
        if isinstance(e, ast.NamedExpr):
            v = self.expr(e.value)
            self.emit(ast.Assign([mk_name(e.target.id, ast.Store())], v))
            return mk_name(e.target.id)
        return self.children(e)

    def opt_expr(self, e: ast.expr | None) -> ast.expr | None:
        return None if e is None else self.expr(e)

    def children(self, e: ast.expr) -> ast.expr:
        """Lower the children of ``e`` in evaluation order, up to the last that suspends; ``e`` is updated."""
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

    def boolop(self, e: ast.BoolOp) -> ast.expr:
        t = self.temps.new()
        end = Label()
        first, rest = e.values[0], e.values[1:]
        self.emit(ast.Assign([mk_name(t, ast.Store())], self.expr(first)))
        for v in rest:
            nxt = Label()
            test = mk_name(t) if isinstance(e.op, ast.And) else ast.UnaryOp(ast.Not(), mk_name(t))
            self.close(ast.If(test, [mk_return(mk_const(nxt))], [mk_return(mk_const(end))]), Branch((nxt, end)))
            self.new_block(nxt)
            self.emit(ast.Assign([mk_name(t, ast.Store())], self.expr(v)))
        self.start(end)
        return mk_name(t)

    def chain(self, e: ast.Compare) -> ast.expr:
        t = self.temps.new()
        end = Label()
        left = self.expr(e.left)
        for i, (op, comp) in enumerate(zip(e.ops, e.comparators)):
            if not is_simple(left):
                left = self.spill(left)
            right = self.expr(comp)
            if i < len(e.ops) - 1 and not isinstance(right, ast.Constant):
                right = self.spill(right)
            self.emit(ast.Assign([mk_name(t, ast.Store())], ast.Compare(left, [op], [right])))
            if i < len(e.ops) - 1:
                nxt = Label()
                self.close(ast.If(mk_name(t), [mk_return(mk_const(nxt))], [mk_return(mk_const(end))]),
                           Branch((nxt, end)))
                self.new_block(nxt)
                left = right
        self.start(end)
        return mk_name(t)

    def suspend(self, node: ast.Await | ast.Raise, keep: bool) -> str | None:
        """End the block at an await; the next block starts with its result, in the temporary returned
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
        self.resume_points[resume] = (getattr(node, "lineno", self.lineno), text[:120], tmp)
        self.resume_nodes[resume] = node
        self.close(mk_return(term), Suspend(resume))
        self.new_block(resume)
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
