"""AST helpers every pass uses: node constructors, scope-aware walks, the names a statement reads and binds.

Not a pass: no state, no decisions about blocks.
"""

from __future__ import annotations

import ast
import copy
from collections.abc import Iterator
from typing import Any

from ..blocks import LOCAL_PREFIX

#: The frame's locals dict, the one parameter of every generated block.
LOCALS = LOCAL_PREFIX + "L"
PAUSE_NAMES = {"PauseForEventException"}

ScopeNode = ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda | ast.ClassDef
SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)
COMPS = (ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)


def mk_name(id_: str, ctx: ast.expr_context | None = None) -> ast.Name:
    return ast.Name(id_, ctx or ast.Load())


def mk_const(v: Any) -> ast.Constant:
    return ast.Constant(v)


def mk_return(value: ast.expr) -> ast.Return:
    return ast.Return(value)


def mk_tuple(*elts: ast.expr) -> ast.Tuple:
    return ast.Tuple(list(elts), ast.Load())


def mk_function(name: str, params: list[str], body: list[ast.stmt]) -> ast.FunctionDef:
    """``def name(*params): body``, positional parameters only."""
    args = ast.arguments(posonlyargs=[], args=[ast.arg(p) for p in params], vararg=None, kwonlyargs=[],
                         kw_defaults=[], kwarg=None, defaults=[])
    return mk_function_from(name, args, body)


def mk_function_from(name: str, args: ast.arguments, body: list[ast.stmt]) -> ast.FunctionDef:
    """``def name(args): body`` (no decorators, no annotations; ``type_params`` for Python 3.12+)."""
    extra: dict[str, Any] = {"type_params": []}
    return ast.FunctionDef(name=name, args=args, body=body, decorator_list=[], returns=None, **extra)


def drop_raise_entry(exc: ast.expr) -> ast.Assign:
    """``exc.__traceback__ = exc.__traceback__.tb_next``: forget the entry the block's own ``raise exc`` just
    added, in a handler of that raise (a lowered re-raise adds no entry, as in plain Python)."""
    def tb(ctx: ast.expr_context) -> ast.Attribute:
        return ast.Attribute(copy.deepcopy(exc), "__traceback__", ctx)
    return ast.Assign([tb(ast.Store())], ast.Attribute(tb(ast.Load()), "tb_next", ast.Load()))


def mk_reraise(exc: ast.expr) -> ast.Try:
    """Re-raise ``exc`` (caught earlier, kept in the frame) like a bare ``raise``: its traceback is left as it is.

    ``raise exc`` would add an entry for the block, which plain Python does not show for a re-raise.
    """
    return ast.Try(body=[ast.Raise(exc, None)],
                   handlers=[ast.ExceptHandler(mk_name("BaseException"), None, [drop_raise_entry(exc),
                                                                                 ast.Raise(None, None)])],
                   orelse=[], finalbody=[])


def helper(name: str) -> ast.Name:
    """A read of one of the names every block gets from the assembler (see ``runtime_support``)."""
    return mk_name(LOCAL_PREFIX + name)


def is_pause_raise(node: ast.AST) -> bool:
    """``raise PauseForEventException(...)``: a suspension point like an ``await``."""
    if not isinstance(node, ast.Raise) or not isinstance(node.exc, ast.Call):
        return False
    f = node.exc.func
    name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else None
    return name in PAUSE_NAMES


def scope_heads(node: ScopeNode) -> list[ast.expr]:
    """The parts of a def/lambda/class that run in the enclosing scope."""
    if isinstance(node, ast.ClassDef):
        return node.decorator_list + node.bases + [k.value for k in node.keywords]
    heads = [d for d in node.args.defaults + node.args.kw_defaults if d is not None]
    if isinstance(node, ast.Lambda):
        return heads
    return heads + node.decorator_list


def walk_scope(node: ast.AST) -> Iterator[ast.AST]:
    """Walk ``node`` without entering nested function/class bodies."""
    stack: list[ast.AST]
    if isinstance(node, SCOPES):
        yield node
        stack = list(scope_heads(node))
    else:
        stack = [node]
    while stack:
        n = stack.pop()
        yield n
        for child in ast.iter_child_nodes(n):
            if isinstance(child, SCOPES):
                yield child
                stack.extend(scope_heads(child))
                continue
            stack.append(child)


def scope_locals(body: list[ast.stmt]) -> set[str]:
    """Names a nested function body binds locally (minus global/nonlocal)."""
    bound: set[str] = set()
    declared: set[str] = set()
    for stmt in body:
        for n in walk_scope(stmt):
            if isinstance(n, ast.Name) and isinstance(n.ctx, (ast.Store, ast.Del)):
                bound.add(n.id)
            elif isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                bound.add(n.name)
            elif isinstance(n, (ast.Import, ast.ImportFrom)):
                bound |= {(a.asname or a.name).split(".")[0] for a in n.names}
            elif isinstance(n, ast.ExceptHandler) and n.name:
                bound.add(n.name)
            elif isinstance(n, (ast.Global, ast.Nonlocal)):
                declared |= set(n.names)
    return bound - declared


def assigned(stmts: list[ast.stmt]) -> set[str]:
    """Names the statements bind or delete in their own scope (for write-back).

    Nested defs, lambdas and classes bind only their name; comprehensions bind
    only the targets of ``:=`` inside them.
    """
    out: set[str] = set()

    def visit(n: ast.AST) -> None:
        if isinstance(n, SCOPES):
            if not isinstance(n, ast.Lambda):
                out.add(n.name)
            for h in scope_heads(n):
                visit(h)
            return
        if isinstance(n, COMPS):
            visit(n.generators[0].iter)
            out.update(sub.target.id for sub in ast.walk(n) if isinstance(sub, ast.NamedExpr))
            return
        if isinstance(n, ast.Name):
            if isinstance(n.ctx, (ast.Store, ast.Del)):
                out.add(n.id)
        elif isinstance(n, (ast.Import, ast.ImportFrom)):
            out.update((a.asname or a.name).split(".")[0] for a in n.names)
        elif isinstance(n, (ast.ExceptHandler, ast.MatchAs, ast.MatchStar)) and n.name:
            out.add(n.name)
        elif isinstance(n, ast.MatchMapping) and n.rest:
            out.add(n.rest)
        for c in ast.iter_child_nodes(n):
            visit(c)

    for s in stmts:
        visit(s)
    return out


def loaded(stmts: list[ast.stmt]) -> set[str]:
    """Names read anywhere in the statements (nested scopes included)."""
    return {n.id for s in stmts for n in ast.walk(s) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}


def set_lines(node: ast.AST, lineno: int) -> None:
    """Give generated nodes without a position the line of the nearest enclosing node that has one (``lineno``
    at the top), and sane end positions: a debugger stepping through a block sees the user's lines only."""
    todo: list[tuple[ast.AST, int]] = [(node, lineno)]
    while todo:  # iterative: a long chain like ``a + b + ...`` nests deeper than the recursion limit
        n, line = todo.pop()
        if "lineno" in n._attributes:
            if getattr(n, "lineno", None) is None:
                n.lineno = line  # type: ignore[attr-defined]
                n.col_offset = 0  # type: ignore[attr-defined]
            elif getattr(n, "col_offset", None) is None:
                n.col_offset = 0  # type: ignore[attr-defined]
            if getattr(n, "end_lineno", None) is None or n.end_lineno < n.lineno:  # type: ignore[attr-defined]
                n.end_lineno = n.lineno  # type: ignore[attr-defined]
                n.end_col_offset = 0  # type: ignore[attr-defined]
            elif getattr(n, "end_col_offset", None) is None:
                n.end_col_offset = 0  # type: ignore[attr-defined]
            line = n.lineno  # type: ignore[attr-defined]
        for child in ast.iter_child_nodes(n):
            todo.append((child, line))


def place(stmts: list[ast.stmt], lineno: int) -> list[ast.stmt]:
    """Put generated statements without a position on ``lineno`` (see :func:`set_lines`)."""
    for s in stmts:
        if getattr(s, "lineno", None) is None:
            s.lineno = lineno
    return stmts
