"""Restarting from an earlier checkpoint: a new instance from a kept checkpoint, optionally with edited locals.

What DBOS calls a fork and Temporal a reset: the source instance is left as
it is; a new instance (same program and version) starts from the state kept
at checkpoint ``step`` (see :mod:`durable_django.checkpoints`), so the steps
before it never run again, and the ones after it run afresh, with the locals
an operator corrected. Both instances get a ``forked`` history entry that
names the other, and the new state records ``forked_from`` = (source, step).
"""

from __future__ import annotations

import json
import reprlib
import uuid
from collections.abc import Mapping
from typing import Any

from django.core.serializers.json import DjangoJSONEncoder
from django.db import IntegrityError, transaction

from durable import SavedState
from durable.state import reopen_failed

from . import checkpoints, db
from .exceptions import InstanceExists, StateUnreadable, UnknownInstance, state_error
from .limits import check_instance_id, check_new_instance_id
from .models import DurableHistory, DurableInstance, HistoryKind, Status
from .signing import ARGUMENTS, STATE, blob_context, sign, unsign
from .waits import to_datetime
from .wakeups import schedule, schedule_timer, signal_after_commit

_repr = reprlib.Repr()
_repr.maxstring, _repr.maxother = 100, 100


class ForkRefused(ValueError):
    """The fork cannot be made as asked (no history, no such checkpoint or local, a value that is not JSON)."""


def parse_local_key(key: str, frame: int) -> tuple[int, str]:
    """``"name"`` (in frame ``frame``) or ``"<frame index>.name"`` (``"0.order"``, ``"-1.total"``)."""
    index, dot, name = key.rpartition(".")
    if not dot:
        return frame, key
    try:
        return int(index), name
    except ValueError:
        raise ForkRefused(f"{key!r}: write a local as name or <frame index>.name (e.g. 0.total)") from None


def apply_locals(state: SavedState, edits: Mapping[str, Any], frame: int = -1) -> list[str]:
    """Set JSON-compatible locals in the state's frames; returns what changed, for the history.

    Every name is checked before anything is set: a frame that does not exist, a name that is not a
    local of that frame, or a value that is not JSON-compatible raises :class:`ForkRefused`.
    """
    stack = list(state.get("stack") or [])
    planned = []
    for key, value in edits.items():
        index, name = parse_local_key(str(key), frame)
        if not -len(stack) <= index < len(stack):
            raise ForkRefused(f"{key!r}: no frame {index} (the checkpoint has {len(stack)} frame(s), 0 outermost)")
        target = stack[index]
        shown = target.user_locals()
        if name not in shown:
            raise ForkRefused(f"{key!r}: frame {index % len(stack)} ({target.name}) has no local {name!r}; its "
                              f"locals: {', '.join(sorted(shown)) or 'none'}")
        try:
            value = json.loads(json.dumps(value, cls=DjangoJSONEncoder))
        except (TypeError, ValueError):
            raise ForkRefused(f"{key!r}: only JSON-compatible values may be set, not {type(value).__name__}") from None
        planned.append((target, index % len(stack), name, shown[name], value))
    changes = []
    for target, index, name, old, value in planned:
        target.set_user_local(name, value)
        changes.append(f"{name!r} of frame {index} ({target.name}) from {_repr.repr(old)} to {_repr.repr(value)}")
    return changes


def _load(instance_id: str, program: str, step: int) -> SavedState:
    kept = checkpoints.listing(instance_id, using=db.alias())
    if not kept:
        raise ForkRefused(f"instance {instance_id!r} has no kept checkpoints: its program keeps no history "
                          "(make_durable(..., history=N) or DURABLE['HISTORY'], see docs/fork.md)")
    try:
        state = checkpoints.load(instance_id, program, step, using=db.alias())
    except Exception as exc:  # signature, or code that cannot be unpickled any more
        raise StateUnreadable(instance_id, f"checkpoint {step}", state_error(exc)) from exc
    if state is None:
        raise ForkRefused(f"instance {instance_id!r} has no kept checkpoint {step}; kept: "
                          f"{', '.join(str(c['step']) for c in kept)}")
    return state


def fork(instance_id: str, step: int, *, new_instance_id: str | None = None, locals: Mapping[str, Any] | None = None,
         frame: int = -1, actor: str = "") -> DurableInstance:
    """A new instance that goes on from checkpoint ``step`` of ``instance_id``; see the module docstring.

    ``locals``: ``{name: json value}`` set in frame ``frame`` (default the innermost), or
    ``{"<frame>.<name>": value}`` for another frame. The new instance is ``running`` (or ``paused`` on the
    same wait, when the checkpoint was a pause) and is scheduled once the transaction commits.
    Raises :class:`UnknownInstance`, :class:`InstanceExists` (``new_instance_id`` is taken),
    :class:`ForkRefused` (no history, no such checkpoint, a completed or cancelled one, bad locals),
    A failed checkpoint (the last one of a failed instance) goes on as a retry would: from the checkpoint the
    failure kept, waiting again for what it waited for. The fork keeps the source's deadline (a point in time).
    :class:`StateUnreadable` (the checkpoint's signature does not verify).
    """
    check_instance_id(instance_id)
    if isinstance(step, bool) or not isinstance(step, int):
        raise ForkRefused(f"step must be an integer, got {step!r}")
    source = (DurableInstance.objects.filter(pk=instance_id)
              .values("program", "program_version", "arguments", "content_type_id", "object_id").first())
    if source is None:
        raise UnknownInstance(instance_id)
    new_id = check_new_instance_id(new_instance_id or f"{instance_id[:150]}.fork{step}-{uuid.uuid4().hex[:8]}")
    if DurableInstance.objects.filter(pk=new_id).exists():
        raise InstanceExists(f"durable instance {new_id!r} already exists; choose another id for the fork")
    program = source["program"]
    state = _load(instance_id, program, step)
    status = state.get("status")
    stack = list(state.get("stack") or [])
    if status in ("completed", "cancelled") or not stack:
        raise ForkRefused(f"checkpoint {step} of {instance_id!r} is {status} and has no frames to go on from; "
                          "fork from an earlier checkpoint")
    if status == "failed":  # a failure keeps the last checkpoint's stack and wait: go on from there
        reopen_failed(state, instance_id)
    changes = apply_locals(state, locals or {}, frame)
    wait = state.get("wait") or None
    state["status"] = "paused" if wait else "running"
    state["result"] = None
    state.pop("cancel", None)  # the fork is a new instance: no cancellation was asked of it
    state["forked_from"] = (instance_id, step)
    new_status = Status.PAUSED if wait else Status.RUNNING
    context = blob_context(new_id, program, STATE)
    try:
        blob = sign(state, context)
    except Exception as exc:
        raise ForkRefused(f"the forked state cannot be saved: {exc}") from exc
    arguments = source["arguments"]
    if arguments is not None:  # for a retry from the start: bound to the new id
        arguments = sign(unsign(arguments, blob_context(instance_id, program, ARGUMENTS)),
                         blob_context(new_id, program, ARGUMENTS))
    columns: Mapping[str, Any] = wait or {}
    edited = f"; set {'; '.join(changes)}" if changes else ""
    who = actor or "operations.fork"
    with transaction.atomic(using=db.alias()):
        try:
            with transaction.atomic(using=db.alias()):
                inst = DurableInstance.objects.create(
                    instance_id=new_id, program=program, program_version=source["program_version"],
                    layout_hash=stack[0].layout_hash or "", status=new_status, state=blob, arguments=arguments,
                    steps=state.get("steps", step), position=checkpoints.position_of(state),
                    wait_kind=columns.get("kind", "") or "", waiting_for=columns.get("event") or "",
                    wake_at=to_datetime(columns.get("due")), deadline=to_datetime(state.get("deadline")),
                    content_type_id=source["content_type_id"],
                    object_id=source["object_id"],
                    # what the program had reported at that checkpoint (durable.set_status / publish)
                    progress=state.get("progress"), published=state.get("published"))
        except IntegrityError:
            raise InstanceExists(f"durable instance {new_id!r} already exists; choose another id for the fork") \
                from None
        keep = checkpoints.history_of(state)
        if keep is not None:  # the fork keeps a history too, from the checkpoint it starts at
            checkpoints.write(new_id, state.get("steps", step), state, keep,
                              checkpoints.checkpoint_blob(new_id, program, state_blob=blob), using=db.alias())
        DurableHistory.objects.bulk_create([
            DurableHistory(instance_id=new_id, kind=HistoryKind.FORKED, status=new_status, actor=who,
                           detail=f"forked from {instance_id!r} at checkpoint {step}{edited}"),
            DurableHistory(instance_id=instance_id, kind=HistoryKind.FORKED, actor=who,
                           status=DurableInstance.objects.filter(pk=instance_id).values_list("status", flat=True)[0],
                           detail=f"checkpoint {step} forked into {new_id!r}{edited}"),
        ])
        signal_after_commit("forked", new_id, new_status, program, forked_from=(instance_id, step))
        if new_status == Status.RUNNING:
            schedule(new_id)
        elif columns.get("due") is not None:
            transaction.on_commit(lambda: schedule_timer(new_id), using=db.alias())
    return inst


def kept_checkpoints(instance_id: str, limit: int | None = None) -> list[dict]:
    """The kept checkpoints of an instance, oldest first (see :func:`durable_django.checkpoints.listing`)."""
    check_instance_id(instance_id)
    return checkpoints.listing(instance_id, using=db.alias(), limit=limit)


def checkpoint_state(instance_id: str, step: int) -> SavedState:
    """Kept checkpoint ``step``, verified; :class:`UnknownInstance` or :class:`ForkRefused` when there is none."""
    check_instance_id(instance_id)
    program = DurableInstance.objects.filter(pk=instance_id).values_list("program", flat=True).first()
    if program is None:
        raise UnknownInstance(instance_id)
    return _load(instance_id, program, step)


__all__ = ["ForkRefused", "apply_locals", "checkpoint_state", "fork", "kept_checkpoints"]
