"""Pass 4, lowering to blocks: statements.

Takes the body the scope pass produced. Produces the list of
:class:`~durable.compiler.builder.Block` (statements plus typed exits), the
resume points, and the temporaries that live across blocks.

A statement without a suspension point is kept as written (see
:class:`Verbatim`), so it runs at native speed. One with a suspension point
is taken apart: each of its expressions goes through the await
normalisation (``awaits.py``), whose steps :meth:`Lowerer.run` turns into
blocks, and control flow that spans blocks becomes jumps between them. A
``while`` whose body (or test) awaits is lowered by
:meth:`Lowerer.s_While`: a test block that branches to the body or past the
loop, a body that jumps back to the test; ``break``/``continue`` are jumps
to the loop's labels. ``for`` keeps its iterator in the frame. ``try``
becomes a dispatch block for its ``except`` clauses and a ``finally`` block
driven by a completion record (see :data:`~durable.blocks.THROW`), so a
``finally`` runs once also on ``return``/``break``.
"""

from __future__ import annotations

import ast
import operator
from typing import TypeVar

from ..blocks import EXCEPT, FINALLY, JUMPING, NORMAL, RETURNING, THROW
from .awaits import AwaitNormaliser, Begin, CondJump, Emit, Goto, Join, SetLine, Step, Suspension, is_simple
from .builder import (
    BlockBuilder,
    BlockHandler,
    Branch,
    Dispatch,
    Finally,
    FinallyExit,
    Jump,
    Label,
    Loop,
    Return,
    Suspend,
    Temps,
)
from .syntax import LOCALS, helper, is_pause_raise, mk_const, mk_name, mk_reraise, mk_return, mk_tuple
from .validate import Analysis, compile_error

T = TypeVar("T")

_IOPS = {
    ast.Add: operator.iadd, ast.Sub: operator.isub, ast.Mult: operator.imul, ast.MatMult: operator.imatmul,
    ast.Div: operator.itruediv, ast.FloorDiv: operator.ifloordiv, ast.Mod: operator.imod, ast.Pow: operator.ipow,
    ast.LShift: operator.ilshift, ast.RShift: operator.irshift, ast.BitOr: operator.ior, ast.BitXor: operator.ixor,
    ast.BitAnd: operator.iand,
}


def drop_local(name: str) -> ast.Expr:
    """``L.pop(name, None)``: forget a temporary kept in the frame."""
    return ast.Expr(ast.Call(ast.Attribute(mk_name(LOCALS), "pop", ast.Load()), [mk_const(name), mk_const(None)], []))


class Lowerer(BlockBuilder):
    """Turns a function body into a list of blocks (see the module docstring)."""

    def __init__(self, filename: str, temps: Temps, base: int = 0, cells: frozenset[str] = frozenset()) -> None:
        super().__init__(filename, temps, base)
        self.an = Analysis()
        self.norm = AwaitNormaliser(temps, self.an)
        self.resume_points: dict[Label, tuple[int, str, str | None]] = {}
        self.resume_nodes: dict[Label, ast.Await | ast.Raise] = {}
        self.cells = cells
        self.loops: list[Loop] = []
        self.finallies: list[Finally] = []
        #: temporaries that stay in the frame across blocks (loop iterators, caught exceptions)
        self.persistent_temps: set[str] = set()

    # -- expressions: the await normalisation's steps, turned into blocks ---
    def run(self, steps: list[Step]) -> None:
        for step in steps:
            if isinstance(step, Emit):
                self.emit(step.stmt)
            elif isinstance(step, Suspension):
                self.resume_points[step.resume] = (getattr(step.node, "lineno", self.lineno), step.text, step.tmp)
                self.resume_nodes[step.resume] = step.node
                self.close(mk_return(step.term), Suspend(step.resume))
                self.new_block(step.resume)
            elif isinstance(step, CondJump):
                self.close(ast.If(step.test, [mk_return(mk_const(step.if_true))], [mk_return(mk_const(step.if_false))]),
                           Branch((step.if_true, step.if_false)))
            elif isinstance(step, Begin):
                self.new_block(step.label)
            elif isinstance(step, Goto):
                self.start_jump(step.label)
            elif isinstance(step, Join):
                self.start(step.label)
            elif isinstance(step, SetLine):
                self.lineno = step.lineno

    def _done(self, value: T) -> T:
        """``value``, after running the steps the normaliser produced for it."""
        self.run(self.norm.take())
        return value

    def expr(self, e: ast.expr) -> ast.expr:
        """Lower ``e``; returns an expression valid in the current block."""
        return self._done(self.norm.expr(e))

    def opt_expr(self, e: ast.expr | None) -> ast.expr | None:
        return None if e is None else self.expr(e)

    def children(self, e: ast.expr) -> ast.expr:
        return self._done(self.norm.children(e))

    def spill(self, e: ast.expr) -> ast.Name:
        return self._done(self.norm.spill(e))

    def suspend(self, node: ast.Await | ast.Raise) -> None:
        """An await (or a pause) whose value is not used."""
        self._done(self.norm.suspend(node, keep=False))

    # -- routing of return/break/continue through lowered ``finally`` -----
    def route_return(self, value: ast.expr | None) -> list[ast.stmt]:
        value = value if value is not None else mk_const(None)
        if self.finallies:
            f = self.finallies[-1]
            return [ast.Assign([mk_name(f.comp, ast.Store())], mk_tuple(mk_const(RETURNING), value)),
                    mk_return(mk_const(f.label))]
        return [mk_return(mk_tuple(helper("RETURN"), value))]

    def route_jump(self, label: Label, depth: int) -> list[ast.stmt]:
        if len(self.finallies) > depth:
            f = self.finallies[-1]
            return [ast.Assign([mk_name(f.comp, ast.Store())],
                               mk_tuple(mk_const(JUMPING), mk_const(label), mk_const(depth))),
                    mk_return(mk_const(f.label))]
        return [mk_return(mk_const(label))]

    def end_function(self) -> None:
        """Close the last block, if open, by returning None (the end of the body)."""
        if self.is_open():
            self.close_many(self.route_return(None), Return())

    # -- statements -------------------------------------------------------
    def body(self, stmts: list[ast.stmt]) -> None:
        for s in stmts:
            self.stmt(s)

    def stmt(self, s: ast.stmt) -> None:
        self.lineno = getattr(s, "lineno", self.lineno)
        if isinstance(s, (ast.Global, ast.Nonlocal)):
            return
        if not self.an.suspends(s):
            self.emit(*Verbatim(self).rewrite(s))
            return
        method = getattr(self, "s_" + type(s).__name__, None)
        if method is None:
            raise compile_error(f"{type(s).__name__} containing await is not supported", s, self.filename)
        method(s)

    def s_Expr(self, s: ast.Expr) -> None:
        if isinstance(s.value, ast.Await):
            self.suspend(s.value)
        else:
            self.emit(ast.Expr(self.expr(s.value)))

    def s_Assign(self, s: ast.Assign) -> None:
        v = self.expr(s.value)
        if any(self.an.suspends(t) for t in s.targets):
            if not is_simple(v):
                v = self.spill(v)
            for t in s.targets:
                self.emit(ast.Assign([self.children(t)], v))
        else:
            self.emit(ast.Assign(s.targets, v))

    def s_AnnAssign(self, s: ast.AnnAssign) -> None:
        if s.value is None:  # ``a[await k()]: int``
            raise compile_error("an annotation without a value containing await is not supported", s, self.filename)
        self.s_Assign(ast.copy_location(ast.Assign([s.target], s.value), s))

    def s_AugAssign(self, s: ast.AugAssign) -> None:
        t = s.target
        if isinstance(t, ast.Name):
            self.emit(ast.AugAssign(t, s.op, self.expr(s.value)))
            return
        iop = ast.Attribute(helper("operator"), _IOPS[type(s.op)].__name__, ast.Load())
        if isinstance(t, ast.Attribute):
            obj = self.expr(t.value)
            obj = obj if is_simple(obj) else self.spill(obj)
            old = self.spill(ast.Attribute(obj, t.attr, ast.Load()))
            v = self.expr(s.value)
            self.emit(ast.Assign([ast.Attribute(obj, t.attr, ast.Store())], ast.Call(iop, [old, v], [])))
        else:
            assert isinstance(t, ast.Subscript)
            obj = self.expr(t.value)
            obj = obj if is_simple(obj) else self.spill(obj)
            key = self.expr(t.slice)
            key = key if isinstance(key, ast.Constant) else self.spill(key)
            old = self.spill(ast.Subscript(obj, key, ast.Load()))
            v = self.expr(s.value)
            self.emit(ast.Assign([ast.Subscript(obj, key, ast.Store())], ast.Call(iop, [old, v], [])))

    def s_Return(self, s: ast.Return) -> None:
        self.close_many(self.route_return(self.opt_expr(s.value)), Return())

    def s_Raise(self, s: ast.Raise) -> None:
        if is_pause_raise(s):
            self.suspend(s)
            return
        exc = self.opt_expr(s.exc)
        if s.cause is not None and self.an.suspends(s.cause) and exc is not None and not is_simple(exc):
            exc = self.spill(exc)
        cause = self.opt_expr(s.cause)
        self.emit(ast.Raise(exc, cause))

    def s_Assert(self, s: ast.Assert) -> None:
        test = self.expr(s.test)
        end, fail = Label(), Label()
        self.close(ast.If(test, [mk_return(mk_const(end))], [mk_return(mk_const(fail))]), Branch((end, fail)))
        self.new_block(fail)
        self.emit(ast.Raise(ast.Call(mk_name("AssertionError"), [self.expr(s.msg)] if s.msg else [], []), None))
        self.seal()
        self.new_block(end)

    def s_Delete(self, s: ast.Delete) -> None:
        for t in s.targets:
            self.emit(ast.Delete([self.children(t)]))

    def s_If(self, s: ast.If) -> None:
        test = self.expr(s.test)
        then, other, end = Label(), Label(), Label()
        self.close(ast.If(test, [mk_return(mk_const(then))], [mk_return(mk_const(other if s.orelse else end))]),
                   Branch((then, other if s.orelse else end)))
        self.new_block(then)
        self.body(s.body)
        if s.orelse:
            self.start_jump(end)
            self.new_block(other)
            self.body(s.orelse)
        self.start(end)

    def target(self, name: str, ctx: ast.expr_context) -> ast.expr:
        """A variable as an assignment target (shared variables live in cells)."""
        if name in self.cells:
            return ast.Attribute(mk_name(name), "cell_contents", ctx)
        return mk_name(name, ctx)

    def s_While(self, s: ast.While) -> None:
        test_l, body_l, else_l, end = Label(), Label(), Label(), Label()
        self.start(test_l)
        test = self.expr(s.test)
        target = else_l if s.orelse else end
        self.close(ast.If(test, [mk_return(mk_const(body_l))], [mk_return(mk_const(target))]),
                   Branch((body_l, target)))
        self.new_block(body_l)
        self.loops.append(Loop(end, test_l, len(self.finallies)))
        self.body(s.body)
        self.loops.pop()
        self.start_jump(test_l)
        if s.orelse:
            self.new_block(else_l)
            self.body(s.orelse)
        self.start(end)

    def s_For(self, s: ast.For) -> None:
        it = self.temps.new("it")
        self.persistent_temps.add(it)
        next_l, else_l, end = Label(), Label(), Label()
        iterable = self.expr(s.iter)
        self.emit(ast.Assign([mk_name(it, ast.Store())], ast.Call(helper("iter"), [iterable], [])))
        self.start(next_l)
        v = self.temps.new()
        target = else_l if s.orelse else end
        self.emit(ast.Assign([mk_name(v, ast.Store())], ast.Call(helper("next"), [mk_name(it), helper("DONE")], [])))
        self.emit(ast.If(ast.Compare(mk_name(v), [ast.Is()], [helper("DONE")]), [mk_return(mk_const(target))], []))
        self.add_exit(Branch((target,)))
        self.emit(ast.Assign([s.target], mk_name(v)))
        self.loops.append(Loop(end, next_l, len(self.finallies)))
        self.body(s.body)
        self.loops.pop()
        self.start_jump(next_l)
        if s.orelse:
            self.new_block(else_l)
            self.body(s.orelse)
        self.start(end)
        self.emit(drop_local(it))

    def _normal_exit(self, fin: Finally | None, end: Label) -> None:
        if not self.is_open():
            return
        if fin is not None:
            self.emit(ast.Assign([mk_name(fin.comp, ast.Store())], mk_tuple(mk_const(NORMAL))))
            self.jump(fin.label)
        else:
            self.jump(end)

    def s_Try(self, s: ast.Try) -> None:
        body_l, disp_l, else_l, fin_l, end = Label(), Label(), Label(), Label(), Label()
        fin = None
        if s.finalbody:
            fin = Finally(fin_l, self.temps.new("c"), len(self.finallies))
            self.finallies.append(fin)
            self.handlers.append(BlockHandler(FINALLY, fin_l, fin.comp))
        exc_t = self.temps.new("e")
        if s.handlers:
            self.handlers.append(BlockHandler(EXCEPT, disp_l, exc_t))
        self.start(body_l)
        self.body(s.body)
        if s.orelse:
            self.start_jump(else_l)
        else:
            self._normal_exit(fin, end)
        if s.handlers:
            self.handlers.pop()
            self._dispatch(s.handlers, disp_l, exc_t, fin, end)
        if s.orelse:
            self.new_block(else_l)
            self.body(s.orelse)
            self._normal_exit(fin, end)
        if fin is not None:
            self.finallies.pop()
            self.handlers.pop()
            self._finally(s.finalbody, fin, end)
        self.new_block(end)

    def _dispatch(self, handlers: list[ast.ExceptHandler], disp_l: Label, exc_t: str, fin: Finally | None,
                  end: Label) -> None:
        """The block that picks the ``except`` clause for the caught exception, then the clauses."""
        self.new_block(disp_l)
        x = self.temps.new("x")
        self.persistent_temps.add(x)
        self.emit(ast.Assign([mk_name(x, ast.Store())], mk_name(exc_t)))
        labels = [Label() for _ in handlers]
        for h, lab in zip(handlers, labels):
            if h.type is None:
                self.emit(mk_return(mk_const(lab)))
                break
            self.emit(ast.If(ast.Call(mk_name("isinstance"), [mk_name(x), h.type], []), [mk_return(mk_const(lab))], []))
        else:
            self.emit(mk_reraise(mk_name(x)))
        self.end_block(Dispatch(tuple(labels)))
        for h, lab in zip(handlers, labels):
            self.exc_vars.append(x)
            self.new_block(lab)
            if h.name:
                self.emit(ast.Assign([self.target(h.name, ast.Store())], mk_name(x)))
            self.body(h.body)
            self.exc_vars.pop()
            if self.is_open():
                if h.name:
                    self.emit(ast.Assign([self.target(h.name, ast.Store())], mk_const(None)),
                              ast.Delete([self.target(h.name, ast.Del())]))
                self.emit(drop_local(x))
            self._normal_exit(fin, end)

    def _finally(self, finalbody: list[ast.stmt], fin: Finally, end: Label) -> None:
        """The ``finally`` body, then on by the completion record: to ``end``, re-raise, return, or jump."""
        self.pending.append(fin.comp)
        self.new_block(fin.label)
        self.body(finalbody)
        self.pending.pop()
        if not self.is_open():
            return
        c = mk_name(fin.comp)
        self.emit(drop_local(fin.comp))
        k = ast.Subscript(c, mk_const(0), ast.Load())
        outer = self.finallies[-1] if self.finallies else None

        def forward() -> list[ast.stmt]:
            assert outer is not None
            return [ast.Assign([mk_name(outer.comp, ast.Store())], mk_name(fin.comp)), mk_return(mk_const(outer.label))]

        if outer is None:
            value = ast.Subscript(c, mk_const(1), ast.Load())
            on_return: list[ast.stmt] = [mk_return(mk_tuple(helper("RETURN"), value))]
        else:
            on_return = forward()
        on_jump = [ast.If(ast.Compare(ast.Subscript(c, mk_const(2), ast.Load()), [ast.Eq()], [mk_const(fin.depth)]),
                          [mk_return(ast.Subscript(c, mk_const(1), ast.Load()))],
                          forward() if outer is not None else [])]
        self.emit(
            ast.If(ast.Compare(k, [ast.Eq()], [mk_const(NORMAL)]), [mk_return(mk_const(end))], []),
            ast.If(ast.Compare(k, [ast.Eq()], [mk_const(THROW)]),
                   [mk_reraise(ast.Subscript(c, mk_const(1), ast.Load()))], []),
            ast.If(ast.Compare(k, [ast.Eq()], [mk_const(RETURNING)]), on_return, []),
            *on_jump,
        )
        self.end_block(FinallyExit(end))


class Verbatim(ast.NodeTransformer):
    """Rewrite a statement without suspension points for use inside a block.

    ``return``, and ``break``/``continue`` that leave a lowered loop, become
    jumps; a bare ``raise`` in a lowered handler re-raises its exception.
    """

    def __init__(self, lw: Lowerer) -> None:
        self.lw = lw
        self.loop_depth = 0
        self.handler_depth = 0

    def rewrite(self, s: ast.stmt) -> list[ast.stmt]:
        out = self.visit(s)
        return out if isinstance(out, list) else [out]

    def visit_FunctionDef(self, node: ast.AST) -> ast.AST:
        return node

    visit_AsyncFunctionDef = visit_Lambda = visit_ClassDef = visit_FunctionDef

    def _loop(self, node: ast.For | ast.While) -> ast.AST:
        for f in ("iter", "test", "target"):
            if hasattr(node, f):
                setattr(node, f, self.visit(getattr(node, f)))
        self.loop_depth += 1
        node.body = self._stmts(node.body)
        self.loop_depth -= 1
        node.orelse = self._stmts(node.orelse)
        return node

    visit_For = visit_While = _loop

    def _stmts(self, stmts: list[ast.stmt]) -> list[ast.stmt]:
        out: list[ast.stmt] = []
        for s in stmts:
            r = self.visit(s)
            out.extend(r if isinstance(r, list) else [r])
        return out

    def visit_ExceptHandler(self, node: ast.ExceptHandler) -> ast.AST:
        self.handler_depth += 1
        node.body = self._stmts(node.body)
        self.handler_depth -= 1
        return node

    def visit_Return(self, node: ast.Return) -> list[ast.stmt]:
        out = self.lw.route_return(node.value)
        self.lw.add_exit(Return())
        return [ast.copy_location(o, node) for o in out]

    def _jump(self, node: ast.Break | ast.Continue, brk: bool) -> ast.AST | list[ast.stmt]:
        if self.loop_depth:
            return node
        if not self.lw.loops:
            raise compile_error("'break' or 'continue' outside a loop", node, self.lw.filename)
        loop = self.lw.loops[-1]
        label = loop.brk if brk else loop.cont
        out = self.lw.route_jump(label, loop.depth)
        self.lw.add_exit(Jump(label))
        return [ast.copy_location(o, node) for o in out]

    def visit_Break(self, node: ast.Break) -> ast.AST | list[ast.stmt]:
        return self._jump(node, True)

    def visit_Continue(self, node: ast.Continue) -> ast.AST | list[ast.stmt]:
        return self._jump(node, False)

    def visit_Raise(self, node: ast.Raise) -> ast.AST:
        if node.exc is None and not self.handler_depth and self.lw.exc_vars:
            out = mk_reraise(mk_name(self.lw.exc_vars[-1]))
            for n in ast.walk(out):
                ast.copy_location(n, node)
            return out
        self.generic_visit(node)
        return node
