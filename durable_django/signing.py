"""Signing the blobs of ``DurableInstance`` rows: bound to where they belong.

Every blob the app stores (the ``state`` a worker resumes from, the
``arguments`` a program starts with) is pickled and signed with
HMAC-SHA256 over the pickle *and* its context: the instance id, the dotted
path of the program and the column name (:func:`blob_context`). A blob is
verified for the row and column it is read from before anything is
unpickled, so a validly signed blob copied to another row or column, or left
in a row whose ``program`` was changed, is refused
(:class:`durable.StateTamperedError`). There is no unsigned mode: a missing
or empty key is :class:`~django.core.exceptions.ImproperlyConfigured`.
See docs/security.md.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from typing import Any

from durable import StateTamperedError
from durable import signing as core_signing

from .conf import durable_settings

#: Names of the signed columns of ``DurableInstance``; each blob is bound to the column it belongs in.
STATE = "state"
ARGUMENTS = "arguments"
#: The ``state`` blob of a ``DurableCheckpoint`` row (a kept checkpoint, for forks): signed for its instance and
#: program like ``state``, but never valid as an instance's live state (nor the other way round).
CHECKPOINT = "checkpoint"
SIGNED_FIELDS = (STATE, ARGUMENTS)
_CONTEXT_TAG = b"durable_django.blob.v1"


def blob_context(instance_id: str, program: str, field: str) -> bytes:
    """What a blob's signature binds it to: its instance id, its program's dotted path and its column.

    A validly signed blob copied into another row, another column, or a row
    whose ``program`` was changed no longer verifies. Each part is
    length-prefixed, so no two (id, program, field) triples give the same bytes.
    """
    out = [_CONTEXT_TAG]
    for part in (instance_id, program, field):
        raw = str(part).encode("utf-8", "surrogatepass")
        out.append(len(raw).to_bytes(4, "big"))
        out.append(raw)
    return b"".join(out)


def sign(obj: Any, context: bytes) -> bytes:
    """Serialize ``obj`` and sign it with the configured key, bound to ``context`` (see :func:`blob_context`)."""
    return core_signing.dumps(obj, durable_settings.signing_key, context)


def unsign(blob: bytes | memoryview, context: bytes) -> Any:
    """Verify a blob for ``context`` and unpickle it; fallback keys (key rotation) are tried in turn.

    A blob that no key verifies for this context (tampered, signed for
    another instance, program or column, or in the unbound format of before
    migration 0005) raises :class:`durable.StateTamperedError` and is never
    unpickled.
    """
    return pickle.loads(verified(blob, context))


def verified(blob: bytes | memoryview, context: bytes) -> bytes:
    """The pickle bytes of ``blob`` once its signature checks out for ``context`` (nothing is unpickled)."""
    blob = bytes(blob)
    try:
        return core_signing.verify(blob, durable_settings.signing_key, context)
    except StateTamperedError:
        for key in durable_settings.signing_key_fallbacks:
            try:
                return core_signing.verify(blob, key, context)
            except StateTamperedError:
                continue
        raise


def resign(blob: bytes | memoryview, context: bytes) -> bytes | None:
    """``blob`` signed with the current key if it verifies for ``context`` with a fallback key only, else
    None (already under the current key, or not valid at all). Nothing is unpickled."""
    blob = bytes(blob)
    key = durable_settings.signing_key
    try:
        core_signing.verify(blob, key, context)
        return None
    except StateTamperedError:
        pass
    try:
        data = verified(blob, context)
    except StateTamperedError:
        return None
    return core_signing.sign_pickled(data, key, context)


def convert_rows(model: Any, using: str, convert: Callable[[bytes, bytes], bytes | None], batch: int = 500) -> int:
    """Apply ``convert(blob, context) -> new blob or None`` to every signed blob of ``model``'s rows
    (the live model, or a migration's historical one), in batches by primary key; returns how many blobs
    changed. A row is only written if its ``version`` is still the one read (a worker's checkpoint wins)."""
    rows = model.objects.using(using).order_by("pk").values_list("pk", "program", "version", *SIGNED_FIELDS)
    changed = 0
    last = None
    while True:
        chunk = list((rows.filter(pk__gt=last) if last is not None else rows)[:batch])
        if not chunk:
            return changed
        for pk, program, version, *blobs in chunk:
            update = {}
            for field, blob in zip(SIGNED_FIELDS, blobs, strict=True):
                if blob is not None:
                    new = convert(bytes(blob), blob_context(pk, program, field))
                    if new is not None:
                        update[field] = new
            if update and model.objects.using(using).filter(pk=pk, version=version).update(**update):
                changed += len(update)
        last = chunk[-1][0]


def rebind(blob: bytes | memoryview, context: bytes) -> bytes | None:
    """``blob`` in the bound format for ``context`` if it verifies in the unbound format of before
    migration 0005 (with the key or a fallback), else None. Nothing is unpickled."""
    blob = bytes(blob)
    for key in (durable_settings.signing_key, *durable_settings.signing_key_fallbacks):
        try:
            data = core_signing.verify(blob, key, None)
        except StateTamperedError:
            continue
        return core_signing.sign_pickled(data, durable_settings.signing_key, context)
    return None


def unbind(blob: bytes | memoryview, context: bytes) -> bytes | None:
    """The reverse of :func:`rebind` (migrating back to 0004): the unbound format, or None if ``blob``
    does not verify for ``context``."""
    blob = bytes(blob)
    try:
        data = verified(blob, context)
    except StateTamperedError:
        return None
    return core_signing.sign_pickled(data, durable_settings.signing_key, None)
