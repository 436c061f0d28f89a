"""The durable call chain in tracebacks.

A durable function's caller is not a Python frame: the runtime runs one block
at a time from its step loop, and after a resume the callers exist only as
:class:`~durable.stack.FunctionCall` objects. Without help, a failure three
durable calls deep shows one frame. This module rebuilds the story plain
Python would tell, on the exception path only (the step loop never calls it
for a step that succeeds):

* :func:`enter` is called when an exception reaches the runtime: the
  runtime's own frame is dropped from its traceback and, when the exception
  did not come out of a block (an awaited coroutine, a failed call, a wait
  that timed out), an entry for the awaiting call is added at its ``await``.
* :func:`unwind` is called each time the exception leaves a durable call for
  its caller: an entry for the caller at its ``await`` is added in front,
  as CPython does when an exception passes through a frame.
* :func:`remember` stores a picklable summary on a failed instance's error so
  that :func:`restore` can show the chain again when the stored error is
  raised in a later process.

An added entry is a real traceback entry over a small finished frame whose
code carries the user's function name, file and line, and whose locals are a
copy of the durable call's variables: ``traceback``, logging, pytest and
``pdb.post_mortem`` show and inspect it like any other frame.
"""

from __future__ import annotations

import ast
import functools
import linecache
import sys
import types
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .stack import FunctionCall

#: Attribute of a failed instance's stored error: ``((filename, lineno, name), ...)`` outermost first.
SUMMARY_ATTR = "__durable_traceback__"
#: At most this many entries are kept in a summary (the innermost ones).
SUMMARY_LIMIT = 64

_RUNTIME_FILES: set[str] = set()


def runtime_file(filename: str) -> None:
    """Declare a file whose frames are the runtime's own (dropped at the front of a durable traceback)."""
    _RUNTIME_FILES.add(filename)


@functools.lru_cache(maxsize=4096)
def _code(name: str, qualname: str, filename: str, lineno: int) -> types.CodeType:
    """``1/0`` placed at ``filename:lineno``, spanning the line's text (so no carets are drawn under it)."""
    text = linecache.getline(filename, lineno).rstrip().encode()
    node = ast.Expression(ast.BinOp(ast.Constant(1), ast.Div(), ast.Constant(0)))
    for n in ast.walk(node):
        if "lineno" in n._attributes:
            n.lineno = n.end_lineno = lineno  # type: ignore[attr-defined]
            n.col_offset, n.end_col_offset = len(text) - len(text.lstrip()), len(text)  # type: ignore[attr-defined]
    return compile(node, filename, "eval").replace(co_name=name, co_qualname=qualname)


def make_frame(name: str, filename: str, lineno: int, globals_: dict[str, Any] | None = None,
               locals_: dict[str, Any] | None = None, qualname: str | None = None) -> types.FrameType:
    """A finished frame that reads as ``name`` at ``filename:lineno``, with ``locals_`` as its variables.

    Tracing is off while it is made, so a debugger or coverage tool never
    sees it run.
    """
    lineno = max(lineno, 1)
    code = _code(name, qualname or name, filename, lineno)
    g = globals_ if globals_ is not None else {"__name__": "__durable__", "__builtins__": __builtins__}
    tracer = sys.gettrace()
    if tracer is not None:
        sys.settrace(None)
    try:
        eval(code, g, dict(locals_) if locals_ is not None else {})
    except ZeroDivisionError as exc:
        tb = exc.__traceback__
        assert tb is not None and tb.tb_next is not None
        frame = tb.tb_next.tb_frame
        del exc, tb
    finally:
        if tracer is not None:
            sys.settrace(tracer)
    return frame


def entry(frame_call: FunctionCall, tb_next: types.TracebackType | None) -> types.TracebackType:
    """A traceback entry for ``frame_call`` where it stands (at the await it waits on)."""
    name, qualname, filename, lineno = where(frame_call)
    try:
        shown = frame_call.user_locals()
        g = frame_call._globals()
    except Exception:  # a broken frame must not hide the error being reported
        shown, g = {}, None
    frame = make_frame(name, filename, lineno, g, shown, qualname)
    return types.TracebackType(tb_next, frame, frame.f_lasti, lineno)


def where(frame_call: FunctionCall) -> tuple[str, str, str, int]:
    """(name, qualname, file, line) of a durable call at its current block: the await it waits on."""
    compiled = frame_call.compiled
    pc = frame_call.pc
    blocks = frame_call.blocks
    block = blocks[pc] if 0 <= pc < len(blocks) else None
    filename = block.fn.__code__.co_filename if block is not None else "<durable>"
    lineno = block.lineno if block is not None else 0
    if compiled is None:
        return "<script>", "<script>", filename, lineno
    point = compiled.resume_points.get(pc)
    if point is not None:
        lineno = point[0]
    return compiled.name, compiled.qualname, compiled.filename, lineno


def _without_runtime(tb: types.TracebackType | None) -> types.TracebackType | None:
    while tb is not None and tb.tb_frame.f_code.co_filename in _RUNTIME_FILES:
        tb = tb.tb_next
    return tb


def enter(exc: BaseException, top: FunctionCall | None, from_block: bool) -> None:
    """``exc`` reached the runtime while ``top`` runs: make its traceback start at ``top``.

    ``from_block``: it came out of one of ``top``'s blocks (whose frame is
    already in the traceback, or which re-raised it), so no entry is added.
    """
    tb = _without_runtime(exc.__traceback__)
    if not from_block and top is not None:
        tb = entry(top, tb)
    exc.__traceback__ = tb


def unwind(exc: BaseException, caller: FunctionCall) -> None:
    """``exc`` left a durable call for ``caller``: add ``caller`` in front, at its await."""
    exc.__traceback__ = entry(caller, exc.__traceback__)


def summary(tb: types.TracebackType | None) -> tuple[tuple[str, int, str], ...]:
    """``((filename, lineno, name), ...)`` of a traceback, outermost first, picklable."""
    out = []
    while tb is not None:
        code = tb.tb_frame.f_code
        out.append((code.co_filename, tb.tb_lineno, code.co_name))
        tb = tb.tb_next
    return tuple(out[-SUMMARY_LIMIT:])


def remember(exc: BaseException) -> None:
    """Keep the chain of a failed instance's error with it (saved in the checkpoint)."""
    try:
        setattr(exc, SUMMARY_ATTR, summary(exc.__traceback__))
    except Exception:  # an exception type that takes no attributes keeps its message only
        pass


def rebuild(entries: Iterable[tuple[str, int, str]], tb_next: types.TracebackType | None = None
            ) -> types.TracebackType | None:
    """A traceback made of ``entries`` (as :func:`summary` returns them), in front of ``tb_next``."""
    tb = tb_next
    for filename, lineno, name in reversed(tuple(entries)):
        frame = make_frame(name, filename, lineno)
        tb = types.TracebackType(tb, frame, frame.f_lasti, lineno)
    return tb


def restore(exc: BaseException) -> BaseException:
    """A stored error loaded from a checkpoint, with the chain it failed with as its traceback."""
    entries = getattr(exc, SUMMARY_ATTR, None)
    if exc.__traceback__ is None and entries:
        try:
            exc.__traceback__ = rebuild(entries)
        except Exception:  # a malformed summary: the error still surfaces
            pass
    return exc


def chain(exc: BaseException) -> list[tuple[str, int, str]]:
    """The entries of ``exc``'s durable story: its traceback, or the summary stored with it."""
    if exc.__traceback__ is not None:
        return list(summary(_without_runtime(exc.__traceback__)))
    return list(getattr(exc, SUMMARY_ATTR, ()) or ())


__all__ = ["chain", "enter", "make_frame", "rebuild", "remember", "restore", "summary", "unwind", "where"]
