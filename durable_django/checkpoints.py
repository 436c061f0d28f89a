"""Kept checkpoints (``DurableCheckpoint`` rows): the history that forks restart from.

Opt-in, per program (``make_durable(fn, history=N)``, which the core records
as ``state["history"]``) or for every program (``DURABLE["HISTORY"]``).
Without it nothing is written and an instance's saved state stays the size of
what is live. With it, every checkpoint also inserts one row, in the same
transaction as the checkpoint (see :class:`~durable_django.backend.DjangoOrchestrationBackend`),
and one ``DELETE`` drops what is no longer kept: the rows N steps back, and
rows of the same or a later step (left by a timeline that a retry abandoned).

A row's blob is the whole saved state, signed for its instance, program and
the field ``checkpoint`` (:data:`~durable_django.signing.CHECKPOINT`): a kept
checkpoint never verifies as an instance's live state, nor the other way round.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from durable import SavedState
from durable import signing as core_signing

from . import clock
from .conf import durable_settings
from .db import ops
from .models import DurableCheckpoint, Status
from .signing import CHECKPOINT, STATE, blob_context, resign, sign, unsign, verified

#: ``state["history"]`` (and ``keep``) for "keep every checkpoint".
ALL = -1

_STATUS = {"running": Status.RUNNING, "paused": Status.PAUSED, "completed": Status.COMPLETED,
           "failed": Status.FAILED, "cancelled": Status.CANCELLED}


def history_of(state: Any) -> int | None:
    """How many checkpoints this state's instance keeps: N >= 1, :data:`ALL`, or None (no history).

    The program's own ``history=`` (``state["history"]``, set by the core) wins; else ``DURABLE["HISTORY"]``,
    which is then recorded in the state, so the instance keeps the same history across runs.
    """
    keep = state.get("history")
    if keep is None:
        setting = durable_settings.HISTORY
        if setting is None or setting is False:
            return None
        keep = ALL if setting is True else int(setting)
        state["history"] = keep
    if keep is True:
        return ALL
    if keep is False or not isinstance(keep, int) or keep == 0 or keep < ALL:
        return None
    return keep


def status_of(state: Mapping[str, Any]) -> str:
    return _STATUS.get(state.get("status", ""), Status.RUNNING)


def position_of(state: Mapping[str, Any]) -> str:
    stack = state.get("stack")
    frames = list(stack) if stack is not None else []
    return frames[-1].position()[:500] if frames else ""


def checkpoint_blob(instance_id: str, program: str, state: SavedState | None = None,
                    state_blob: bytes | None = None) -> bytes:
    """The signed blob of a kept checkpoint; from ``state_blob`` (the live state just signed for the same
    state, pickled once) when given, else from ``state``."""
    context = blob_context(instance_id, program, CHECKPOINT)
    if state_blob is not None:
        data = verified(state_blob, blob_context(instance_id, program, STATE))
        return core_signing.sign_pickled(data, durable_settings.signing_key, context)
    return sign(state, context)


def write(instance_id: str, step: int, state: Mapping[str, Any], keep: int, blob: bytes, *, using: str) -> None:
    """Insert checkpoint ``step`` and prune, in the caller's transaction: one DELETE, one INSERT (cached SQL)."""
    ops(using).keep_checkpoint(instance_id, step, keep, status_of(state), position_of(state), blob, clock.now())


def listing(instance_id: str, *, using: str | None = None, limit: int | None = None) -> list[dict]:
    """The kept checkpoints of an instance, oldest first: ``step``, ``status``, ``position``, ``at``."""
    rows = DurableCheckpoint.objects.using(using).filter(instance_id=instance_id).order_by("-step")
    if limit is not None:
        rows = rows[:limit]
    out = [{"step": step, "status": status, "position": position, "at": at}
           for step, status, position, at in rows.values_list("step", "status", "position", "created_at")]
    out.reverse()
    return out


def load(instance_id: str, program: str, step: int, *, using: str | None = None) -> SavedState | None:
    """Checkpoint ``step`` of the instance, its signature verified (``StateTamperedError`` otherwise), or None."""
    blob = (DurableCheckpoint.objects.using(using).filter(instance_id=instance_id, step=step)
            .values_list("state", flat=True).first())
    if blob is None:
        return None
    state: SavedState = unsign(blob, blob_context(instance_id, program, CHECKPOINT))
    return state


def resign_all(using: str, batch: int = 500) -> int:
    """Re-sign with the current key every kept checkpoint that verifies only with a fallback key (the
    ``durable_resign`` step of a key rotation); returns how many changed. Nothing is unpickled."""
    rows = (DurableCheckpoint.objects.using(using).order_by("pk")
            .values_list("pk", "instance_id", "instance__program", "state"))
    changed, last = 0, 0
    while True:
        chunk = list(rows.filter(pk__gt=last)[:batch])
        if not chunk:
            return changed
        for pk, instance_id, program, blob in chunk:
            new = resign(blob, blob_context(instance_id, program, CHECKPOINT))
            if new is not None:
                changed += DurableCheckpoint.objects.using(using).filter(pk=pk).update(state=new)
        last = chunk[-1][0]
