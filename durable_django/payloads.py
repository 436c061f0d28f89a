"""Instance -> JSON-able dict, shared by commands (and later the admin and websockets)."""

from __future__ import annotations

from typing import Any

from durable import SavedState, StateTamperedError

from .branches import live_branches
from .models import DurableInstance
from .signing import STATE, blob_context, unsign
from .waits import retry_status


def _iso(value) -> str | None:
    return value.isoformat() if value is not None else None


#: How many children an instance's detail lists.
CHILDREN_SHOWN = 500


def instance_summary(inst: DurableInstance) -> dict[str, Any]:
    return {
        "instance_id": inst.instance_id, "program": inst.program, "program_version": inst.program_version,
        "layout_hash": inst.layout_hash, "status": inst.status, "wait_kind": inst.wait_kind,
        "waiting_for": inst.waiting_for, "wake_at": _iso(inst.wake_at), "position": inst.position,
        "steps": inst.steps, "attempts": inst.attempts, "version": inst.version,
        "lease_owner": inst.lease_owner, "lease_expires_at": _iso(inst.lease_expires_at),
        "created_at": _iso(inst.created_at), "updated_at": _iso(inst.updated_at),
        "finished_at": _iso(inst.finished_at),
        "object": _linked(inst),
    }


def _linked(inst: DurableInstance) -> str | None:
    """``app_label.model:object_id`` of the linked object (no query when there is none)."""
    if not inst.content_type_id:
        return None
    ct = inst.content_type
    return f"{ct.app_label}.{ct.model}:{inst.object_id}" if ct is not None else None


def instance_detail(inst: DurableInstance) -> dict[str, Any]:
    """Summary plus result, error, inbox, history and (after the HMAC check) the call stack with locals."""
    data = instance_summary(inst)
    data["result"] = inst.result
    data["error"] = inst.error
    data["deadline"] = _iso(inst.deadline)
    data["cancel_requested_at"] = _iso(inst.cancel_requested_at)
    data["cancel_reason"] = inst.cancel_reason
    data["parent"] = inst.parent_id
    data["on_parent_close"] = inst.on_parent_close
    data["children"] = [  # child instances (durable.start_child), oldest first; the first CHILDREN_SHOWN
        {"instance_id": iid, "status": st, "program": prog, "on_parent_close": policy}
        for iid, st, prog, policy in inst.children.order_by("created_at", "instance_id")
        .values_list("instance_id", "status", "program", "on_parent_close")[:CHILDREN_SHOWN]]
    data["events"] = [
        {"id": e.id, "name": e.name, "payload": e.payload, "idempotency_key": e.idempotency_key,
         "created_at": _iso(e.created_at), "consumed_at": _iso(e.consumed_at), "publisher_id": e.publisher_id,
         "rejected": e.rejected}
        for e in inst.events.order_by("id")]
    data["history"] = [
        {"kind": h.kind, "status": h.status, "detail": h.detail, "actor": h.actor, "at": _iso(h.at)}
        for h in inst.history.order_by("id")]
    data["branches"] = [  # live parallel branches (durable_django.branches)
        {"path": b["path"], "status": b["status"], "position": b["position"], "waits_for": b["waits_for"],
         "steps": b["steps"], "updated_at": _iso(b["updated_at"])} for b in live_branches(inst)]
    data["stack"] = None
    data["retrying"] = None
    if inst.state is not None:
        try:
            state: SavedState = unsign(inst.state, blob_context(inst.instance_id, inst.program, STATE))
        except StateTamperedError as exc:
            data["stack"] = {"error": str(exc)}
        except Exception as exc:  # code gone or changed: cannot unpickle frames
            data["stack"] = {"error": f"cannot load state: {type(exc).__name__}: {exc}"}
        else:
            data["retrying"] = retry_status(state)
            stack = state.get("stack")
            data["stack"] = [
                {"position": fr.position(),
                 "locals": {k: _short(v) for k, v in fr.user_locals().items()}}
                for fr in (stack or [])]
    return data


def _short(value: Any) -> str:
    import reprlib

    r = reprlib.Repr()
    r.maxstring = r.maxother = 200
    return r.repr(value)
