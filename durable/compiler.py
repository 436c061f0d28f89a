"""Compile an ``async def`` into checkpointable code blocks.

The body is split at every suspension point (``await``, and
``raise PauseForEventException(...)``) into straight-line blocks. Each block is
a plain Python function ``block(L)`` over the frame's locals dict ``L``; it
returns the next step:

* an ``int``: jump to that block;
* ``(CALL, func, args, kwargs, resume_pc, temp)``: await ``func(*args, **kwargs)``;
* ``(AWAIT, awaitable, resume_pc, temp)``: await any other awaitable;
* ``(RETURN, value)``: the function returns;
* ``(NEXT,)``: end of an appended code chunk.

Control flow that spans suspension points (loops, ``if``, ``try``) becomes
jumps between blocks, with ``finally`` implemented by completion records, as
in a regenerator-style state machine. Statements without suspension points are
kept verbatim, so they run at native speed. Inside a block, locals are fast
locals, loaded from ``L`` on entry and written back on exit.
"""

from __future__ import annotations

import ast
import hashlib
import inspect
import linecache
import operator
import re
import textwrap
import types
from dataclasses import dataclass, field
from typing import Any

from .exceptions import CompileError

CALL, AWAIT, RETURN, NEXT = 0, 1, 2, 3
# completion kinds of a lowered ``finally``
_NORMAL, _THROW, _RETK, _JUMP = 0, 1, 2, 3

_PREFIX = "_dur__"
_LN = _PREFIX + "L"
_TEMP = re.compile(_PREFIX + r"(?:t|e|c|x|it)\d+$")
_PAUSE_NAMES = {"PauseForEventException"}


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

    def __reduce__(self):
        try:
            return (Cell, (self.name, self.cell_contents))
        except NameError:
            return (Cell, (self.name,))

    def __repr__(self) -> str:
        try:
            return f"<Cell {self.name}={self.cell_contents!r}>"
        except NameError:
            return f"<Cell {self.name} (empty)>"


class Label:
    __slots__ = ("pc",)

    def __init__(self) -> None:
        self.pc: int | None = None


@dataclass
class CodeBlock:
    """One straight-line step of a compiled function.

    ``fn(L)`` runs the block over the locals dict ``L``. ``handler`` says where
    an exception raised in it goes: ``None`` (out of the function) or
    ``(kind, pc, var)`` with kind ``"except"`` or ``"finally"``.
    """

    fn: Any
    handler: tuple | None = None
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
    blocks: tuple
    cellvars: tuple
    freevars: tuple
    argnames: tuple
    bind_code: Any
    source_hash: str
    layout_hash: str
    resume_points: dict = field(default_factory=dict)
    #: pc -> (the await's own source text, the source lines it spans), as written in the file (for move_to)
    resume_sources: dict = field(default_factory=dict)

    def bind(self, func, args: tuple, kwargs: dict) -> dict:
        """Bind call arguments like Python would; return the initial locals."""
        binder = types.FunctionType(self.bind_code, {}, self.name, getattr(func, "__defaults__", None))
        binder.__kwdefaults__ = getattr(func, "__kwdefaults__", None)
        L = binder(*args, **kwargs)
        for name in self.cellvars:
            L[name] = Cell(name, L[name]) if name in L else Cell(name)
        closure = getattr(func, "__closure__", None)
        if closure:
            L.update(free_cells(self.freevars, closure))
        return L

    def describe(self, pc: int) -> str:
        """Human-readable position of a resume point, for status displays."""
        line, text, _ = self.resume_points.get(pc, (None, None, None))
        if line is None:
            return f"{self.qualname} block {pc}"
        return f"{self.qualname} line {line}: {text}"


def free_cells(names: tuple, closure: tuple):
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


def _compile_error(msg: str, node: ast.AST | None, filename: str) -> CompileError:
    return CompileError(msg, filename, getattr(node, "lineno", None))


class _Temps:
    def __init__(self) -> None:
        self.n = 0

    def new(self, kind: str = "t") -> str:
        self.n += 1
        return f"{_PREFIX}{kind}{self.n}"


def _is_pause_raise(node: ast.AST) -> bool:
    if not isinstance(node, ast.Raise) or not isinstance(node.exc, ast.Call):
        return False
    f = node.exc.func
    name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else None
    return name in _PAUSE_NAMES


_SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)


def _scope_heads(node: ast.AST) -> list[ast.AST]:
    """The parts of a def/lambda/class that run in the enclosing scope."""
    if isinstance(node, ast.ClassDef):
        return node.decorator_list + node.bases + [k.value for k in node.keywords]
    heads = [d for d in node.args.defaults + node.args.kw_defaults if d is not None]
    return heads + getattr(node, "decorator_list", [])
_COMPS = (ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)


def _walk_scope(node: ast.AST):
    """Walk ``node`` without entering nested function/class bodies."""
    if isinstance(node, _SCOPES):
        yield node
        stack = list(_scope_heads(node))
    else:
        stack = [node]
    while stack:
        n = stack.pop()
        yield n
        for child in ast.iter_child_nodes(n):
            if isinstance(child, _SCOPES):
                yield child
                stack.extend(_scope_heads(child))
                continue
            stack.append(child)


class _Analysis:
    """Caches which nodes contain suspension points."""

    def __init__(self) -> None:
        self._cache: dict[int, tuple[ast.AST, bool]] = {}

    def suspends(self, node: ast.AST) -> bool:
        # keyed by id() but holding the node, so an id is never reused while cached
        hit = self._cache.get(id(node))
        if hit is not None and hit[0] is node:
            return hit[1]
        found = any(isinstance(n, ast.Await) or _is_pause_raise(n) for n in _walk_scope(node))
        self._cache[id(node)] = (node, found)
        return found


def _validate(fn_node: ast.AsyncFunctionDef, filename: str) -> None:
    """Refuse what cannot be checkpointed, naming file, line and construct."""

    def check(node: ast.AST, ctx: str | None) -> None:
        for child in ast.iter_child_nodes(node):
            c = ctx
            if isinstance(child, (ast.Yield, ast.YieldFrom)):
                raise _compile_error("async generators (yield inside async def) cannot be made durable", child,
                                     filename)
            if isinstance(child, ast.AsyncFor):
                raise _compile_error(
                    "'async for' cannot be checkpointed; iterate inside a helper async def (it runs as one step)",
                    child, filename)
            if isinstance(child, ast.AsyncWith):
                raise _compile_error(
                    "'async with' cannot be checkpointed; use it inside a helper async def (it runs as one step)",
                    child, filename)
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
                # nested bodies are separate scopes; only check their default/decorator expressions
                heads = []
                if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                    heads = [d for d in child.args.defaults + child.args.kw_defaults if d is not None]
                    heads += getattr(child, "decorator_list", [])
                else:
                    heads = child.decorator_list + child.bases + [k.value for k in child.keywords]
                for h in heads:
                    if any(isinstance(n, ast.Await) for n in ast.walk(h)):
                        raise _compile_error(
                            "await in a decorator, default or base of a nested definition is not supported",
                            h, filename)
                continue
            if isinstance(child, _COMPS):
                if any(g.is_async for g in child.generators):
                    raise _compile_error("an async comprehension cannot be checkpointed; use a for loop", child,
                                         filename)
                if any(isinstance(n, ast.Await) for n in ast.walk(child)):
                    raise _compile_error("await inside a comprehension cannot be checkpointed; use a for loop", child,
                                         filename)
                continue
            if isinstance(child, ast.Await) or _is_pause_raise(child):
                if ctx:
                    what = "await" if isinstance(child, ast.Await) else "raise PauseForEventException"
                    raise _compile_error(f"{what} inside {ctx} cannot be checkpointed", child, filename)
            if isinstance(child, ast.With):
                c = "a 'with' block (the context manager cannot be saved)"
            elif isinstance(child, ast.Match):
                c = "a 'match' statement"
            elif isinstance(child, ast.TryStar):
                c = "a 'try/except*' statement"
            elif isinstance(child, ast.ExceptHandler) and child.type is not None:
                if any(isinstance(n, ast.Await) for n in ast.walk(child.type)):
                    raise _compile_error("await in an except clause's type is not supported", child, filename)
            check(child, c)

    check(fn_node, None)


class _CellRewriter(ast.NodeTransformer):
    """Turn reads/writes of shared variables into ``name.cell_contents``."""

    def __init__(self, cells: set[str], shadow: frozenset = frozenset()) -> None:
        self.cells = cells
        self.shadow = shadow

    def _cell(self, node: ast.Name) -> ast.AST:
        return ast.copy_location(
            ast.Attribute(value=ast.copy_location(ast.Name(node.id, ast.Load()), node), attr="cell_contents",
                          ctx=node.ctx), node)

    def visit_Name(self, node: ast.Name):
        if node.id in self.cells and node.id not in self.shadow:
            return self._cell(node)
        return node

    def visit_NamedExpr(self, node: ast.NamedExpr):
        node.value = self.visit(node.value)
        if node.target.id in self.cells and node.target.id not in self.shadow:
            call = ast.Call(func=ast.Name(f"{_PREFIX}setcell", ast.Load()),
                            args=[ast.Name(node.target.id, ast.Load()), node.value], keywords=[])
            return ast.copy_location(call, node)
        return node

    def _nested(self, node, local_names: set[str]) -> _CellRewriter:
        return _CellRewriter(self.cells, frozenset(self.shadow | local_names))

    def _visit_function(self, node):
        if not isinstance(node, ast.Lambda):
            node.decorator_list = [self.visit(d) for d in node.decorator_list]
            node.returns = None
        if isinstance(node, ast.AsyncFunctionDef):
            node.decorator_list.append(ast.copy_location(_name(f"{_PREFIX}origin"), node))
        node.args.defaults = [self.visit(d) for d in node.args.defaults]
        node.args.kw_defaults = [self.visit(d) if d is not None else None for d in node.args.kw_defaults]
        params = {a.arg for a in node.args.posonlyargs + node.args.args + node.args.kwonlyargs}
        for a in (node.args.vararg, node.args.kwarg):
            if a is not None:
                params.add(a.arg)
        for a in node.args.posonlyargs + node.args.args + node.args.kwonlyargs:
            a.annotation = None
        if isinstance(node, ast.Lambda):
            node.body = self._nested(node, params).visit(node.body)
            return node
        inner = self._nested(node, params | _scope_locals(node.body))
        node.body = [inner.visit(s) for s in node.body]
        return node

    visit_Lambda = _visit_function

    def visit_FunctionDef(self, node):
        return self._bind_name(self._visit_function(node))

    visit_AsyncFunctionDef = visit_FunctionDef

    def _bind_name(self, node):
        """A def/class whose name nested code captures stores into the name's cell."""
        name = node.name
        if name not in self.cells or name in self.shadow:
            return node
        hidden = f"{_PREFIX}def_{name}"
        node.name = hidden
        named = ast.Call(_name(f"{_PREFIX}named"), [_name(hidden), _const(name)], [])
        store = ast.Assign([ast.Attribute(_name(name), "cell_contents", ast.Store())], named)
        drop = ast.Delete([_name(hidden, ast.Del())])
        return [node] + [ast.copy_location(x, node) for x in (store, drop)]

    def visit_ClassDef(self, node: ast.ClassDef):
        return self._bind_name(self._visit_class(node))

    def visit_Import(self, node: ast.Import | ast.ImportFrom):
        """An import that binds a captured name stores the module into the name's cell."""
        out: list[ast.stmt] = [node]
        for alias in node.names:
            bound = alias.asname or alias.name.split(".")[0]
            if bound not in self.cells or bound in self.shadow:
                continue
            hidden = f"{_PREFIX}imp_{bound}"
            if alias.asname is None and "." in alias.name:  # ``import a.b`` binds the package ``a``
                out.append(ast.Import([ast.alias(bound, hidden)]))
                alias.asname = f"{_PREFIX}imp_ignored"
                out.append(ast.Delete([_name(alias.asname, ast.Del())]))
            else:
                alias.asname = hidden
            out.append(ast.Assign([ast.Attribute(_name(bound), "cell_contents", ast.Store())], _name(hidden)))
            out.append(ast.Delete([_name(hidden, ast.Del())]))
        return [ast.copy_location(x, node) for x in out] if len(out) > 1 else node

    visit_ImportFrom = visit_Import

    def _visit_class(self, node: ast.ClassDef):
        node.decorator_list = [self.visit(d) for d in node.decorator_list]
        node.bases = [self.visit(b) for b in node.bases]
        for k in node.keywords:
            k.value = self.visit(k.value)
        class_scope = self._nested(node, _scope_locals(node.body))
        node.body = [self.visit(s) if isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef)) else class_scope.visit(s)
                     for s in node.body]
        return node

    def _visit_comp(self, node):
        targets = set()
        for gen in node.generators:
            targets |= {n.id for n in ast.walk(gen.target) if isinstance(n, ast.Name)}
        first = node.generators[0]
        first.iter = self.visit(first.iter)
        inner = self._nested(node, targets)
        first.target = inner.visit(first.target)
        first.ifs = [inner.visit(i) for i in first.ifs]
        for gen in node.generators[1:]:
            inner.visit(gen)
        for attr in ("elt", "key", "value"):
            if hasattr(node, attr):
                setattr(node, attr, inner.visit(getattr(node, attr)))
        return node

    visit_ListComp = visit_SetComp = visit_DictComp = visit_GeneratorExp = _visit_comp


def _scope_locals(body: list[ast.stmt]) -> set[str]:
    """Names a nested function body binds locally (minus global/nonlocal)."""
    bound: set[str] = set()
    declared: set[str] = set()
    for stmt in body:
        for n in _walk_scope(stmt):
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


def _assigned(stmts: list[ast.stmt]) -> set[str]:
    """Names the statements bind or delete in their own scope (for write-back).

    Nested defs, lambdas and classes bind only their name; comprehensions bind
    only the targets of ``:=`` inside them.
    """
    out: set[str] = set()

    def visit(n: ast.AST) -> None:
        if isinstance(n, _SCOPES):
            if not isinstance(n, ast.Lambda):
                out.add(n.name)
            for h in _scope_heads(n):
                visit(h)
            return
        if isinstance(n, _COMPS):
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


def _referenced(stmts: list[ast.stmt]) -> set[str]:
    return {n.id for s in stmts for n in ast.walk(s) if isinstance(n, ast.Name)}


def _mangle(tree: ast.AST, classname: str) -> None:
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


_IOPS = {
    ast.Add: operator.iadd, ast.Sub: operator.isub, ast.Mult: operator.imul, ast.MatMult: operator.imatmul,
    ast.Div: operator.itruediv, ast.FloorDiv: operator.ifloordiv, ast.Mod: operator.imod, ast.Pow: operator.ipow,
    ast.LShift: operator.ilshift, ast.RShift: operator.irshift, ast.BitOr: operator.ior, ast.BitXor: operator.ixor,
    ast.BitAnd: operator.iand,
}


def _name(id_: str, ctx=None) -> ast.Name:
    return ast.Name(id_, ctx or ast.Load())


def _const(v) -> ast.Constant:
    return ast.Constant(v)


def _ret(value: ast.expr) -> ast.Return:
    return ast.Return(value)


def _tuple(*elts) -> ast.Tuple:
    return ast.Tuple(list(elts), ast.Load())


def _is_simple(e: ast.expr) -> bool:
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


class _Block:
    __slots__ = ("index", "stmts", "handler", "handling", "pending", "exits", "lineno", "closed")

    def __init__(self, index: int, handler, lineno: int) -> None:
        self.index = index
        self.stmts: list[ast.stmt] = []
        self.handler = handler
        self.handling: str | None = None  # the handled-exception variable, in a lowered except body
        self.pending: str | None = None   # the completion variable, in a lowered finally body
        self.exits: list = []
        self.lineno = lineno
        self.closed = False


@dataclass
class _Loop:
    brk: Label
    cont: Label
    depth: int


@dataclass
class _Finally:
    label: Label
    comp: str
    depth: int


class _Lowerer:
    """Turns a function body into a list of blocks (see module docstring)."""

    def __init__(self, filename: str, temps: _Temps, chunk: bool = False, base: int = 0,
                 cells: frozenset = frozenset()) -> None:
        self.filename = filename
        self.cells = cells
        self.base = base
        self.temps = temps
        self.an = _Analysis()
        self.blocks: list[_Block] = []
        self.cur: _Block | None = None
        self.handlers: list[tuple] = []
        self.loops: list[_Loop] = []
        self.finallies: list[_Finally] = []
        self.exc_vars: list[str] = []     # handled-exception variables, for bare ``raise``
        self.pending: list[str] = []      # completion variables of the finally bodies being lowered
        self.persistent_temps: set[str] = set()
        self.resume_points: dict[Label, tuple] = {}
        self.resume_nodes: dict[Label, ast.AST] = {}
        self.chunk = chunk
        self.lineno = 1

    # -- blocks -----------------------------------------------------------
    def new_block(self, label: Label | None = None) -> _Block:
        b = _Block(self.base + len(self.blocks), self.handlers[-1] if self.handlers else None, self.lineno)
        if self.exc_vars:
            b.handling = self.exc_vars[-1]
        if self.pending:
            b.pending = self.pending[-1]
        self.blocks.append(b)
        self.cur = b
        if label is not None:
            label.pc = b.index
        return b

    def block(self) -> _Block:
        if self.cur is None or self.cur.closed:
            self.new_block()
        return self.cur

    def emit(self, *stmts: ast.stmt) -> None:
        b = self.block()
        for s in stmts:
            if not hasattr(s, "lineno"):
                s.lineno = self.lineno
            b.stmts.append(s)

    def close(self, stmt: ast.stmt, exit_) -> None:
        self.emit(stmt)
        self.cur.exits.append(exit_)
        self.cur.closed = True

    def jump(self, label: Label) -> None:
        self.close(_ret(_const(label)), ("J", label))

    def start(self, label: Label) -> None:
        if self.cur is not None and not self.cur.closed:
            self.jump(label)
        self.new_block(label)

    # -- temps ------------------------------------------------------------
    def define(self, name: str) -> None:
        """Temps are tracked when blocks are built (see ``_build``)."""

    def use(self, name: str) -> ast.Name:
        return _name(name)

    def spill(self, e: ast.expr) -> ast.Name:
        t = self.temps.new()
        self.emit(ast.Assign([_name(t, ast.Store())], e))
        self.define(t)
        return self.use(t)

    # -- expressions ------------------------------------------------------
    def expr(self, e: ast.expr | None) -> ast.expr | None:
        """Lower ``e``; returns an expression valid in the current block."""
        if e is None or not self.an.suspends(e):
            return e
        if isinstance(e, ast.Await):
            return self.suspend(e, keep=True)
        if isinstance(e, ast.BoolOp):
            return self.boolop(e)
        if isinstance(e, ast.IfExp):
            t = self.temps.new()
            self.stmt(ast.copy_location(ast.If(e.test, [ast.Assign([_name(t, ast.Store())], e.body)],
                                               [ast.Assign([_name(t, ast.Store())], e.orelse)]), e))
            return self.use(t)
        if isinstance(e, ast.Compare) and len(e.ops) > 1:
            return self.chain(e)
        if isinstance(e, ast.NamedExpr):
            v = self.expr(e.value)
            self.emit(ast.Assign([_name(e.target.id, ast.Store())], v))
            return _name(e.target.id)
        return self.children(e)

    def children(self, e: ast.AST) -> ast.AST:
        slots = _ordered_slots(e)
        last = max((i for i, (_, get, _) in enumerate(slots) if self.an.suspends(get())), default=-1)
        for i, (_, get, put) in enumerate(slots):
            child = get()
            if i < last:
                new = self.expr(child)
                if not _is_simple(new):
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
        self.emit(ast.Assign([_name(t, ast.Store())], self.expr(first)))
        self.define(t)
        for v in rest:
            nxt = Label()
            test = self.use(t) if isinstance(e.op, ast.And) else ast.UnaryOp(ast.Not(), self.use(t))
            self.close(ast.If(test, [_ret(_const(nxt))], [_ret(_const(end))]), ("B", nxt, end))
            self.new_block(nxt)
            self.emit(ast.Assign([_name(t, ast.Store())], self.expr(v)))
            self.define(t)
        self.start(end)
        return self.use(t)

    def chain(self, e: ast.Compare) -> ast.expr:
        t = self.temps.new()
        end = Label()
        left = self.expr(e.left)
        for i, (op, comp) in enumerate(zip(e.ops, e.comparators)):
            if not _is_simple(left):
                left = self.spill(left)
            right = self.expr(comp)
            if i < len(e.ops) - 1 and not isinstance(right, ast.Constant):
                right = self.spill(right)
            self.emit(ast.Assign([_name(t, ast.Store())], ast.Compare(left, [op], [right])))
            self.define(t)
            if i < len(e.ops) - 1:
                nxt = Label()
                self.close(ast.If(self.use(t), [_ret(_const(nxt))], [_ret(_const(end))]), ("B", nxt, end))
                self.new_block(nxt)
                left = right
        self.start(end)
        return self.use(t)

    def suspend(self, node: ast.AST, keep: bool) -> ast.expr | None:
        """End the block at an await; the next block starts with its result."""
        if isinstance(node, ast.Await):
            value = node.value
            text = ast.unparse(node)
        else:  # raise PauseForEventException(...)
            value = ast.Call(_name(f"{_PREFIX}pause"), [node.exc], [])
            text = ast.unparse(node)
        resume = Label()
        tmp = self.temps.new() if keep else None
        if isinstance(value, ast.Call):
            self.children(value)
            args = ast.Tuple(list(value.args), ast.Load())
            kw = ast.Dict([None if k.arg is None else _const(k.arg) for k in value.keywords],
                          [k.value for k in value.keywords])
            term = _tuple(_name(f"{_PREFIX}CALL"), value.func, args, kw, _const(resume), _const(tmp))
        else:
            value = self.expr(value)
            term = _tuple(_name(f"{_PREFIX}AWAIT"), value, _const(resume), _const(tmp))
        self.resume_points[resume] = (getattr(node, "lineno", self.lineno), text[:120], tmp)
        self.resume_nodes[resume] = node
        self.close(_ret(term), ("S", resume))
        self.new_block(resume)
        return self.use(tmp) if keep else None

    # -- routing of return/break/continue through lowered ``finally`` -----
    def route_return(self, value: ast.expr | None) -> list[ast.stmt]:
        value = value if value is not None else _const(None)
        if self.finallies:
            f = self.finallies[-1]
            return [ast.Assign([_name(f.comp, ast.Store())], _tuple(_const(_RETK), value)), _ret(_const(f.label))]
        return [_ret(_tuple(_name(f"{_PREFIX}RETURN"), value))]

    def route_jump(self, label: Label, depth: int) -> list[ast.stmt]:
        if len(self.finallies) > depth:
            f = self.finallies[-1]
            return [ast.Assign([_name(f.comp, ast.Store())], _tuple(_const(_JUMP), _const(label), _const(depth))),
                    _ret(_const(f.label))]
        return [_ret(_const(label))]

    def _mark_routes(self, stmts: list[ast.stmt]) -> None:
        for s in stmts:
            if isinstance(s, ast.Assign) and s.targets[0].id.startswith(_PREFIX):
                self.define(s.targets[0].id)

    # -- statements -------------------------------------------------------
    def body(self, stmts: list[ast.stmt]) -> None:
        for s in stmts:
            self.stmt(s)

    def stmt(self, s: ast.stmt) -> None:
        self.lineno = getattr(s, "lineno", self.lineno)
        if isinstance(s, (ast.Global, ast.Nonlocal)):
            return
        if not self.an.suspends(s):
            out = _Verbatim(self).rewrite(s)
            self.emit(*out)
            return
        method = getattr(self, "s_" + type(s).__name__, None)
        if method is None:
            raise _compile_error(f"{type(s).__name__} containing await is not supported", s, self.filename)
        method(s)

    def s_Expr(self, s: ast.Expr) -> None:
        if isinstance(s.value, ast.Await):
            self.suspend(s.value, keep=False)
        else:
            self.emit(ast.Expr(self.expr(s.value)))

    def s_Assign(self, s: ast.Assign) -> None:
        v = self.expr(s.value)
        if any(self.an.suspends(t) for t in s.targets):
            if not _is_simple(v):
                v = self.spill(v)
            for t in s.targets:
                self.emit(ast.Assign([self.children(t)], v))
        else:
            self.emit(ast.Assign(s.targets, v))

    def s_AnnAssign(self, s: ast.AnnAssign) -> None:
        self.s_Assign(ast.copy_location(ast.Assign([s.target], s.value), s))

    def s_AugAssign(self, s: ast.AugAssign) -> None:
        t = s.target
        if isinstance(t, ast.Name):
            self.emit(ast.AugAssign(t, s.op, self.expr(s.value)))
            return
        iop = ast.Attribute(_name(f"{_PREFIX}operator"), _IOPS[type(s.op)].__name__, ast.Load())
        if isinstance(t, ast.Attribute):
            obj = self.expr(t.value)
            obj = obj if _is_simple(obj) else self.spill(obj)
            old = self.spill(ast.Attribute(obj, t.attr, ast.Load()))
            v = self.expr(s.value)
            self.emit(ast.Assign([ast.Attribute(obj, t.attr, ast.Store())], ast.Call(iop, [old, v], [])))
        else:
            obj = self.expr(t.value)
            obj = obj if _is_simple(obj) else self.spill(obj)
            key = self.expr(t.slice)
            key = key if isinstance(key, ast.Constant) else self.spill(key)
            old = self.spill(ast.Subscript(obj, key, ast.Load()))
            v = self.expr(s.value)
            self.emit(ast.Assign([ast.Subscript(obj, key, ast.Store())], ast.Call(iop, [old, v], [])))

    def s_Return(self, s: ast.Return) -> None:
        out = self.route_return(self.expr(s.value))
        self._mark_routes(out)
        self._close_many(out, ("R",))

    def _close_many(self, stmts: list[ast.stmt], exit_) -> None:
        self.emit(*stmts[:-1])
        self.close(stmts[-1], exit_)

    def s_Raise(self, s: ast.Raise) -> None:
        if _is_pause_raise(s):
            self.suspend(s, keep=False)
            return
        exc = self.expr(s.exc)
        if s.cause is not None and self.an.suspends(s.cause) and not _is_simple(exc):
            exc = self.spill(exc)
        cause = self.expr(s.cause)
        self.emit(ast.Raise(exc, cause))

    def s_Assert(self, s: ast.Assert) -> None:
        test = self.expr(s.test)
        end, fail = Label(), Label()
        self.close(ast.If(test, [_ret(_const(end))], [_ret(_const(fail))]), ("B", end, fail))
        self.new_block(fail)
        self.emit(ast.Raise(ast.Call(_name("AssertionError"), [self.expr(s.msg)] if s.msg else [], []), None))
        self.cur.closed = True
        self.new_block(end)

    def s_Delete(self, s: ast.Delete) -> None:
        for t in s.targets:
            self.emit(ast.Delete([self.children(t)]))

    def s_If(self, s: ast.If) -> None:
        test = self.expr(s.test)
        then, other, end = Label(), Label(), Label()
        self.close(ast.If(test, [_ret(_const(then))], [_ret(_const(other if s.orelse else end))]),
                   ("B", then, other if s.orelse else end))
        self.new_block(then)
        self.body(s.body)
        if s.orelse:
            self.start_jump(end)
            self.new_block(other)
            self.body(s.orelse)
        self.start(end)

    def target(self, name: str, ctx) -> ast.expr:
        """A variable as an assignment target (shared variables live in cells)."""
        if name in self.cells:
            return ast.Attribute(_name(name), "cell_contents", ctx)
        return _name(name, ctx)

    def start_jump(self, label: Label) -> None:
        if self.cur is not None and not self.cur.closed:
            self.jump(label)

    def s_While(self, s: ast.While) -> None:
        test_l, body_l, else_l, end = Label(), Label(), Label(), Label()
        self.start(test_l)
        test = self.expr(s.test)
        target = else_l if s.orelse else end
        self.close(ast.If(test, [_ret(_const(body_l))], [_ret(_const(target))]), ("B", body_l, target))
        self.new_block(body_l)
        self.loops.append(_Loop(end, test_l, len(self.finallies)))
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
        self.emit(ast.Assign([_name(it, ast.Store())], ast.Call(_name(f"{_PREFIX}iter"), [iterable], [])))
        self.start(next_l)
        v = self.temps.new()
        target = else_l if s.orelse else end
        self.emit(ast.Assign([_name(v, ast.Store())],
                             ast.Call(_name(f"{_PREFIX}next"), [_name(it), _name(f"{_PREFIX}DONE")], [])))
        self.define(v)
        self.emit(ast.If(ast.Compare(self.use(v), [ast.Is()], [_name(f"{_PREFIX}DONE")]), [_ret(_const(target))], []))
        self.cur.exits.append(("B", target))
        self.emit(ast.Assign([s.target], self.use(v)))
        self.loops.append(_Loop(end, next_l, len(self.finallies)))
        self.body(s.body)
        self.loops.pop()
        self.start_jump(next_l)
        if s.orelse:
            self.new_block(else_l)
            self.body(s.orelse)
        self.start(end)
        self.emit(ast.Expr(ast.Call(ast.Attribute(_name(_LN), "pop", ast.Load()), [_const(it), _const(None)], [])))

    def _normal_exit(self, fin: _Finally | None, end: Label) -> None:
        if self.cur is None or self.cur.closed:
            return
        if fin is not None:
            self.emit(ast.Assign([_name(fin.comp, ast.Store())], _tuple(_const(_NORMAL))))
            self.define(fin.comp)
            self.jump(fin.label)
        else:
            self.jump(end)

    def s_Try(self, s: ast.Try) -> None:
        body_l, disp_l, else_l, fin_l, end = Label(), Label(), Label(), Label(), Label()
        fin = None
        if s.finalbody:
            fin = _Finally(fin_l, self.temps.new("c"), len(self.finallies))
            self.finallies.append(fin)
            self.handlers.append(("finally", fin_l, fin.comp))
        exc_t = self.temps.new("e")
        if s.handlers:
            self.handlers.append(("except", disp_l, exc_t))
        self.start(body_l)
        self.body(s.body)
        if s.orelse:
            self.start_jump(else_l)
        else:
            self._normal_exit(fin, end)
        if s.handlers:
            self.handlers.pop()
            self.new_block(disp_l)
            x = self.temps.new("x")
            self.persistent_temps.add(x)
            self.emit(ast.Assign([_name(x, ast.Store())], self.use(exc_t)))
            labels = [Label() for _ in s.handlers]
            for h, lab in zip(s.handlers, labels):
                if h.type is None:
                    self.emit(_ret(_const(lab)))
                    break
                self.emit(ast.If(ast.Call(_name("isinstance"), [_name(x), h.type], []), [_ret(_const(lab))], []))
            else:
                self.emit(ast.Raise(_name(x), None))
            self.cur.exits.append(("D", *labels))
            self.cur.closed = True
            for h, lab in zip(s.handlers, labels):
                self.exc_vars.append(x)
                self.new_block(lab)
                if h.name:
                    self.emit(ast.Assign([self.target(h.name, ast.Store())], _name(x)))
                self.body(h.body)
                self.exc_vars.pop()
                if self.cur is not None and not self.cur.closed:
                    if h.name:
                        self.emit(ast.Assign([self.target(h.name, ast.Store())], _const(None)),
                                  ast.Delete([self.target(h.name, ast.Del())]))
                    self.emit(ast.Expr(ast.Call(ast.Attribute(_name(_LN), "pop", ast.Load()),
                                                [_const(x), _const(None)], [])))
                self._normal_exit(fin, end)
        if s.orelse:
            self.new_block(else_l)
            self.body(s.orelse)
            self._normal_exit(fin, end)
        if fin is not None:
            self.finallies.pop()
            self.handlers.pop()
            self.pending.append(fin.comp)
            self.new_block(fin_l)
            self.body(s.finalbody)
            self.pending.pop()
            if self.cur is not None and not self.cur.closed:
                c = self.use(fin.comp)
                drop = ast.Call(ast.Attribute(_name(_LN), "pop", ast.Load()), [_const(fin.comp), _const(None)], [])
                self.emit(ast.Expr(drop))
                k = ast.Subscript(c, _const(0), ast.Load())
                outer = self.finallies[-1] if self.finallies else None

                def forward() -> list[ast.stmt]:
                    assert outer is not None
                    self.define(outer.comp)
                    return [ast.Assign([_name(outer.comp, ast.Store())], _name(fin.comp)), _ret(_const(outer.label))]

                if outer is None:
                    on_return = [_ret(_tuple(_name(f"{_PREFIX}RETURN"), ast.Subscript(c, _const(1), ast.Load())))]
                else:
                    on_return = forward()
                on_jump = [ast.If(ast.Compare(ast.Subscript(c, _const(2), ast.Load()), [ast.Eq()], [_const(fin.depth)]),
                                  [_ret(ast.Subscript(c, _const(1), ast.Load()))],
                                  forward() if outer is not None else [])]
                self.emit(
                    ast.If(ast.Compare(k, [ast.Eq()], [_const(_NORMAL)]), [_ret(_const(end))], []),
                    ast.If(ast.Compare(k, [ast.Eq()], [_const(_THROW)]),
                           [ast.Raise(ast.Subscript(c, _const(1), ast.Load()), None)], []),
                    ast.If(ast.Compare(k, [ast.Eq()], [_const(_RETK)]), on_return, []),
                    *on_jump,
                )
                self.cur.exits.append(("F", end))
                self.cur.closed = True
        self.new_block(end)


class _Verbatim(ast.NodeTransformer):
    """Rewrite a statement without suspension points for use inside a block.

    ``return``, and ``break``/``continue`` that leave a lowered loop, become
    jumps; a bare ``raise`` in a lowered handler re-raises its exception.
    """

    def __init__(self, lw: _Lowerer) -> None:
        self.lw = lw
        self.loop_depth = 0
        self.handler_depth = 0

    def rewrite(self, s: ast.stmt) -> list[ast.stmt]:
        out = self.visit(s)
        return out if isinstance(out, list) else [out]

    def visit_FunctionDef(self, node):
        return node

    visit_AsyncFunctionDef = visit_Lambda = visit_ClassDef = visit_FunctionDef

    def _loop(self, node):
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

    def visit_ExceptHandler(self, node):
        self.handler_depth += 1
        node.body = self._stmts(node.body)
        self.handler_depth -= 1
        return node

    def visit_Return(self, node):
        out = self.lw.route_return(node.value)
        self.lw._mark_routes(out)
        self.lw.block().exits.append(("R",))
        return [ast.copy_location(o, node) for o in out]

    def _jump(self, node, brk: bool):
        if self.loop_depth:
            return node
        if not self.lw.loops:
            raise _compile_error("'break' or 'continue' outside a loop", node, self.lw.filename)
        loop = self.lw.loops[-1]
        label = loop.brk if brk else loop.cont
        out = self.lw.route_jump(label, loop.depth)
        self.lw._mark_routes(out)
        self.lw.block().exits.append(("J", label))
        return [ast.copy_location(o, node) for o in out]

    def visit_Break(self, node):
        return self._jump(node, True)

    def visit_Continue(self, node):
        return self._jump(node, False)

    def visit_Raise(self, node):
        if node.exc is None and not self.handler_depth and self.lw.exc_vars:
            return ast.copy_location(ast.Raise(_name(self.lw.exc_vars[-1]), None), node)
        self.generic_visit(node)
        return node


def _ordered_slots(e: ast.AST) -> list[tuple]:
    """Child expressions of ``e`` in Python's evaluation order, as (node, get, put)."""
    slots = []

    def field_slot(obj, name):
        slots.append((obj, lambda: getattr(obj, name), lambda v: setattr(obj, name, v)))

    def list_slot(obj, name, i):
        lst = getattr(obj, name)
        slots.append((obj, lambda: lst[i], lambda v: lst.__setitem__(i, v)))

    def each(obj, name):
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


class _Resolve(ast.NodeTransformer):
    def visit_Constant(self, node):
        if isinstance(node.value, Label):
            return ast.copy_location(ast.Constant(node.value.pc), node)
        return node


def _iter(iterable):
    """The iterator of a ``for`` loop that spans awaits (saved with the frame).

    A ``range`` becomes a ``[next, stop, step]`` cursor: cheaper to pickle
    than a range iterator, and checkpointed on every step of such a loop.
    """
    if iterable.__class__ is range:
        return [iterable.start, iterable.stop, iterable.step]
    return iter(iterable)


def _next(it, done):
    if it.__class__ is list:
        value, stop, step = it
        if (value >= stop) if step > 0 else (value <= stop):
            return done
        it[0] = value + step
        return value
    return next(it, done)


_HELPERS = (
    ("CALL", CALL), ("AWAIT", AWAIT), ("RETURN", RETURN), ("NEXT", NEXT),
    ("operator", operator), ("iter", _iter), ("next", _next),
)


class _Sentinel:
    def __repr__(self) -> str:
        return "<exhausted>"

    def __reduce__(self):
        return (_get_done, ())


DONE = _Sentinel()


def _get_done():
    return DONE


def _named(obj, name: str):
    obj.__name__ = name
    qual = obj.__qualname__.rpartition(".")[0]
    obj.__qualname__ = f"{qual}.{name}" if qual else name
    return obj


def _setcell(cell, value):
    cell.cell_contents = value
    return value


def origin(func) -> tuple[str, int]:
    """(file, first line) of a function's source.

    Async functions defined inside durable code are tagged with it, because a
    copy restored from a checkpoint by value no longer names its file.
    """
    tagged = getattr(func, "__durable_origin__", None)
    if tagged is not None:
        return tagged
    return func.__code__.co_filename, func.__code__.co_firstlineno


def _origin_tag(func):
    func.__durable_origin__ = origin(func)
    return func


def _written(source: str, firstline: int, node: ast.AST) -> tuple[str, str]:
    """What the user wrote for an await (``node``, its line numbers shifted to the file's): its own
    text and the whole lines it spans, each with runs of whitespace collapsed to one space."""
    if getattr(node, "end_lineno", None) is None:
        return "", ""
    shift = firstline - 1

    class _At:  # the node's position in ``source`` (line numbers relative to it)
        lineno, end_lineno = node.lineno - shift, node.end_lineno - shift
        col_offset, end_col_offset = node.col_offset, node.end_col_offset

    lines = source.splitlines()[_At.lineno - 1:_At.end_lineno]
    return " ".join((ast.get_source_segment(source, _At) or "").split()), " ".join(" ".join(lines).split())


def _source_of(func) -> tuple[str, str, int]:
    filename, firstline = origin(func)
    try:
        linecache.checkcache(filename)
        lines = linecache.getlines(filename)
        if not lines:
            raise OSError("source not found")
        block = inspect.getblock(lines[firstline - 1:])
        source = "".join(block)
    except (OSError, TypeError, IndexError, SyntaxError) as exc:
        raise CompileError(f"cannot read the source of {func.__qualname__} ({exc}); durable functions need their "
                           "source code", filename, firstline) from exc
    return textwrap.dedent(source), filename, firstline


class DurableAstTransformer:
    """Compiles async functions into :class:`CompiledFunction` objects.

    One instance caches by code object, so each function is compiled once
    per process.
    """

    def __init__(self) -> None:
        self._cache: dict[Any, tuple] = {}
        self._by_id: dict[int, tuple] = {}
        self._chunks: dict[tuple, tuple] = {}

    def compile(self, func) -> CompiledFunction:
        """Compile ``func`` (an ``async def``), or return the cached result."""
        code = func.__code__
        hit = self._by_id.get(id(code))
        if hit is not None and hit[0] is code and hit[1] is func.__globals__:
            return hit[2]
        # equal code in another module must not share blocks bound to other globals
        key = (code, id(func.__globals__))
        entry = self._cache.get(key)
        if entry is None or entry[0] is not func.__globals__:
            entry = (func.__globals__, self._compile(func))
            self._cache[key] = entry
        self._by_id[id(code)] = (code, func.__globals__, entry[1])
        return entry[1]

    def _compile(self, func) -> CompiledFunction:
        code = func.__code__
        if not (code.co_flags & inspect.CO_COROUTINE):
            raise CompileError(f"{func.__qualname__} is not an async def function", code.co_filename,
                               code.co_firstlineno)
        source, filename, firstline = _source_of(func)
        tree = ast.parse(source)
        ast.increment_lineno(tree, firstline - 1)
        node = tree.body[0]
        if not isinstance(node, ast.AsyncFunctionDef):
            raise CompileError(f"{func.__qualname__}: expected an async def", filename, firstline)
        _validate(node, filename)
        parts = func.__qualname__.split(".")
        if len(parts) >= 2 and parts[-2] != "<locals>":
            _mangle(node, parts[-2])
        cells = set(code.co_cellvars) | set(code.co_freevars)
        globals_ = sorted({n for s in node.body for g in _walk_scope(s) if isinstance(g, ast.Global)
                           for n in g.names})
        if "__class__" in code.co_freevars:
            _fix_super(node, code)
        body = []
        for stmt in node.body:
            out = _CellRewriter(cells).visit(stmt)
            body.extend(out if isinstance(out, list) else [out])
        argnames = code.co_varnames[:code.co_argcount + code.co_kwonlyargcount
                                    + bool(code.co_flags & inspect.CO_VARARGS)
                                    + bool(code.co_flags & inspect.CO_VARKEYWORDS)]
        persisted = set(code.co_varnames) | cells
        lw = _Lowerer(filename, _Temps(), cells=frozenset(cells))
        lw.lineno = node.lineno
        lw.new_block()
        lw.body(body)
        if lw.cur is not None and not lw.cur.closed:
            out = lw.route_return(None)
            lw._close_many(out, ("R",))
        blocks = _build(lw, persisted, globals_, filename, func.__globals__, f"{func.__qualname__}")
        bind_code = _bind_code(node, filename)
        layout = _layout(lw, sorted(persisted))
        return CompiledFunction(
            name=func.__name__, qualname=func.__qualname__, filename=filename, firstlineno=firstline,
            blocks=blocks, cellvars=tuple(code.co_cellvars), freevars=tuple(code.co_freevars),
            argnames=tuple(argnames), bind_code=bind_code,
            source_hash=hashlib.sha256(source.encode()).hexdigest()[:16], layout_hash=layout,
            resume_points={lab.pc: v for lab, v in lw.resume_points.items()},
            resume_sources={lab.pc: _written(source, firstline, n) for lab, n in lw.resume_nodes.items()},
        )

    def compile_chunk(self, chunk: CodeChunk, base: int, globals_: dict, known: frozenset = frozenset()) -> tuple:
        """Compile appended source text into blocks numbered from ``base``.

        ``known`` are the names earlier chunks of the call assign; with the
        names this chunk assigns they are the call's locals. Returns the blocks
        and the names this chunk assigns.
        """
        key = (chunk, base, id(globals_), known)
        hit = self._chunks.get(key)
        if hit is not None:
            return hit
        wrapped = "async def __chunk__():\n" + textwrap.indent(chunk.source, "    ")
        try:
            tree = ast.parse(wrapped, chunk.filename)
            code = compile(tree, chunk.filename, "exec")
        except SyntaxError as exc:
            raise CompileError(f"cannot compile code block: {exc.msg}", chunk.filename,
                               (exc.lineno or 2) - 1) from exc
        fcode = next(c for c in code.co_consts if isinstance(c, types.CodeType))
        own = frozenset(fcode.co_varnames) | frozenset(fcode.co_cellvars)
        ast.increment_lineno(tree, -1)
        node = tree.body[0]
        _validate(node, chunk.filename)
        lw = _Lowerer(chunk.filename, _Temps(), chunk=True, base=base)
        lw.temps.n = base * 1000
        lw.new_block()
        lw.body(node.body)
        if lw.cur is not None and not lw.cur.closed:
            lw.close(_ret(_tuple(_name(f"{_PREFIX}NEXT"))), ("N",))
        blocks = _build(lw, set(own | known), [], chunk.filename, globals_, "<chunk>", base=base)
        self._chunks[key] = (blocks, own)
        return blocks, own


def _fix_super(node: ast.AsyncFunctionDef, code) -> None:
    if not node.args.args and not node.args.posonlyargs:
        return
    first = (node.args.posonlyargs + node.args.args)[0].arg
    for n in (n for stmt in node.body for n in _walk_scope(stmt)):
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "super" and not n.args:
            n.args = [_name("__class__"), _name(first)]


def _bind_code(node: ast.AsyncFunctionDef, filename: str):
    args = ast.arguments(
        posonlyargs=[ast.arg(a.arg) for a in node.args.posonlyargs],
        args=[ast.arg(a.arg) for a in node.args.args],
        vararg=ast.arg(node.args.vararg.arg) if node.args.vararg else None,
        kwonlyargs=[ast.arg(a.arg) for a in node.args.kwonlyargs],
        kw_defaults=[None if d is None else _const(None) for d in node.args.kw_defaults],
        kwarg=ast.arg(node.args.kwarg.arg) if node.args.kwarg else None,
        defaults=[_const(None) for _ in node.args.defaults],
    )
    names = [a.arg for a in node.args.posonlyargs + node.args.args]
    if node.args.vararg:
        names.append(node.args.vararg.arg)
    names += [a.arg for a in node.args.kwonlyargs]
    if node.args.kwarg:
        names.append(node.args.kwarg.arg)
    ret = ast.Return(ast.Dict([_const(n) for n in names], [_name(n) for n in names]))
    fn = ast.FunctionDef(name=node.name, args=args, body=[ret], decorator_list=[], returns=None, type_params=[])
    mod = ast.Module([fn], [])
    ast.fix_missing_locations(mod)
    ast.increment_lineno(mod, node.lineno - 1)
    code = compile(mod, filename, "exec")
    return next(c for c in code.co_consts if isinstance(c, types.CodeType))


def _layout(lw: _Lowerer, persisted: list[str]) -> str:
    """A hash of the step structure; unchanged by edits inside a block."""
    parts = [repr(persisted)]
    for b in lw.blocks:
        exits = [(e[0], *[x.pc if isinstance(x, Label) else x for x in e[1:]]) for e in b.exits]
        h = None if b.handler is None else (b.handler[0], b.handler[1].pc)
        parts.append(repr((h, exits)))
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def _build(lw: _Lowerer, persisted: set[str], globals_names: list[str], filename: str, fn_globals: dict,
           qualname: str, base: int = 0) -> tuple:
    """Generate one Python function per block and create them in one go."""
    defs = []
    resolved = [[_Resolve().visit(s) for s in b.stmts] for b in lw.blocks]
    loads = [_loaded(stmts) for stmts in resolved]
    stores = [_assigned(stmts) for stmts in resolved]
    consumed: dict[str, set[int]] = {}
    for i, (ld, st) in enumerate(zip(loads, stores)):
        for t in ld - st:
            if _TEMP.match(t) and t not in lw.persistent_temps:
                consumed.setdefault(t, set()).add(i)
    for i, b in enumerate(lw.blocks):
        stmts = resolved[i]
        assigned = stores[i]
        referenced = loads[i] | assigned
        temps_in = sorted(t for t in loads[i] - assigned if t in consumed)
        prologue: list[ast.stmt] = []
        if globals_names:
            prologue.append(ast.Global(list(globals_names)))
        for name in sorted((referenced & persisted) | (referenced & lw.persistent_temps)):
            prologue.append(ast.If(ast.Compare(_const(name), [ast.In()], [_name(_LN)]),
                                   [ast.Assign([_name(name, ast.Store())], ast.Subscript(_name(_LN), _const(name),
                                                                                          ast.Load()))], []))
        for t in temps_in:
            take = "get" if t == b.pending else "pop"
            prologue.append(ast.Assign([_name(t, ast.Store())], ast.Call(ast.Attribute(_name(_LN), take, ast.Load()),
                                                                         [_const(t)], [])))
        out_names = sorted((assigned & persisted) | (assigned & lw.persistent_temps)
                           | {t for t in assigned if consumed.get(t, set()) - {i}})
        if b.handling is not None:
            stmts = [ast.Try(body=[ast.Raise(_name(b.handling), None)],
                             handlers=[ast.ExceptHandler(_name("BaseException"), None, stmts)], orelse=[],
                             finalbody=[])]
            if b.handling not in referenced:
                prologue.append(ast.Assign([_name(b.handling, ast.Store())],
                                           ast.Subscript(_name(_LN), _const(b.handling), ast.Load())))
        body = stmts
        if out_names:
            writeback = []
            for name in out_names:
                writeback.append(ast.Try(
                    body=[ast.Assign([ast.Subscript(_name(_LN), _const(name), ast.Store())], _name(name))],
                    handlers=[ast.ExceptHandler(_name("NameError"), None, [
                        ast.Expr(ast.Call(ast.Attribute(_name(_LN), "pop", ast.Load()), [_const(name), _const(None)],
                                          []))])],
                    orelse=[], finalbody=[]))
            body = [ast.Try(body=stmts, handlers=[], orelse=[], finalbody=writeback)]
        fdef = ast.FunctionDef(name=f"{_PREFIX}b{b.index}", args=ast.arguments(
            posonlyargs=[], args=[ast.arg(_LN)], vararg=None, kwonlyargs=[], kw_defaults=[], kwarg=None,
            defaults=[]), body=prologue + body, decorator_list=[], returns=None, type_params=[])
        _set_lines(fdef, b.lineno)
        defs.append(fdef)
    helper_names = [f"{_PREFIX}{n}" for n, _ in _HELPERS] + [f"{_PREFIX}DONE", f"{_PREFIX}pause", f"{_PREFIX}setcell",
                                                             f"{_PREFIX}named", f"{_PREFIX}origin"]
    ret = ast.Return(ast.Tuple([_name(d.name) for d in defs], ast.Load()))
    make = ast.FunctionDef(name=f"{_PREFIX}make", args=ast.arguments(
        posonlyargs=[], args=[ast.arg(n) for n in helper_names], vararg=None, kwonlyargs=[], kw_defaults=[],
        kwarg=None, defaults=[]), body=defs + [ret], decorator_list=[], returns=None, type_params=[])
    _set_lines(make, lw.blocks[0].lineno if lw.blocks else 1)
    mod = ast.Module([make], [])
    try:
        code = compile(mod, filename, "exec")
    except SyntaxError as exc:
        raise CompileError(f"{qualname}: internal compile failure: {exc}", filename, exc.lineno) from exc
    make_code = next(c for c in code.co_consts if isinstance(c, types.CodeType))
    from .primitives import pause_request
    helpers = [v for _, v in _HELPERS] + [DONE, pause_request, _setcell, _named, _origin_tag]
    fns = types.FunctionType(make_code, fn_globals)(*helpers)
    return tuple(CodeBlock(fn, _handler(b), b.lineno, b.index, b.pending, _tail(b, stmts))
                 for fn, b, stmts in zip(fns, lw.blocks, resolved))


def _tail(b: _Block, stmts: list[ast.stmt]) -> bool:
    """:attr:`CodeBlock.tail` of block ``b``: assignments of names or constants, then ``return`` of one."""
    if b.handler is not None or b.handling is not None or b.pending is not None:
        return False
    for s in stmts:
        if isinstance(s, ast.Return):  # what follows it is unreachable
            v = s.value
            return (isinstance(v, ast.Tuple) and len(v.elts) == 2 and isinstance(v.elts[0], ast.Name)
                    and v.elts[0].id == f"{_PREFIX}RETURN" and isinstance(v.elts[1], ast.Name | ast.Constant))
        if not (isinstance(s, ast.Assign) and len(s.targets) == 1 and isinstance(s.targets[0], ast.Name)
                and isinstance(s.value, ast.Name | ast.Constant)):
            return False
    return False


def _loaded(stmts: list[ast.stmt]) -> set[str]:
    """Names read anywhere in the statements (nested scopes included)."""
    return {n.id for s in stmts for n in ast.walk(s) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}


def _handler(b: _Block):
    if b.handler is None:
        return None
    kind, label, var = b.handler
    return (kind, label.pc, var)


def _set_lines(node: ast.AST, lineno: int) -> None:
    for n in ast.walk(node):
        if "lineno" in n._attributes:
            if getattr(n, "lineno", None) is None:
                n.lineno = lineno
                n.col_offset = 0
            if getattr(n, "end_lineno", None) is None or n.end_lineno < n.lineno:
                n.end_lineno = n.lineno
                n.end_col_offset = 0
    ast.fix_missing_locations(node)
