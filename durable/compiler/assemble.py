"""Pass 5, assembly.

Takes the lowered blocks (:class:`~durable.compiler.lower.Lowerer`) and the
names a frame keeps. Produces the :class:`~durable.blocks.CodeBlock` tuple:
one Python function ``_dur__b<n>(L)`` per block (its code renamed after the
user's function, so tracebacks and debuggers read naturally), compiled together in one
module whose outer function receives the run-time helpers
(``runtime_support.HELPERS``). Each block loads the frame's variables it uses
from ``L`` into fast locals on entry and writes back those it assigns on exit;
a temporary used only by the next block is handed over through ``L`` and
popped.

Also computes the layout fingerprint (:func:`layout`), which a saved frame
carries so that a changed step structure is detected on resume, and the
argument binder (:func:`bind_code`).
"""

from __future__ import annotations

import ast
import hashlib
import re
import types
from typing import Any

from ..blocks import LOCAL_PREFIX, CodeBlock, Handler
from ..exceptions import CompileError
from .builder import Block, Label
from .lower import Lowerer
from .runtime_support import HELPERS
from .syntax import (
    LOCALS,
    assigned,
    drop_raise_entry,
    loaded,
    mk_const,
    mk_function,
    mk_function_from,
    mk_name,
    place,
    set_lines,
)

_TEMP = re.compile(LOCAL_PREFIX + r"(?:t|e|c|x|it)\d+$")


def layout(lw: Lowerer, persisted: list[str]) -> str:
    """A hash of the step structure; unchanged by edits inside a block."""
    parts = [repr(persisted)]
    for b in lw.blocks:
        exits = [(e.TAG, *[x.pc for x in e.targets()]) for e in b.exits]
        h = None if b.handler is None else (b.handler.kind, b.handler.label.pc)
        parts.append(repr((h, exits)))
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def build(lw: Lowerer, persisted: set[str], globals_names: list[str], filename: str, fn_globals: dict[str, Any],
          qualname: str, base: int = 0) -> tuple[CodeBlock, ...]:
    """Generate one Python function per block and create them in one go."""
    defs = []
    resolved = [[_Resolve().visit(s) for s in b.stmts] for b in lw.blocks]
    loads = [loaded(stmts) for stmts in resolved]
    stores = [assigned(stmts) for stmts in resolved]
    consumed: dict[str, set[int]] = {}
    for i, (ld, st) in enumerate(zip(loads, stores)):
        for t in ld - st:
            if _TEMP.match(t) and t not in lw.persistent_temps:
                consumed.setdefault(t, set()).add(i)
    for i, b in enumerate(lw.blocks):
        stmts = resolved[i]
        written = stores[i]
        referenced = loads[i] | written
        temps_in = sorted(t for t in loads[i] - written if t in consumed)
        prologue: list[ast.stmt] = []
        if globals_names:
            prologue.append(ast.Global(list(globals_names)))
        for var in sorted((referenced & persisted) | (referenced & lw.persistent_temps)):
            prologue.append(ast.If(ast.Compare(mk_const(var), [ast.In()], [mk_name(LOCALS)]),
                                   [ast.Assign([mk_name(var, ast.Store())],
                                               ast.Subscript(mk_name(LOCALS), mk_const(var), ast.Load()))], []))
        for t in temps_in:
            take = "get" if t == b.pending else "pop"
            prologue.append(ast.Assign([mk_name(t, ast.Store())],
                                       ast.Call(ast.Attribute(mk_name(LOCALS), take, ast.Load()), [mk_const(t)], [])))
        out_names = sorted((written & persisted) | (written & lw.persistent_temps)
                           | {t for t in written if consumed.get(t, set()) - {i}})
        # the code around the user's statements takes the lines of the first and the last of them, so that
        # stepping through a block in a debugger never shows the line the block started at in between
        first = getattr(stmts[0], "lineno", b.lineno) if stmts else b.lineno
        last = getattr(stmts[-1], "lineno", b.lineno) if stmts else b.lineno
        if b.handling is not None:
            stmts = [ast.Try(body=[ast.Raise(mk_name(b.handling), None)],
                             handlers=[ast.ExceptHandler(mk_name("BaseException"), None,
                                                         [drop_raise_entry(mk_name(b.handling)), *stmts])],
                             orelse=[], finalbody=[])]
            place(stmts, first)
            if b.handling not in referenced:
                prologue.append(ast.Assign([mk_name(b.handling, ast.Store())],
                                           ast.Subscript(mk_name(LOCALS), mk_const(b.handling), ast.Load())))
        body = stmts
        if out_names:
            body = place([ast.Try(body=stmts, handlers=[], orelse=[],
                                  finalbody=place([_write_back(var) for var in out_names], last))], first)
        fdef = mk_function(f"{LOCAL_PREFIX}b{b.index}", [LOCALS], place(prologue, first) + body)
        set_lines(fdef, b.lineno)
        defs.append(fdef)
    helper_names = [f"{LOCAL_PREFIX}{n}" for n, _ in HELPERS]
    ret = ast.Return(ast.Tuple([mk_name(d.name) for d in defs], ast.Load()))
    make = mk_function(f"{LOCAL_PREFIX}make", helper_names, [*defs, ret])
    set_lines(make, lw.blocks[0].lineno if lw.blocks else 1)
    mod = ast.Module([make], [])
    try:
        code = compile(mod, filename, "exec")
    except SyntaxError as exc:
        raise CompileError(f"{qualname}: internal compile failure: {exc}", filename, exc.lineno) from exc
    make_code = next(c for c in code.co_consts if isinstance(c, types.CodeType))
    fns = types.FunctionType(make_code, fn_globals)(*[v for _, v in HELPERS])
    name = qualname.rpartition(".")[2]
    for fn in fns:  # a traceback or a debugger shows the user's function, not ``_dur__b<n>``
        fn.__code__ = fn.__code__.replace(co_name=name, co_qualname=qualname)
    return tuple(CodeBlock(fn, _handler(b), b.lineno, b.index, b.pending, _tail(b, stmts))
                 for fn, b, stmts in zip(fns, lw.blocks, resolved))


def _write_back(var: str) -> ast.Try:
    """``L[var] = var``, or forget ``var`` if it is unbound."""
    return ast.Try(
        body=[ast.Assign([ast.Subscript(mk_name(LOCALS), mk_const(var), ast.Store())], mk_name(var))],
        handlers=[ast.ExceptHandler(mk_name("NameError"), None, [
            ast.Expr(ast.Call(ast.Attribute(mk_name(LOCALS), "pop", ast.Load()), [mk_const(var), mk_const(None)],
                              []))])],
        orelse=[], finalbody=[])


def _tail(b: Block, stmts: list[ast.stmt]) -> bool:
    """:attr:`CodeBlock.tail` of block ``b``: assignments of names or constants, then ``return`` of one."""
    if b.handler is not None or b.handling is not None or b.pending is not None:
        return False
    for s in stmts:
        if isinstance(s, ast.Return):  # what follows it is unreachable
            v = s.value
            return (isinstance(v, ast.Tuple) and len(v.elts) == 2 and isinstance(v.elts[0], ast.Name)
                    and v.elts[0].id == f"{LOCAL_PREFIX}RETURN" and isinstance(v.elts[1], ast.Name | ast.Constant))
        if not (isinstance(s, ast.Assign) and len(s.targets) == 1 and isinstance(s.targets[0], ast.Name)
                and isinstance(s.value, ast.Name | ast.Constant)):
            return False
    return False


def _handler(b: Block) -> Handler | None:
    if b.handler is None:
        return None
    pc = b.handler.label.pc
    assert pc is not None  # a handler's block is started with the ``try`` it handles
    return Handler(b.handler.kind, pc, b.handler.var)


class _Resolve(ast.NodeTransformer):
    """Jump targets (``Label`` constants) become block numbers."""

    def visit_Constant(self, node: ast.Constant) -> ast.AST:
        if isinstance(node.value, Label):
            return ast.copy_location(ast.Constant(node.value.pc), node)
        return node


def bind_code(node: ast.AsyncFunctionDef, filename: str) -> types.CodeType:
    """Code of a function with ``node``'s parameters (defaults stubbed) that returns its locals: the binder
    :meth:`CompiledFunction.bind` runs with the real defaults."""
    args = ast.arguments(
        posonlyargs=[ast.arg(a.arg) for a in node.args.posonlyargs],
        args=[ast.arg(a.arg) for a in node.args.args],
        vararg=ast.arg(node.args.vararg.arg) if node.args.vararg else None,
        kwonlyargs=[ast.arg(a.arg) for a in node.args.kwonlyargs],
        kw_defaults=[None if d is None else mk_const(None) for d in node.args.kw_defaults],
        kwarg=ast.arg(node.args.kwarg.arg) if node.args.kwarg else None,
        defaults=[mk_const(None) for _ in node.args.defaults],
    )
    names = [a.arg for a in node.args.posonlyargs + node.args.args]
    if node.args.vararg:
        names.append(node.args.vararg.arg)
    names += [a.arg for a in node.args.kwonlyargs]
    if node.args.kwarg:
        names.append(node.args.kwarg.arg)
    ret = ast.Return(ast.Dict([mk_const(n) for n in names], [mk_name(n) for n in names]))
    fn = mk_function_from(node.name, args, [ret])
    mod = ast.Module([fn], [])
    ast.fix_missing_locations(mod)
    ast.increment_lineno(mod, node.lineno - 1)
    code = compile(mod, filename, "exec")
    return next(c for c in code.co_consts if isinstance(c, types.CodeType))
