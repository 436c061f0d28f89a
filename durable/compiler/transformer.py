"""The compiler's entry point: runs the passes over a function (or an appended chunk) and caches the result."""

from __future__ import annotations

import ast
import hashlib
import inspect
import linecache
import textwrap
import types
from typing import Any

from ..blocks import CodeBlock, CodeChunk, CompiledFunction, origin
from ..exceptions import CompileError
from .assemble import bind_code, build, layout
from .builder import ChunkEnd, Label, Temps
from .lower import Lowerer
from .scopes import resolve_scopes
from .syntax import helper, mk_return, mk_tuple
from .validate import validate


class DurableAstTransformer(ast.NodeTransformer):
    """Compiles async functions into :class:`CompiledFunction` objects.

    One instance caches by code object, so each function is compiled once
    per process (:meth:`compile`, what ``make_durable`` uses).

    It is also an :class:`ast.NodeTransformer`, as in the seed:
    ``visit(module_tree)`` checks every module-level ``async def`` (a
    :class:`~durable.CompileError` with file and line for what cannot be
    checkpointed) and decorates it with ``durable.make_durable``, so the
    module, compiled and run, binds each name to a :class:`~durable.DurableProgram`.
    Unlike the seed's, the tree it returns holds the user's code unchanged:
    the checkpointable blocks are made from the function's source when the
    decorator runs, so the tree must be compiled with the file name its
    source can be read from (see docs/stores.md, "The seed's contracts").
    """

    def __init__(self, filename: str = "<ast>") -> None:
        #: Where the trees given to :meth:`visit` come from (for the errors' file:line).
        self.filename = filename
        self._cache: dict[tuple[types.CodeType, int], tuple[dict[str, Any], CompiledFunction]] = {}
        self._by_id: dict[int, tuple[types.CodeType, dict[str, Any], CompiledFunction]] = {}
        self._chunks: dict[tuple[CodeChunk, int, int, frozenset[str]],
                           tuple[tuple[CodeBlock, ...], frozenset[str]]] = {}

    def visit_Module(self, node: ast.Module) -> ast.Module:
        """Check and decorate the module-level ``async def`` functions (nested ones are compiled when called)."""
        for stmt in node.body:
            if isinstance(stmt, ast.AsyncFunctionDef) and not any(_is_make_durable(d) for d in stmt.decorator_list):
                validate(stmt, self.filename)
                # innermost, so make_durable receives the plain function; on the def's line, so that
                # the code's first line (where the source is read from) stays the user's
                deco = ast.Attribute(value=ast.Call(func=ast.Name(id="__import__", ctx=ast.Load()),
                                                    args=[ast.Constant(value="durable")], keywords=[]),
                                     attr="make_durable", ctx=ast.Load())
                stmt.decorator_list.append(ast.copy_location(deco, stmt))
        ast.fix_missing_locations(node)
        return node

    def visit_AsyncFunctionDef(self, node: ast.AsyncFunctionDef) -> ast.AsyncFunctionDef:
        """Check one ``async def`` on its own (a :class:`~durable.CompileError` for what cannot be checkpointed)."""
        validate(node, self.filename)
        return node

    def compile(self, func: Any) -> CompiledFunction:
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

    def _compile(self, func: Any) -> CompiledFunction:
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
        validate(node, filename)
        scope = resolve_scopes(node, code, func.__qualname__)
        argnames = code.co_varnames[:code.co_argcount + code.co_kwonlyargcount
                                    + bool(code.co_flags & inspect.CO_VARARGS)
                                    + bool(code.co_flags & inspect.CO_VARKEYWORDS)]
        lw = Lowerer(filename, Temps(), cells=scope.cells)
        lw.lineno = node.lineno
        lw.new_block()
        lw.body(scope.body)
        lw.end_function()
        blocks = build(lw, scope.persisted, scope.globals, filename, func.__globals__, f"{func.__qualname__}")
        return CompiledFunction(
            name=func.__name__, qualname=func.__qualname__, filename=filename, firstlineno=firstline,
            blocks=blocks, cellvars=tuple(code.co_cellvars), freevars=tuple(code.co_freevars),
            argnames=tuple(argnames), bind_code=bind_code(node, filename),
            source_hash=hashlib.sha256(source.encode()).hexdigest()[:16],
            layout_hash=layout(lw, sorted(scope.persisted)),
            resume_points={_pc(lab): v for lab, v in lw.resume_points.items()},
            resume_sources={_pc(lab): _written(source, firstline, n) for lab, n in lw.resume_nodes.items()},
        )

    def compile_chunk(self, chunk: CodeChunk, base: int, globals_: dict[str, Any],
                      known: frozenset[str] = frozenset()) -> tuple[tuple[CodeBlock, ...], frozenset[str]]:
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
        assert isinstance(node, ast.AsyncFunctionDef)
        validate(node, chunk.filename)
        lw = Lowerer(chunk.filename, Temps(), base=base)
        lw.temps.n = base * 1000
        lw.new_block()
        lw.body(node.body)
        if lw.is_open():
            lw.close(mk_return(mk_tuple(helper("NEXT"))), ChunkEnd())
        blocks = build(lw, set(own | known), [], chunk.filename, globals_, "<chunk>", base=base)
        self._chunks[key] = (blocks, own)
        return blocks, own


def _pc(label: Label) -> int:
    assert label.pc is not None  # a resume point's block is started right after its await
    return label.pc


def _is_make_durable(node: ast.expr) -> bool:
    """Is this decorator ``make_durable`` (bare, dotted or called with options)?"""
    if isinstance(node, ast.Call):
        node = node.func
    return (isinstance(node, ast.Name) and node.id == "make_durable") or (
        isinstance(node, ast.Attribute) and node.attr == "make_durable")


def _source_of(func: Any) -> tuple[str, str, int]:
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


def _written(source: str, firstline: int, node: ast.Await | ast.Raise) -> tuple[str, str]:
    """What the user wrote for an await (``node``, its line numbers shifted to the file's): its own
    text and the whole lines it spans, each with runs of whitespace collapsed to one space."""
    if getattr(node, "end_lineno", None) is None or node.end_lineno is None:
        return "", ""
    shift = firstline - 1
    # the node's position in ``source`` (line numbers relative to it)
    at = ast.Constant(None, lineno=node.lineno - shift, end_lineno=node.end_lineno - shift,
                      col_offset=node.col_offset, end_col_offset=node.end_col_offset)
    lines = source.splitlines()[node.lineno - shift - 1:node.end_lineno - shift]
    return " ".join((ast.get_source_segment(source, at) or "").split()), " ".join(" ".join(lines).split())
