"""Pass 1, validation and analysis.

Takes the parsed ``async def`` and refuses what cannot be checkpointed (async
generators, ``async for``/``async with``, awaits inside ``with``, ``match``,
``try/except*``, comprehensions, decorators and defaults, tasks started with
``asyncio.create_task``/``ensure_future`` and ``asyncio.wait``), raising
:class:`~durable.CompileError` with file and line. Produces nothing else; the
tree is unchanged.

:class:`Analysis` answers, for the lowering, which nodes contain a suspension
point (an ``await`` or ``raise PauseForEventException(...)``).
"""

from __future__ import annotations

import ast

from ..exceptions import CompileError
from .syntax import COMPS, is_pause_raise, walk_scope


def compile_error(msg: str, node: ast.AST | None, filename: str) -> CompileError:
    return CompileError(msg, filename, getattr(node, "lineno", None))


def _has_await(node: ast.AST) -> bool:
    return any(isinstance(n, ast.Await) for n in ast.walk(node))


#: Calls that start asyncio tasks (which cannot be saved in a checkpoint), and the durable form to use instead.
_TASKS = {
    "create_task": "await durable.gather(...) to run calls as parallel branches (durable.first(...) for the first "
                   "to finish), or durable.start_child(...) for a separate process",
    "ensure_future": "await durable.gather(...) to run calls as parallel branches (durable.first(...) for the first "
                     "to finish), or durable.start_child(...) for a separate process",
    "wait": "await durable.gather(...) for all of them, or durable.first(...) for the first to finish",
}


def _task_call(node: ast.AST) -> str | None:
    """The name of an ``asyncio.create_task(...)``-like call (``asyncio.wait`` only when written so), or None."""
    if not isinstance(node, ast.Call):
        return None
    f = node.func
    if isinstance(f, ast.Attribute) and f.attr in _TASKS:
        if f.attr != "wait" or (isinstance(f.value, ast.Name) and f.value.id == "asyncio"):
            return f"{ast.unparse(f)}()"
    if isinstance(f, ast.Name) and f.id in ("create_task", "ensure_future"):
        return f"{f.id}()"
    return None


def validate(fn_node: ast.AsyncFunctionDef, filename: str) -> None:
    """Refuse what cannot be checkpointed, naming file, line and construct."""

    def check(node: ast.AST, ctx: str | None) -> None:
        for child in ast.iter_child_nodes(node):
            c = ctx
            if isinstance(child, (ast.Yield, ast.YieldFrom)):
                raise compile_error("async generators (yield inside async def) cannot be made durable", child,
                                    filename)
            if isinstance(child, ast.AsyncFor):
                raise compile_error(
                    "'async for' cannot be checkpointed; iterate inside a helper async def (it runs as one step)",
                    child, filename)
            if isinstance(child, ast.AsyncWith):
                raise compile_error(
                    "'async with' cannot be checkpointed; use it inside a helper async def (it runs as one step)",
                    child, filename)
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
                # nested bodies are separate scopes; only check their default/decorator expressions
                heads: list[ast.expr] = []
                if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                    heads = [d for d in child.args.defaults + child.args.kw_defaults if d is not None]
                    heads += getattr(child, "decorator_list", [])
                else:
                    heads = child.decorator_list + child.bases + [k.value for k in child.keywords]
                for h in heads:
                    if _has_await(h):
                        raise compile_error(
                            "await in a decorator, default or base of a nested definition is not supported",
                            h, filename)
                continue
            if isinstance(child, COMPS):
                if any(g.is_async for g in child.generators):
                    raise compile_error("an async comprehension cannot be checkpointed; use a for loop", child,
                                        filename)
                if _has_await(child):
                    raise compile_error("await inside a comprehension cannot be checkpointed; use a for loop", child,
                                        filename)
                continue
            task = _task_call(child)
            if task is not None:
                name = task.rstrip("()").rpartition(".")[2]
                raise compile_error(f"{task} runs a task the instance cannot checkpoint; use {_TASKS[name]}",
                                    child, filename)
            if isinstance(child, ast.Await) or is_pause_raise(child):
                if ctx:
                    what = "await" if isinstance(child, ast.Await) else "raise PauseForEventException"
                    raise compile_error(f"{what} inside {ctx} cannot be checkpointed", child, filename)
            if isinstance(child, ast.With):
                c = "a 'with' block (the context manager cannot be saved)"
            elif isinstance(child, ast.Match):
                c = "a 'match' statement"
            elif isinstance(child, ast.TryStar):
                c = "a 'try/except*' statement"
            elif isinstance(child, ast.ExceptHandler) and child.type is not None:
                if _has_await(child.type):
                    raise compile_error("await in an except clause's type is not supported", child, filename)
            check(child, c)

    check(fn_node, None)


class Analysis:
    """Caches which nodes contain suspension points (not looking into nested scopes)."""

    def __init__(self) -> None:
        self._cache: dict[int, tuple[ast.AST, bool]] = {}

    def suspends(self, node: ast.AST) -> bool:
        # keyed by id() but holding the node, so an id is never reused while cached
        hit = self._cache.get(id(node))
        if hit is not None and hit[0] is node:
            return hit[1]
        found = any(isinstance(n, ast.Await) or is_pause_raise(n) for n in walk_scope(node))
        self._cache[id(node)] = (node, found)
        return found
