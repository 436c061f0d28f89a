"""The execution model: frames of compiled functions on a call stack.

A :class:`FunctionCall` is what gets checkpointed for each active call: which
function, which block comes next (``pc``), and its locals. Frames pickle by
reference to their function, so a saved stack can be resumed in another
process that imports the same code.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

from .blocks import LOCAL_PREFIX, Cell, CodeBlock, CodeChunk, CompiledFunction, free_cells
from .compiler import DurableAstTransformer
from .exceptions import CodeChangedError

transformer = DurableAstTransformer()


class FunctionCall:
    """One active call of a durable function (or a script of code chunks)."""

    __slots__ = ("func", "compiled", "blocks", "locals", "pc", "tmp", "chunks", "module", "fingerprint")

    def __init__(self, func=None, compiled: CompiledFunction | None = None, locals: dict | None = None,
                 pc: int = 0, *, module: str = "__main__") -> None:
        self.func = func
        self.compiled = compiled
        self.blocks: tuple | list = compiled.blocks if compiled is not None else ()
        self.locals: dict[str, Any] = {} if locals is None else locals
        self.pc = pc
        self.tmp: str | None = None
        self.chunks: list[CodeChunk] = []
        self.module = module
        self.fingerprint = (compiled.source_hash, compiled.layout_hash) if compiled is not None else None

    @classmethod
    def start(cls, func, args: tuple = (), kwargs: dict | None = None) -> FunctionCall:
        """A new frame for ``func(*args, **kwargs)``."""
        compiled = transformer.compile(func)
        return cls(func, compiled, compiled.bind(func, args, kwargs or {}))

    @property
    def code_blocks(self) -> list[CodeBlock]:
        """The blocks this call runs, in order (``pc`` indexes them)."""
        return list(self.blocks)

    @property
    def name(self) -> str:
        return self.compiled.qualname if self.compiled is not None else "<script>"

    @property
    def layout_hash(self) -> str | None:
        """The step layout this frame was saved under (kept across code fixes that keep it); None for scripts."""
        return self.fingerprint[1] if self.fingerprint is not None else None

    def user_locals(self) -> dict[str, Any]:
        """The locals as the user's code sees them: for screens, reports and edits.

        Variables shared with nested functions are kept in cells; their
        contents are shown (a cell not assigned yet is left out, like any
        unassigned local). The compiler's temporaries (names starting with
        ``_dur__``: iterators, pending exceptions, hidden definitions) are
        left out.
        """
        out = {}
        for name, value in self.locals.items():
            if name.startswith(LOCAL_PREFIX):
                continue
            if value.__class__ is Cell or value.__class__ is types.CellType:
                try:
                    value = value.cell_contents
                except (NameError, ValueError):  # an empty Cell raises NameError, an empty closure cell ValueError
                    continue
            out[name] = value
        return out

    def set_user_local(self, name: str, value: Any) -> None:
        """Assign a local that :meth:`user_locals` shows (inside its cell when it has one).

        Raises ``KeyError`` for a name :meth:`user_locals` does not show.
        """
        if name not in self.user_locals():
            raise KeyError(name)
        cell = self.locals[name]
        if cell.__class__ is Cell:
            cell.cell_contents = value
        else:
            self.locals[name] = value

    def append_code_block(self, block: CodeChunk | str) -> None:
        """Append code to run after the blocks already in this call.

        Accepts source text, or a chunk from ``CodeBlock.from_source(text)``:
        statements (awaits allowed, as in an ``async def`` body) that run in
        this call's namespace once control reaches the end of the previous
        chunk. A ``return`` in a chunk ends the call. Only calls created
        without a function (``FunctionCall()``) reach appended chunks.
        """
        chunk = block if isinstance(block, CodeChunk) else CodeBlock.from_source(block)
        if not isinstance(chunk, CodeChunk):
            raise TypeError(f"append_code_block() takes source text or CodeBlock.from_source(...), not {block!r}")
        known = frozenset().union(*(transformer.compile_chunk(c, 0, self._globals())[1] for c in self.chunks))
        new, _ = transformer.compile_chunk(chunk, len(self.blocks), self._globals(), known)
        self.blocks = tuple(self.blocks) + new
        self.chunks.append(chunk)

    def _globals(self) -> dict:
        if self.func is not None:
            return self.func.__globals__
        return sys.modules[self.module].__dict__

    def position(self) -> str:
        """Where this call stands, for people (function, line, awaited expression)."""
        if self.compiled is None:
            return f"<script> block {self.pc}"
        return self.compiled.describe(self.pc)

    def resume_points(self) -> list[tuple[int, int, str]]:
        """(pc, line, source) of every await of this call's function, for migrations."""
        if self.compiled is None:
            return []
        return [(pc, line, text) for pc, (line, text, _) in sorted(self.compiled.resume_points.items())]

    def move_to(self, where: str | int) -> None:
        """Make this (paused) call continue after an await of the current code; the locals are kept.

        Meant for migrations of instances paused under code whose step layout
        changed. ``where`` is a line number (the first await that starts on
        that line) or text, matched in this order, the first await in code
        order winning at each stage: (1) the await as written in the file,
        from ``await`` to the end of its expression (``raise
        PauseForEventException(...)``: the raise statement); (2) the form
        :meth:`resume_points` shows (Python's re-printed source, single
        quotes); (3) the whole source lines the await spans (so the assigned
        name may be included). Runs of whitespace count as one space, in
        ``where`` and in the source. No match raises ``ValueError`` listing
        the resume points.
        """
        compiled = self.compiled
        points = sorted(compiled.resume_points.items()) if compiled is not None else []
        if isinstance(where, int) and not isinstance(where, bool):
            found = next((pc for pc, (line, _, _) in points if line == where), None)
        elif isinstance(where, str) and where.strip():
            want = " ".join(where.split())
            sources = compiled.resume_sources if compiled is not None else {}
            stages = (lambda pc, text: sources.get(pc, ("", ""))[0],
                      lambda pc, text: " ".join(text.split()),
                      lambda pc, text: sources.get(pc, ("", ""))[1])
            found = next((pc for stage in stages for pc, (_, text, _) in points if want in stage(pc, text)), None)
        else:
            raise TypeError(f"move_to() takes a line number or source text, not {where!r}")
        if found is None:
            listed = "; ".join(f"line {line}: {text}" for _, (line, text, _) in points) or "none"
            raise ValueError(f"no await matching {where!r} in {self.name}; its resume points are: {listed}")
        self.pc, self.tmp = found, dict(points)[found][2]

    def __reduce__(self):
        loc = self.locals
        if self.compiled is not None and self.compiled.freevars:
            loc = {k: v for k, v in loc.items() if k not in self.compiled.freevars}
        return (_restore, (func_ref(self.func), self.pc, loc, self.tmp, self.fingerprint, tuple(self.chunks),
                           self.module))

    def __repr__(self) -> str:
        return f"<FunctionCall {self.position()}>"


def func_ref(func: Any) -> Any:
    """How a frame names its function in a checkpoint: by import path when it
    has one (so restored frames run the code installed now), else by value."""
    if func is None or "<locals>" in func.__qualname__ or func.__module__ is None:
        return func
    return (func.__module__, func.__qualname__)


def resolve_func(ref: Any) -> Any:
    """The function a :func:`func_ref` names (unwrapping a DurableProgram)."""
    if not isinstance(ref, tuple):
        return ref
    module, qualname = ref
    try:
        obj = sys.modules.get(module) or importlib.import_module(module)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise CodeChangedError(f"the code of a paused frame, {module}.{qualname}, cannot be found: {exc}") from exc
    obj = getattr(obj, "fn", obj)
    return getattr(obj, "__func__", obj)


def _restore(func, pc, loc, tmp, fingerprint, chunks, module):
    func = resolve_func(func)
    fr = FunctionCall.__new__(FunctionCall)
    fr.func = func
    fr.pc = pc
    fr.locals = loc
    fr.tmp = tmp
    fr.module = module
    fr.chunks = []
    fr.fingerprint = fingerprint
    if func is not None:
        fr.compiled = transformer.compile(func)
        fr.blocks = fr.compiled.blocks
        if fr.compiled.freevars and func.__closure__:
            loc.update(free_cells(fr.compiled.freevars, func.__closure__))
    else:
        fr.compiled = None
        fr.blocks = ()
    for chunk in chunks:
        fr.append_code_block(chunk)
    return fr


def check_code(frame: FunctionCall, migrate=None) -> None:
    """Refuse to resume a frame whose function's step layout changed.

    A changed source with the same layout (a fix inside a block) resumes. A
    changed layout raises :class:`CodeChangedError` unless ``migrate`` (a
    callable taking the frame) adapts the frame and returns True.
    """
    if frame.compiled is None or frame.fingerprint is None:
        return
    src, layout = frame.fingerprint
    if layout == frame.compiled.layout_hash:
        frame.fingerprint = (frame.compiled.source_hash, layout)
        return
    if migrate is not None:
        saved = frame.pc, frame.tmp
        try:
            migrated = migrate(frame)
        except Exception as exc:  # a migration that cannot adapt the frame: the instance cannot resume safely
            frame.pc, frame.tmp = saved
            raise CodeChangedError(
                f"the migration of {frame.compiled.qualname} ({frame.compiled.filename}), paused at step {frame.pc} "
                f"of the old layout {layout}, raised {type(exc).__name__}: {exc}") from exc
        if migrated:
            frame.fingerprint = (frame.compiled.source_hash, frame.compiled.layout_hash)
            return
    raise CodeChangedError(
        f"{frame.compiled.qualname} ({frame.compiled.filename}) changed its step layout since this instance was "
        f"checkpointed (layout {layout} -> {frame.compiled.layout_hash}); it cannot resume safely at step "
        f"{frame.pc}. Restore the old code, or supply a migration.")


class CallStack:
    """The frames of one instance, innermost last."""

    __slots__ = ("frames",)

    def __init__(self, frames: list[FunctionCall] | None = None) -> None:
        self.frames = frames or []

    def push(self, frame: FunctionCall) -> None:
        self.frames.append(frame)

    def pop(self) -> FunctionCall:
        return self.frames.pop()

    @property
    def top(self) -> FunctionCall:
        return self.frames[-1]

    def __len__(self) -> int:
        return len(self.frames)

    def __iter__(self):
        return iter(self.frames)

    def __reduce__(self):
        return (CallStack, (self.frames,))

    def __repr__(self) -> str:
        return "<CallStack " + " > ".join(f.position() for f in self.frames) + ">"
