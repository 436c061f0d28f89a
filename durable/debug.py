"""A pdb that steps through durable code as if it were plain Python.

The runtime runs a durable function one block at a time: an ``await`` ends the
block's Python frame and hands the step to the runtime's loop, and the code
after the ``await`` runs in a new frame of the next block. Plain pdb therefore
follows ``next`` into the runtime (``_drive``). :class:`DurablePdb` knows the
blocks (their frames carry the user's function name, file and lines) and, at
an ``await`` in durable code, lets the runtime run until the user's code goes
on:

* ``next`` stops at the next line of the same durable call (after the awaited
  call finished and was checkpointed), or of its caller when it returns;
* ``step`` also stops in a durable function the ``await`` calls;
* ``return`` stops in the caller, after its ``await``;
* ``where`` adds the durable calls the runtime holds (they have no Python
  frame of their own: ``up`` cannot reach them).

Use it with ``PYTHONBREAKPOINT=durable.debug.set_trace`` (then
``breakpoint()``), or call :func:`set_trace` / :func:`post_mortem`. Outside
durable code it is plain pdb. The runtime's own modules (``durable.*``) are
skipped.
"""

from __future__ import annotations

import pdb
import sys
import types
from typing import Any

from .blocks import LOCAL_PREFIX
from .runtime import DurableRuntime
from .tracebacks import where

#: The parameter of every generated block function (``durable.compiler.syntax.LOCALS``).
_LOCALS = LOCAL_PREFIX + "L"
_DRIVE = DurableRuntime._drive.__code__
_SKIP = ("durable", "durable.*")


def is_block(frame: types.FrameType | None) -> bool:
    """Is ``frame`` running a block of a durable function?"""
    if frame is None:
        return False
    code = frame.f_code
    return code.co_argcount == 1 and code.co_varnames[:1] == (_LOCALS,)


def _drive_of(frame: types.FrameType) -> types.FrameType | None:
    drive = frame.f_back
    while drive is not None and drive.f_code is not _DRIVE:
        drive = drive.f_back
    return drive


def durable_calls(frame: types.FrameType) -> list[Any]:
    """The durable calls (``FunctionCall``) of the instance whose block ``frame`` runs, outermost first."""
    drive = _drive_of(frame)
    calls = drive.f_locals.get("frames") if drive is not None else None
    return list(calls) if isinstance(calls, list) else []


def _outer(frame: types.FrameType) -> types.FrameType | None:
    """The first frame above the runtime that is not the runtime's: the code that awaited the program."""
    drive = _drive_of(frame)
    outer = drive.f_back if drive is not None else None
    while outer is not None and outer.f_globals.get("__name__", "").partition(".")[0] == "durable":
        outer = outer.f_back
    return outer


class _Target:
    """Where a durable ``next``/``step``/``return`` may stop: line events in the blocks of some calls.

    ``calls`` are the locals dicts of the durable calls whose blocks count (None: any durable call);
    ``passed`` maps a call's locals (by id) to the line of the ``await`` it stands at, which a new
    block of that call starts on (the rest of that statement) and which is not a stop. ``outer`` is
    the frame that runs the instance (the caller of the program): when the instance pauses or
    finishes, the debugger stops there.
    """

    def __init__(self, calls: list[dict] | None, passed: dict[int, int], origin: types.FrameType,
                 outer: types.FrameType | None) -> None:
        self.calls = calls
        self.passed = passed
        self.origin = origin
        self.outer = outer

    def accepts(self, frame: types.FrameType) -> bool:
        if frame is self.outer:
            return True
        if not is_block(frame):
            return False
        loc = frame.f_locals.get(_LOCALS)
        if self.calls is not None and not any(loc is c for c in self.calls):
            return False
        return frame is self.origin or self.passed.get(id(loc)) != frame.f_lineno


class DurablePdb(pdb.Pdb):
    """pdb that treats an ``await`` in durable code as a step of the user's code (see the module docstring)."""

    def __init__(self, completekey: str = "tab", stdin: Any = None, stdout: Any = None,
                 skip: list[str] | None = None, **kwargs: Any) -> None:
        super().__init__(completekey, stdin, stdout, skip=[*_SKIP, *(skip or [])], **kwargs)
        self._target: _Target | None = None

    # -- the commands that follow an await --------------------------------
    def _durable_move(self, which: str) -> bool:
        """Set up a durable ``next``/``step``/``return`` from the current frame; False if not in durable code."""
        frame = self.curframe
        if frame is None or not is_block(frame):
            return False
        here: dict = frame.f_locals[_LOCALS]
        calls = durable_calls(frame)
        index = next((i for i, c in enumerate(calls) if c.locals is here), None)
        callers = calls[:index] if index is not None else []
        passed = {id(c.locals): where(c)[3] for c in callers}
        if which == "return":
            targets: list[dict] | None = [c.locals for c in callers]
        else:
            passed[id(here)] = frame.f_lineno
            targets = None if which == "step" else [here, *(c.locals for c in callers)]
        outer = _outer(frame)
        if outer is not None and outer.f_trace is None:
            outer.f_trace = self.trace_dispatch
        self._target = _Target(targets, passed, frame, outer)
        self.set_step()
        return True

    def do_next(self, arg: str) -> bool | None:
        if arg or not self._durable_move("next"):
            return super().do_next(arg)
        return True

    def do_step(self, arg: str) -> bool | None:
        if arg or not self._durable_move("step"):
            return super().do_step(arg)
        return True

    def do_return(self, arg: str) -> bool | None:
        if arg or not self._durable_move("return"):
            return super().do_return(arg)
        return True

    do_n = do_next
    do_s = do_step
    do_r = do_return

    def do_where(self, arg: str) -> None:
        super().do_where(arg)
        frame = self.curframe
        if frame is not None and is_block(frame):
            calls = durable_calls(frame)
            if calls:
                self.message("Durable calls (outermost first; the last one runs the frame above):")
                here = frame.f_locals.get(_LOCALS)
                for c in calls:
                    name, _, filename, line = where(c)
                    if c.locals is here:
                        line = frame.f_lineno
                    self.message(f"  {filename}({line}){name}()")

    do_w = do_bt = do_where

    # -- where the tracer stops -------------------------------------------
    def _clear(self) -> None:
        self._target = None

    def set_continue(self) -> None:
        self._clear()
        super().set_continue()

    def set_next(self, frame: types.FrameType) -> None:
        self._clear()
        super().set_next(frame)

    def set_return(self, frame: types.FrameType) -> None:
        self._clear()
        super().set_return(frame)

    def set_until(self, frame: types.FrameType, lineno: int | None = None) -> None:
        self._clear()
        super().set_until(frame, lineno)

    def stop_here(self, frame: types.FrameType) -> bool:
        target = self._target
        if target is None:
            return super().stop_here(frame)
        return frame is target.outer or is_block(frame)  # trace every block: its lines decide (user_line)

    def user_call(self, frame: types.FrameType, argument_list: Any) -> None:
        if self._target is None:
            super().user_call(frame, argument_list)

    def user_line(self, frame: types.FrameType) -> None:
        target = self._target
        if target is not None:
            if not target.accepts(frame):
                return
            self._target = None
        super().user_line(frame)

    def user_return(self, frame: types.FrameType, return_value: Any) -> None:
        if self._target is None:
            super().user_return(frame, return_value)

    def user_exception(self, frame: types.FrameType, exc_info: Any) -> None:
        if self._target is None:
            super().user_exception(frame, exc_info)


def set_trace(*, header: str | None = None) -> None:
    """Start :class:`DurablePdb` in the caller's frame (``PYTHONBREAKPOINT=durable.debug.set_trace``)."""
    debugger = DurablePdb()
    if header is not None:
        debugger.message(header)
    debugger.set_trace(sys._getframe().f_back)


def post_mortem(tb: types.TracebackType | None = None) -> None:
    """:func:`pdb.post_mortem` with :class:`DurablePdb`; a durable error's traceback holds its durable calls."""
    if tb is None:
        tb = sys.exc_info()[2]
    if tb is None:
        raise ValueError("a traceback is needed when no exception is being handled")
    debugger = DurablePdb()
    debugger.reset()
    debugger.interaction(None, tb)


__all__ = ["DurablePdb", "durable_calls", "is_block", "post_mortem", "set_trace"]
