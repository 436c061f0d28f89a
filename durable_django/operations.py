"""Operator actions beyond the public API: retry a failed instance, read and edit a paused frame's locals.

Every change is written under the row's ``version`` (optimistic locking) and
only while no worker holds the lease, and is recorded in the history with the
operator's name.
"""

from __future__ import annotations

import json
import re
import reprlib
from typing import Any

from django.core.serializers.json import DjangoJSONEncoder
from django.db import models, transaction
from django.utils import timezone

from durable import SavedState
from durable.state import reopen_failed

from . import db, signals
from .exceptions import InstanceFinished, StateUnreadable, UnknownInstance, state_error
from .forks import fork as _fork
from .limits import check_instance_id
from .models import DurableHistory, DurableInstance, HistoryKind, Status
from .signing import STATE, blob_context, sign, unsign
from .waits import wait_columns
from .wakeups import schedule, signal_after_commit

#: Statuses in which a frame's locals may be edited: nothing runs them now.
EDITABLE = (Status.PAUSED, Status.SUSPENDED)
_repr = reprlib.Repr()  # attributes, not keywords: Python 3.11 has no Repr(**limits)
_repr.maxstring, _repr.maxother, _repr.maxlist, _repr.maxdict, _repr.maxlevel = 200, 200, 20, 20, 3


class ConcurrentChange(Exception):
    """The instance changed (ran, or another operator edited it) since the operator looked at it."""


def retry(instance_id: str, *, actor: str = "") -> DurableInstance:
    """Continue a failed instance from its last checkpoint (after its code or data was fixed).

    The core keeps the failed run's last checkpoint (stack, locals and wait) in
    the state blob, marked failed. The blob is marked runnable again (paused
    when the checkpoint was a pause, else running), the error is cleared and a
    worker is woken: completed steps never run again, the failed step runs
    again, the wait it was paused on is checked again. A row failed before
    failed instances kept their checkpoint (no stack) starts over from its
    stored arguments. Raises :class:`UnknownInstance`, :class:`InstanceFinished`
    (not failed) and :class:`StateUnreadable` (the blob fails its check or its
    code cannot be loaded).
    """
    check_instance_id(instance_id)
    with transaction.atomic(using=db.alias()):
        inst = DurableInstance.objects.select_for_update().filter(pk=instance_id).first()
        if inst is None:
            raise UnknownInstance(instance_id)
        if inst.status != Status.FAILED:
            raise InstanceFinished(instance_id, inst.status, "retry (only failed instances can be retried)")
        resumed = _runnable_again(inst)
        if resumed is None:
            columns: dict[str, Any] = {"status": Status.PENDING, "state": None, "wait_kind": "", "waiting_for": "",
                                       "wake_at": None, "position": ""}
            detail = "retried from the start"
        else:
            state, blob, failed_at = resumed
            position = list(state["stack"])[-1].position()[:500]
            columns = {"status": Status.PAUSED if state.get("wait") else Status.RUNNING, "state": blob,
                       "position": position, **wait_columns(state)}
            detail = f"retried from the last checkpoint at {position}" + (
                f" (it had failed at {failed_at})" if failed_at else "")
        DurableInstance.objects.filter(pk=instance_id, status=Status.FAILED).update(
            error="", result=None, finished_at=None, attempts=0, lease_owner="", lease_expires_at=None,
            updated_at=timezone.now(), version=models.F("version") + 1, **columns)
        DurableHistory.objects.create(instance=inst, kind=HistoryKind.OPERATOR, status=columns["status"],
                                      detail=detail, actor=actor)
    if resumed is None:
        signal_after_commit("started", instance_id, Status.PENDING, inst.program)
    else:
        signal_after_commit("operator", instance_id, columns["status"], inst.program, detail=detail)
    schedule(instance_id)
    inst.refresh_from_db()
    return inst


def _runnable_again(inst: DurableInstance) -> tuple[SavedState, bytes, str] | None:
    """The failed state made runnable again, its new signed blob and where it had failed; None when it kept
    no checkpoint."""
    if inst.state is None:
        return None
    context = blob_context(inst.instance_id, inst.program, STATE)
    try:
        state: SavedState = unsign(inst.state, context)
    except Exception as exc:
        raise StateUnreadable(inst.instance_id, inst.status, state_error(exc)) from exc
    if not state.get("stack"):
        return None  # failed before failed instances kept their last checkpoint: start over
    # the core's way: the wait of the last checkpoint is waited for again, a step in backoff gets fresh attempts
    failed_at = str(state.get("failed_at") or "")
    state = reopen_failed(state, inst.instance_id)
    return state, sign(state, context), failed_at


def is_jsonable(value: Any) -> bool:
    try:
        json.dumps(value, cls=DjangoJSONEncoder)
        return True
    except (TypeError, ValueError):
        return False


def frames(state: SavedState) -> list[dict]:
    """The call stack for people: per frame, its position and its locals (repr-truncated, never executed)."""
    out = []
    stack = state.get("stack")
    for index, frame in enumerate(list(stack) if stack is not None else []):
        local_rows = []
        for name, value in frame.user_locals().items():
            local_rows.append({"name": name, "repr": _repr.repr(value), "type": type(value).__name__,
                               "json": json.dumps(value, cls=DjangoJSONEncoder) if is_jsonable(value) else None})
        out.append({"index": index, "function": frame.name, "position": frame.position(), "locals": local_rows})
    return out


_ENTRY = re.compile(r'^  File "(?P<file>.*)", line (?P<line>\d+), in (?P<function>.*)$')
#: Characters of a long error the admin shows (the end: the failing call and the exception).
ERROR_SHOWN = 8000


def failure_chain(error: str) -> list[dict]:
    """The call chain of a failed instance, outermost first, read from its ``error`` text.

    The text is Python's traceback of the error (see ``durable_django.backend.describe_error``), in which
    the core shows every durable call the error left (``durable.tracebacks``). Only the last traceback
    counts (the error that ended the instance, after any it was raised from). Each entry: ``function``,
    ``file``, ``line`` and the ``source`` line when the traceback had it.
    """
    text = error.rpartition("Traceback (most recent call last):\n")[2] if "Traceback (most" in error else ""
    chain: list[dict] = []
    for row in text.splitlines():
        m = _ENTRY.match(row)
        if m:
            chain.append({"function": m["function"], "file": m["file"], "line": int(m["line"]), "source": ""})
        elif chain and row.startswith("    ") and not chain[-1]["source"] and row.strip(" ^~"):
            chain[-1]["source"] = row.strip()
    return chain


def error_shown(error: str) -> str:
    """``error`` cut for a page: its end (where it failed, and the exception) when it is long."""
    return error if len(error) <= ERROR_SHOWN else "\N{HORIZONTAL ELLIPSIS}" + error[-ERROR_SHOWN:]


def edit_local(instance_id: str, frame_index: int, name: str, value: Any, *, actor: str,
               expected_version: int | None = None) -> DurableInstance:
    """Set ``name`` in frame ``frame_index`` of a paused or suspended instance to a JSON-compatible ``value``.

    Raises ``ValueError`` (not JSON-compatible, no such frame or local),
    :class:`ConcurrentChange` (the row changed, or a worker holds it),
    :class:`UnknownInstance`, :class:`InstanceFinished`, :class:`StateUnreadable`.
    """
    check_instance_id(instance_id)
    if not is_jsonable(value):
        raise ValueError("only JSON-compatible values may be set")
    value = json.loads(json.dumps(value, cls=DjangoJSONEncoder))
    row = DurableInstance.objects.filter(pk=instance_id).values_list("status", "version", "state", "lease_owner",
                                                                      "program").first()
    if row is None:
        raise UnknownInstance(instance_id)
    status, version, blob, lease_owner, program = row
    if status not in EDITABLE:
        raise InstanceFinished(instance_id, status, "edit the locals of")
    if expected_version is not None and expected_version != version:
        raise ConcurrentChange(f"instance {instance_id!r} changed since you looked (version {version})")
    if lease_owner:
        raise ConcurrentChange(f"a worker holds instance {instance_id!r}; try again when it has paused")
    if blob is None:
        raise StateUnreadable(instance_id, status, "the instance has no saved state")
    context = blob_context(instance_id, program, STATE)
    try:
        state: SavedState = unsign(blob, context)
    except Exception as exc:
        raise StateUnreadable(instance_id, status, state_error(exc)) from exc
    stack = list(state.get("stack") or [])
    if not 0 <= frame_index < len(stack):
        raise ValueError(f"no frame {frame_index}")
    frame = stack[frame_index]
    shown = frame.user_locals()
    if name not in shown:
        raise ValueError(f"frame {frame_index} has no local {name!r}")
    old_value = shown[name]
    frame.set_user_local(name, value)
    new_blob = sign(state, context)
    with transaction.atomic(using=db.alias()):
        n = DurableInstance.objects.filter(pk=instance_id, version=version, lease_owner="",
                                           status__in=EDITABLE).update(
            state=new_blob, version=models.F("version") + 1, updated_at=timezone.now())
        if n != 1:
            raise ConcurrentChange(f"instance {instance_id!r} changed while editing; nothing was saved")
        DurableHistory.objects.create(
            instance_id=instance_id, kind=HistoryKind.OPERATOR, status=status, actor=actor,
            detail=f"set local {name!r} of frame {frame_index} ({frame.name}) from {_repr.repr(old_value)} "
                   f"to {_repr.repr(value)}")
    transaction.on_commit(lambda: signals.send_transition("operator", instance_id, status, program),
                          using=db.alias())
    return DurableInstance.objects.defer("state").get(pk=instance_id)


def fork(instance_id: str, step: int, *, new_instance_id: str | None = None, locals: dict[str, Any] | None = None,
         frame: int = -1, actor: str = "") -> DurableInstance:
    """A new instance that goes on from kept checkpoint ``step`` of ``instance_id``, with ``locals`` (JSON values)
    set in frame ``frame`` (``"<frame>.<name>"`` keys for other frames); scheduled after commit.

    The instance must keep a history (``make_durable(..., history=N)`` or ``DURABLE["HISTORY"]``). See
    :func:`durable_django.forks.fork` for the errors, and docs/fork.md.
    """
    return _fork(instance_id, step, new_instance_id=new_instance_id, locals=locals, frame=frame, actor=actor)
