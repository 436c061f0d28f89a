"""Signed state blobs: the format every saved checkpoint and inbox is written in (a public module).

:func:`dumps` pickles (see :mod:`durable.serialization`) and, with a key,
adds an HMAC-SHA256 tag; :func:`loads` checks the tag before anything is
unpickled. Hosts that keep blobs elsewhere (the Django app's rows) use
:func:`verify` and :func:`sign_pickled` to check or re-sign a blob without
unpickling it (key rotation, format migrations).

Formats (the first three bytes say which):

* ``DP1`` + pickle: unsigned (no key).
* ``DS1`` + tag + pickle: tag = HMAC(key, pickle).
* ``DS2`` + tag + pickle: tag = HMAC(key, len(context) + context + pickle). The
  *context* says where the blob belongs (for the Django app: the instance id,
  the program and the column), so a validly signed blob copied anywhere else
  fails its check. A reader that passes a context accepts only ``DS2`` blobs
  signed for that context.
"""

from __future__ import annotations

import hashlib
import hmac
import pickle
from typing import Any

from .exceptions import StateTamperedError
from .serialization import pickled

__all__ = ["coerce_key", "dumps", "loads", "sign_pickled", "verify"]

_SIGNED = b"DS1"
_BOUND = b"DS2"
_PLAIN = b"DP1"
_TAG = 32


def _bound_tag(key: bytes, context: bytes, data: bytes) -> bytes:
    # The length prefix keeps (context, data) pairs unambiguous: no context can end where another's data starts.
    return hmac.new(key, len(context).to_bytes(4, "big") + context + data, hashlib.sha256).digest()


def dumps(obj: Any, key: bytes | None = None, context: bytes | None = None) -> bytes:
    """Serialize ``obj`` and sign it with ``key`` when one is given.

    With a ``context`` the signature also covers it (``DS2``): :func:`loads`
    then accepts the blob only with the same context.
    """
    data = pickled(obj)
    if key is None:
        if context is not None:
            raise ValueError("a signing context needs a signing key")
        return _PLAIN + data
    return sign_pickled(data, key, context)


def sign_pickled(data: bytes, key: bytes, context: bytes | None = None) -> bytes:
    """A signed blob of already pickled ``data`` (re-signing a verified blob needs no unpickling)."""
    if context is None:
        return _SIGNED + hmac.new(key, data, hashlib.sha256).digest() + data
    return _BOUND + _bound_tag(key, context, data) + data


def verify(blob: bytes, key: bytes, context: bytes | None = None) -> bytes:
    """Check the signature of ``blob`` without unpickling it; returns the pickle bytes.

    Raises :class:`StateTamperedError` when the tag does not match, when the
    blob is unsigned, or when it is bound to a context and ``context`` is
    another one (or none). With a ``context``, unbound ``DS1`` blobs are
    refused too: they could have been copied from anywhere.
    """
    head = blob[:3]
    if head == _BOUND:
        if context is None:
            raise StateTamperedError("state blob is bound to a context (instance, program, field) that the reader "
                                     "did not give; refusing to unpickle it")
        tag, data = blob[3:3 + _TAG], blob[3 + _TAG:]
        if not hmac.compare_digest(tag, _bound_tag(key, context, data)):
            raise StateTamperedError("state blob failed its signature check (wrong key, or it was signed for "
                                     "another instance, program or field); refusing to unpickle it")
        return data
    if head == _SIGNED:
        if context is not None:
            raise StateTamperedError("state blob has a signature that is not bound to its instance, program and "
                                     "field (an old format, or copied from elsewhere); refusing to unpickle it")
        tag, data = blob[3:3 + _TAG], blob[3 + _TAG:]
        if not hmac.compare_digest(tag, hmac.new(key, data, hashlib.sha256).digest()):
            raise StateTamperedError("state blob failed its signature check; refusing to unpickle it")
        return data
    if head == _PLAIN:
        raise StateTamperedError("state blob is unsigned but a signing key is configured; refusing to unpickle it")
    raise StateTamperedError("state blob has an unknown format; refusing to unpickle it")


def loads(blob: bytes, key: bytes | None = None, context: bytes | None = None) -> Any:
    """Check the signature of ``blob`` (when a key is set) and unpickle it.

    Without a key nothing is checked (the core's unsigned mode): any blob the
    store holds is unpickled.
    """
    blob = bytes(blob)
    if key is not None:
        return pickle.loads(verify(blob, key, context))
    head = blob[:3]
    if head in (_SIGNED, _BOUND):
        data = blob[3 + _TAG:]
    elif head == _PLAIN:
        data = blob[3:]
    else:
        raise StateTamperedError("state blob has an unknown format; refusing to unpickle it")
    return pickle.loads(data)


def coerce_key(key: bytes | str | None) -> bytes | None:
    """Accept a signing key as ``str`` or ``bytes``."""
    if key is None or isinstance(key, bytes):
        return key
    return key.encode()
