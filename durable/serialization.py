"""Turning state into signed bytes and back.

Plain :mod:`pickle` (C speed) is tried first; :mod:`cloudpickle` takes over for
what it cannot do (lambdas, nested functions, closures). With a key, blobs carry
an HMAC-SHA256 tag that is checked before anything is unpickled.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import pickle
from typing import Any

import cloudpickle

from .exceptions import CheckpointException, StateTamperedError

_SIGNED = b"DS1"
_PLAIN = b"DP1"
_TAG = 32


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


def dumps(obj: Any, key: bytes | None = None) -> bytes:
    """Serialize ``obj`` and sign it with ``key`` when one is given."""
    try:
        data = _dump_with(_Pickler, obj)
    except Exception:
        try:
            data = _dump_with(_CloudPickler, obj)
        except Exception as exc:
            raise CheckpointException(f"cannot serialize state: {type(exc).__name__}: {exc}") from exc
    if key is None:
        return _PLAIN + data
    tag = hmac.new(key, data, hashlib.sha256).digest()
    return _SIGNED + tag + data


def loads(blob: bytes, key: bytes | None = None) -> Any:
    """Check the signature of ``blob`` (when a key is set) and unpickle it."""
    blob = bytes(blob)
    head = blob[:3]
    if head == _SIGNED:
        if key is None:
            data = blob[3 + _TAG:]
        else:
            tag, data = blob[3:3 + _TAG], blob[3 + _TAG:]
            if not hmac.compare_digest(tag, hmac.new(key, data, hashlib.sha256).digest()):
                raise StateTamperedError("state blob failed its signature check; refusing to unpickle it")
    elif head == _PLAIN:
        if key is not None:
            raise StateTamperedError("state blob is unsigned but a signing key is configured; refusing to unpickle it")
        data = blob[3:]
    else:
        raise StateTamperedError("state blob has an unknown format; refusing to unpickle it")
    return pickle.loads(data)


def coerce_key(key: bytes | str | None) -> bytes | None:
    """Accept a signing key as ``str`` or ``bytes``."""
    if key is None or isinstance(key, bytes):
        return key
    return key.encode()
