"""Pass 2, scopes and cells.

Takes the validated ``async def`` and its code object. Produces a
:class:`Scope`: the body with every variable shared with nested functions
read and written through its :class:`~durable.blocks.Cell`
(``name.cell_contents``), private names mangled as in a class body,
zero-argument ``super()`` made explicit, plus the names a frame keeps
(``persisted``) and the ``global`` declarations.

Cells are plain picklable objects kept in the frame's locals, so closures
survive a checkpoint and still see later assignments of the enclosing
function. Nested ``async def`` get the ``origin`` decorator (their source
position, for compiling a copy restored by value).
"""

from __future__ import annotations

import ast
import types
from dataclasses import dataclass

from ..blocks import LOCAL_PREFIX
from .syntax import helper, mk_const, mk_name, scope_locals, walk_scope

FunctionNode = ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda


@dataclass
class Scope:
    """What the scope pass hands to the lowering."""

    body: list[ast.stmt]
    cells: frozenset[str]
    globals: list[str]
    #: every name a frame keeps in its locals dict: the function's variables and cells
    persisted: set[str]


def resolve_scopes(node: ast.AsyncFunctionDef, code: types.CodeType, qualname: str) -> Scope:
    """Run the pass over ``node`` (mutated in place) for the function whose code is ``code``."""
    parts = qualname.split(".")
    if len(parts) >= 2 and parts[-2] != "<locals>":
        mangle(node, parts[-2])
    cells = set(code.co_cellvars) | set(code.co_freevars)
    globals_ = sorted({n for s in node.body for g in walk_scope(s) if isinstance(g, ast.Global) for n in g.names})
    if "__class__" in code.co_freevars:
        fix_super(node)
    body: list[ast.stmt] = []
    for stmt in node.body:
        out = CellRewriter(cells).visit(stmt)
        body.extend(out if isinstance(out, list) else [out])
    return Scope(body, frozenset(cells), globals_, set(code.co_varnames) | cells)


class CellRewriter(ast.NodeTransformer):
    """Turn reads/writes of shared variables into ``name.cell_contents``."""

    def __init__(self, cells: set[str], shadow: frozenset[str] = frozenset()) -> None:
        self.cells = cells
        self.shadow = shadow

    def _cell(self, node: ast.Name) -> ast.AST:
        return ast.copy_location(
            ast.Attribute(value=ast.copy_location(ast.Name(node.id, ast.Load()), node), attr="cell_contents",
                          ctx=node.ctx), node)

    def visit_Name(self, node: ast.Name) -> ast.AST:
        if node.id in self.cells and node.id not in self.shadow:
            return self._cell(node)
        return node

    def visit_NamedExpr(self, node: ast.NamedExpr) -> ast.AST:
        node.value = self.visit(node.value)
        if node.target.id in self.cells and node.target.id not in self.shadow:
            call = ast.Call(func=helper("setcell"), args=[ast.Name(node.target.id, ast.Load()), node.value],
                            keywords=[])
            return ast.copy_location(call, node)
        return node

    def _nested(self, local_names: set[str]) -> CellRewriter:
        return CellRewriter(self.cells, frozenset(self.shadow | local_names))

    def _visit_function(self, node: FunctionNode) -> FunctionNode:
        if not isinstance(node, ast.Lambda):
            node.decorator_list = [self.visit(d) for d in node.decorator_list]
            node.returns = None
        if isinstance(node, ast.AsyncFunctionDef):
            node.decorator_list.append(ast.copy_location(helper("origin"), node))
        node.args.defaults = [self.visit(d) for d in node.args.defaults]
        node.args.kw_defaults = [self.visit(d) if d is not None else None for d in node.args.kw_defaults]
        params = {a.arg for a in node.args.posonlyargs + node.args.args + node.args.kwonlyargs}
        for a in (node.args.vararg, node.args.kwarg):
            if a is not None:
                params.add(a.arg)
        for a in node.args.posonlyargs + node.args.args + node.args.kwonlyargs:
            a.annotation = None
        if isinstance(node, ast.Lambda):
            node.body = self._nested(params).visit(node.body)
            return node
        inner = self._nested(params | scope_locals(node.body))
        node.body = [inner.visit(s) for s in node.body]
        return node

    def visit_Lambda(self, node: ast.Lambda) -> ast.AST:
        return self._visit_function(node)

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> ast.AST | list[ast.stmt]:
        self._visit_function(node)
        return self._bind_name(node)

    visit_AsyncFunctionDef = visit_FunctionDef

    def _bind_name(self, node: ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) -> ast.AST | list[ast.stmt]:
        """A def/class whose name nested code captures stores into the name's cell."""
        name = node.name
        if name not in self.cells or name in self.shadow:
            return node
        hidden = f"{LOCAL_PREFIX}def_{name}"
        node.name = hidden
        named = ast.Call(helper("named"), [mk_name(hidden), mk_const(name)], [])
        store = ast.Assign([ast.Attribute(mk_name(name), "cell_contents", ast.Store())], named)
        drop = ast.Delete([mk_name(hidden, ast.Del())])
        return [node] + [ast.copy_location(x, node) for x in (store, drop)]

    def visit_ClassDef(self, node: ast.ClassDef) -> ast.AST | list[ast.stmt]:
        return self._bind_name(self._visit_class(node))

    def visit_Import(self, node: ast.Import | ast.ImportFrom) -> ast.AST | list[ast.stmt]:
        """An import that binds a captured name stores the module into the name's cell."""
        out: list[ast.stmt] = [node]
        for alias in node.names:
            bound = alias.asname or alias.name.split(".")[0]
            if bound not in self.cells or bound in self.shadow:
                continue
            hidden = f"{LOCAL_PREFIX}imp_{bound}"
            if alias.asname is None and "." in alias.name:  # ``import a.b`` binds the package ``a``
                out.append(ast.Import([ast.alias(bound, hidden)]))
                alias.asname = f"{LOCAL_PREFIX}imp_ignored"
                out.append(ast.Delete([mk_name(alias.asname, ast.Del())]))
            else:
                alias.asname = hidden
            out.append(ast.Assign([ast.Attribute(mk_name(bound), "cell_contents", ast.Store())], mk_name(hidden)))
            out.append(ast.Delete([mk_name(hidden, ast.Del())]))
        return [ast.copy_location(x, node) for x in out] if len(out) > 1 else node

    visit_ImportFrom = visit_Import

    def _visit_class(self, node: ast.ClassDef) -> ast.ClassDef:
        node.decorator_list = [self.visit(d) for d in node.decorator_list]
        node.bases = [self.visit(b) for b in node.bases]
        for k in node.keywords:
            k.value = self.visit(k.value)
        class_scope = self._nested(scope_locals(node.body))
        node.body = [self.visit(s) if isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef)) else class_scope.visit(s)
                     for s in node.body]
        return node

    def _visit_comp(self, node: ast.ListComp | ast.SetComp | ast.DictComp | ast.GeneratorExp) -> ast.AST:
        targets = set()
        for gen in node.generators:
            targets |= {n.id for n in ast.walk(gen.target) if isinstance(n, ast.Name)}
        first = node.generators[0]
        first.iter = self.visit(first.iter)
        inner = self._nested(targets)
        first.target = inner.visit(first.target)
        first.ifs = [inner.visit(i) for i in first.ifs]
        for gen in node.generators[1:]:
            inner.visit(gen)
        for attr in ("elt", "key", "value"):
            if hasattr(node, attr):
                setattr(node, attr, inner.visit(getattr(node, attr)))
        return node

    visit_ListComp = visit_SetComp = visit_DictComp = visit_GeneratorExp = _visit_comp


def mangle(tree: ast.AST, classname: str) -> None:
    """Mangle ``__private`` names as Python does inside the body of class ``classname``."""
    prefix = "_" + classname.lstrip("_")
    if prefix == "_":
        return

    def m(name: str) -> str:
        if name.startswith("__") and not name.endswith("__") and "." not in name:
            return prefix + name
        return name

    for n in ast.walk(tree):
        if isinstance(n, ast.Name):
            n.id = m(n.id)
        elif isinstance(n, ast.Attribute):
            n.attr = m(n.attr)


def fix_super(node: ast.AsyncFunctionDef) -> None:
    """``super()`` becomes ``super(__class__, self)``: a block is not the method, so Python cannot infer them."""
    if not node.args.args and not node.args.posonlyargs:
        return
    first = (node.args.posonlyargs + node.args.args)[0].arg
    for n in (n for stmt in node.body for n in walk_scope(stmt)):
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "super" and not n.args:
            n.args = [mk_name("__class__"), mk_name(first)]
