"""Turning state into pickle bytes: plain :mod:`pickle` first, :mod:`cloudpickle` for the rest.

Plain :mod:`pickle` (C speed) is tried first; :mod:`cloudpickle` takes over for
what it cannot do (lambdas, nested functions, closures). Exceptions keep their
chaining. Signing the bytes is :mod:`durable.signing`'s job.

Saved blobs name :func:`_rebuild_exception` by its path in this module, so it
must stay here for old checkpoints to load.
"""

from __future__ import annotations

import io
import pickle
from typing import Any

import cloudpickle

from .exceptions import CheckpointException


def _reduce_exception(exc: BaseException):
    """Pickle exceptions with their chaining (``__cause__``, ``__context__``,
    notes), which the default reduction drops, and without calling
    ``__init__`` again (custom signatures would break)."""
    extra = (exc.__cause__, exc.__context__, exc.__suppress_context__, getattr(exc, "__dict__", None))
    return (_rebuild_exception, (type(exc), exc.args, extra))


def _rebuild_exception(cls, args, extra):
    try:
        exc = cls.__new__(cls, *args)
    except Exception:
        exc = cls.__new__(cls)
    exc.args = args
    cause, context, suppress, attrs = extra
    if attrs:
        exc.__dict__.update(attrs)
    exc.__cause__, exc.__context__ = cause, context
    exc.__suppress_context__ = suppress
    return exc


class _Pickler(pickle.Pickler):
    def reducer_override(self, obj):
        if isinstance(obj, BaseException):
            return _reduce_exception(obj)
        return NotImplemented


class _CloudPickler(cloudpickle.Pickler):
    def reducer_override(self, obj):
        if isinstance(obj, BaseException):
            return _reduce_exception(obj)
        return super().reducer_override(obj)


def _dump_with(cls, obj: Any) -> bytes:
    buf = io.BytesIO()
    cls(buf, protocol=5).dump(obj)
    return buf.getvalue()


def pickled(obj: Any) -> bytes:
    """The pickle of ``obj`` (cloudpickle when plain pickle cannot); :class:`CheckpointException` if neither can."""
    try:
        return _dump_with(_Pickler, obj)
    except Exception:
        try:
            return _dump_with(_CloudPickler, obj)
        except Exception as exc:
            raise CheckpointException(f"cannot serialize state: {type(exc).__name__}: {exc}") from exc
