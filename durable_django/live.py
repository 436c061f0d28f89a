"""Live status: the JSON an instance is shown as, group names, and the broadcast after each transition.

Why both a push and a poll: a channel layer message is only a hint. With the
embedded ``InMemoryChannelLayer`` a Celery worker's ``group_send`` never reaches
the web process, and even channels_redis drops messages to full channels. So
the consumers (:mod:`durable_django.consumers`) always re-read the row and only
send a status whose ``version`` is newer than the last one sent, and they poll
the database when the layer cannot cross processes. A push just makes the
update arrive sooner.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
from typing import Any

from asgiref.sync import async_to_sync

from durable.progress import describe

from .conf import durable_settings
from .models import FINISHED, DurableInstance
from .signals import instance_transition

log = logging.getLogger("durable_django")

#: Group that receives every instance's transitions.
ALL_GROUP = "durable.instances"
#: Columns read for a status message: never ``state`` (no unpickling, no large blobs).
STATUS_FIELDS = ("instance_id", "program", "status", "wait_kind", "waiting_for", "wake_at", "position", "steps",
                 "attempts", "version", "error", "created_at", "updated_at", "finished_at", "content_type_id",
                 "object_id", "progress")


def instance_group(instance_id: str) -> str:
    """A valid group name for any instance id (ids are user data: hashed, never used raw)."""
    return "durable.instance." + hashlib.sha1(instance_id.encode()).hexdigest()[:40]


def _iso(value) -> str | None:
    return value.isoformat() if value is not None else None


def status_payload(row: dict[str, Any]) -> dict[str, Any]:
    """The JSON sent to browsers for one instance, from a ``.values(*STATUS_FIELDS)`` row."""
    error = row.get("error") or ""
    over = row["status"] in FINISHED  # a finished instance waits for nothing (its row keeps its last wait)
    return {
        "instance_id": row["instance_id"], "program": row["program"], "status": row["status"],
        "wait_kind": "" if over else row["wait_kind"], "waiting_for": "" if over else row["waiting_for"],
        "wake_at": None if over else _iso(row["wake_at"]),
        "position": row["position"], "steps": row["steps"], "attempts": row["attempts"], "version": row["version"],
        "error": error.strip().splitlines()[-1][:300] if error.strip() else "",
        "created_at": _iso(row["created_at"]), "updated_at": _iso(row["updated_at"]),
        "finished_at": _iso(row["finished_at"]),
        "object": f"{row['content_type_id']}:{row['object_id']}" if row.get("content_type_id") else None,
        # what the program reported with durable.set_status(): the JSON value and a line for people
        "progress": row.get("progress"), "progress_text": describe(row.get("progress")),
    }


def read_status(instance_id: str) -> dict[str, Any] | None:
    row = DurableInstance.objects.filter(pk=instance_id).values(*STATUS_FIELDS).first()
    return None if row is None else status_payload(row)


def layer_is_cross_process(layer) -> bool:
    """False for no layer and for the in-memory layer (a worker's messages never reach this process)."""
    if layer is None:
        return False
    from channels.layers import InMemoryChannelLayer

    return not isinstance(layer, InMemoryChannelLayer)


def get_layer():
    """The layer named by ``DURABLE["CHANNEL_LAYER"]``; None without channels, without that alias, or for None."""
    alias = durable_settings.CHANNEL_LAYER
    if alias is None:
        return None
    try:
        from channels.layers import get_channel_layer
    except ImportError:  # channels not installed: nothing to push to
        return None
    try:
        return get_channel_layer(alias)
    except Exception:  # misconfigured layer: consumers still poll
        log.exception("cannot get the channel layer")
        return None


def notify(instance_id: str, *, kind: str = "", status: str = "") -> None:
    """Tell every consumer watching ``instance_id`` (and the list) to re-read it. Best effort, never raises."""
    layer = get_layer()
    if layer is None:
        return
    message = {"type": "durable.status", "instance_id": instance_id, "kind": kind, "status": status}

    async def send() -> None:
        await layer.group_send(instance_group(instance_id), message)
        await layer.group_send(ALL_GROUP, message)

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        try:
            async_to_sync(send)()
        except Exception:
            log.warning("live status push for %s failed (consumers will poll)", instance_id, exc_info=True)
        return
    # Called from a thread that runs an event loop (async code): do not block it.
    task = asyncio.ensure_future(send())
    task.add_done_callback(functools.partial(_report_failure, instance_id))


def _report_failure(instance_id: str, task: asyncio.Task[None]) -> None:
    """Log a failed background push (a cancelled one is not a failure)."""
    if not task.cancelled() and task.exception() is not None:
        log.warning("live status push for %s failed", instance_id, exc_info=task.exception())


def on_transition(sender, instance_id: str, kind: str = "", status: str = "", **kwargs: Any) -> None:
    notify(instance_id, kind=kind, status=status)


def connect() -> None:
    """Connect the broadcast to :data:`durable_django.signals.instance_transition` (idempotent).

    Called by ``DurableDjangoConfig.ready()`` in every process. Calling it again
    never adds a second receiver: it moves the one receiver to the end, so the
    push goes out after the receivers connected before that call (e.g. the
    human-task rows, which pages re-read when the push arrives).
    """
    instance_transition.disconnect(dispatch_uid=DISPATCH_UID)
    instance_transition.connect(on_transition, dispatch_uid=DISPATCH_UID, weak=False)


DISPATCH_UID = "durable_django.live.on_transition"
