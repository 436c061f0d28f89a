"""What the generated blocks call at run time.

The assembler passes each of :data:`HELPERS` to the blocks of every compiled
function as a free variable named ``_dur__<name>``. Some of these objects end
up in checkpoints (``DONE``; ``setcell``, ``named`` and ``origin_tag`` in the
closures of nested functions saved by value), so their import paths are part
of the saved-state format: ``durable.compiler`` keeps the names older
checkpoints use (see its ``__init__``).
"""

from __future__ import annotations

import operator
from collections.abc import Iterator
from typing import Any

from ..blocks import AWAIT, CALL, NEXT, RETURN, origin
from ..primitives import pause_request


def iter_cursor(iterable: Any) -> Iterator[Any] | list[int]:
    """The iterator of a ``for`` loop that spans awaits (saved with the frame).

    A ``range`` becomes a ``[next, stop, step]`` cursor: cheaper to pickle
    than a range iterator, and checkpointed on every step of such a loop.
    """
    if iterable.__class__ is range:
        return [iterable.start, iterable.stop, iterable.step]
    return iter(iterable)


def next_item(it: Any, done: Any) -> Any:
    """The next item of an :func:`iter_cursor`, or ``done``."""
    if it.__class__ is list:
        value, stop, step = it
        if (value >= stop) if step > 0 else (value <= stop):
            return done
        it[0] = value + step
        return value
    return next(it, done)


class _Sentinel:
    def __repr__(self) -> str:
        return "<exhausted>"

    def __reduce__(self) -> tuple[Any, tuple[()]]:
        return (get_done, ())


#: What :func:`next_item` returns when the loop is over.
DONE = _Sentinel()


def get_done() -> _Sentinel:
    """Unpickles :data:`DONE` as the one instance."""
    return DONE


def named(obj: Any, name: str) -> Any:
    """Give a def/class the name it was written with (it was compiled under a hidden name)."""
    obj.__name__ = name
    qual = obj.__qualname__.rpartition(".")[0]
    obj.__qualname__ = f"{qual}.{name}" if qual else name
    return obj


def setcell(cell: Any, value: Any) -> Any:
    """``name := value`` for a shared variable."""
    cell.cell_contents = value
    return value


def origin_tag(func: Any) -> Any:
    """The decorator of nested ``async def``: remember where its source is (see :func:`~durable.blocks.origin`)."""
    func.__durable_origin__ = origin(func)
    return func


#: (name, value) of everything the blocks receive, in the order of the assembler's parameters.
HELPERS: tuple[tuple[str, Any], ...] = (
    ("CALL", CALL), ("AWAIT", AWAIT), ("RETURN", RETURN), ("NEXT", NEXT),
    ("operator", operator), ("iter", iter_cursor), ("next", next_item),
    ("DONE", DONE), ("pause", pause_request), ("setcell", setcell), ("named", named), ("origin", origin_tag),
)
