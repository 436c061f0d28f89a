"""Compile an ``async def`` into checkpointable code blocks (the protocol: :mod:`durable.blocks`).

The body is split at every suspension point (``await``, and
``raise PauseForEventException(...)``) into straight-line blocks; control
flow that spans suspension points (loops, ``if``, ``try``) becomes jumps
between blocks, with ``finally`` implemented by completion records, as in a
regenerator-style state machine. Statements without suspension points are
kept verbatim, so they run at native speed. Inside a block, locals are fast
locals, loaded from ``L`` on entry and written back on exit.

The passes, in order (:class:`DurableAstTransformer` runs them):

1. ``validate``: refuse what cannot be checkpointed (:class:`~durable.CompileError` with file and line);
2. ``scopes``: shared variables through cells, name mangling, ``super()``;
3. ``awaits``: an expression containing an ``await`` as steps in evaluation order (4 asks for each);
4. ``lower``: statements into blocks with typed exits (``builder``);
5. ``assemble``: blocks into Python functions, the layout fingerprint, the argument binder.

``runtime_support`` holds what the generated blocks call at run time.
"""

from ..blocks import AWAIT, CALL, NEXT, RETURN, Cell, CodeBlock, CodeChunk, CompiledFunction, free_cells, origin
from .runtime_support import DONE, get_done, named, origin_tag, setcell
from .transformer import DurableAstTransformer

# The import paths checkpoints written before the compiler became a package use for these objects
# (a Cell, the exhausted-loop sentinel, helpers in the closures of nested functions saved by value).
_get_done = get_done
_setcell = setcell
_named = named
_origin_tag = origin_tag

__all__ = [
    "AWAIT", "CALL", "DONE", "NEXT", "RETURN", "Cell", "CodeBlock", "CodeChunk", "CompiledFunction",
    "DurableAstTransformer", "free_cells", "origin",
]
