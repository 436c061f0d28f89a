"""Websocket consumers streaming instance status as JSON.

``InstanceStatusConsumer`` streams one instance, ``InstanceListConsumer`` all
of them. Both check the user *before* accepting: anonymous users and users
without permission are refused (closed with code 4403, the handshake never
completes). On connect the consumer sends a snapshot read from the database;
after that it sends a message each time the instance's row ``version`` grows (never an older one).

Messages (JSON): ``{"type": "status", "instance": {...}}`` (see
:func:`durable_django.live.status_payload`), ``{"type": "snapshot",
"instances": [...]}`` for the list, ``{"type": "gone", "instance_id": ...}``
when an instance is purged.

Updates come from two sources (see :mod:`durable_django.live`): a channel-layer
push sent after every transition, and a database poll that runs when the layer
cannot cross processes (``InMemoryChannelLayer``: a worker's push never
arrives) and, slowly, as a safety net otherwise. The layer is
``CHANNEL_LAYERS[DURABLE["CHANNEL_LAYER"]]`` and the poll interval
``DURABLE["STATUS_POLL_INTERVAL"]`` (see :mod:`durable_django.conf`).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from . import live
from .conf import durable_settings
from .limits import bad_character
from .models import DurableInstance

log = logging.getLogger("durable_django")

#: Close code for refused connections (application-defined range 4000-4999, "403").
REFUSED = 4403
#: Seconds between the safety-net polls when the layer is cross-process (the push is the fast path);
#: never shorter than ``STATUS_POLL_INTERVAL``.
SAFETY_POLL_INTERVAL = 15.0


def poll_interval(layer) -> float:
    """How often a consumer on ``layer`` re-reads the database (see ``STATUS_POLL_INTERVAL``)."""
    interval = float(durable_settings.STATUS_POLL_INTERVAL)
    return max(SAFETY_POLL_INTERVAL, interval) if live.layer_is_cross_process(layer) else interval


class _StatusConsumer(AsyncJsonWebsocketConsumer):
    #: Permission a user needs (besides being authenticated). Subclasses may override :meth:`has_permission`.
    permission = "durable_django.view_durableinstance"

    groups_joined: list[str]

    @property
    def channel_layer_alias(self) -> str | None:  # read by channels when the connection starts
        return durable_settings.CHANNEL_LAYER

    async def connect(self) -> None:
        self.groups_joined = []
        self._poller: asyncio.Task | None = None
        user = self.scope.get("user")
        if user is None or not user.is_authenticated or not await database_sync_to_async(self.has_permission)(user):
            await self.close(code=REFUSED)
            return
        await self.accept()
        if self.channel_layer is not None:
            for group in self.groups_to_join():
                await self.channel_layer.group_add(group, self.channel_name)
                self.groups_joined.append(group)
        await self.send_snapshot()
        self._poller = asyncio.ensure_future(self._poll(self.get_poll_interval()))

    def get_poll_interval(self) -> float:
        """Seconds between database polls (``STATUS_POLL_INTERVAL``, or the safety net with a cross-process layer)."""
        return poll_interval(self.channel_layer)

    def has_permission(self, user) -> bool:
        """Called in a thread (may query the database); True lets the user connect."""
        return user.has_perm(self.permission)

    def groups_to_join(self) -> list[str]:
        raise NotImplementedError

    async def disconnect(self, code: int) -> None:
        poller = getattr(self, "_poller", None)
        if poller is not None:
            poller.cancel()
        for group in getattr(self, "groups_joined", []):
            await self.channel_layer.group_discard(group, self.channel_name)

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        """Clients may send ``{"type": "refresh"}`` to get a fresh snapshot (e.g. after a reconnect)."""
        if isinstance(content, dict) and content.get("type") == "refresh":
            await self.send_snapshot()

    async def _poll(self, interval: float) -> None:
        try:
            while True:
                await asyncio.sleep(interval)
                await self.refresh()
        except asyncio.CancelledError:
            pass
        except Exception:  # the database went away: stop polling, keep the socket (the push may still work)
            log.exception("durable status poll failed")

    async def durable_status(self, message: dict) -> None:
        """Channel layer handler for ``{"type": "durable.status", "instance_id": ...}``: re-read, never trust."""
        await self.refresh(message.get("instance_id"))

    async def send_snapshot(self) -> None:
        raise NotImplementedError

    async def refresh(self, instance_id: str | None = None) -> None:
        raise NotImplementedError


class InstanceStatusConsumer(_StatusConsumer):
    """Status of one instance, at ``ws/durable/instances/<instance_id>/``."""

    def get_instance_id(self) -> str:
        return self.scope["url_route"]["kwargs"]["instance_id"]

    def has_permission(self, user) -> bool:
        """Refuses an id no instance can have (a NUL character...), which the database would not compare."""
        return bad_character(self.get_instance_id()) is None and super().has_permission(user)

    def groups_to_join(self) -> list[str]:
        return [live.instance_group(self.get_instance_id())]

    async def send_snapshot(self) -> None:
        self._version = -1
        await self.refresh()

    def read(self, instance_id: str) -> dict | None:
        """The status JSON of the instance (runs in a thread); subclasses may add fields."""
        return live.read_status(instance_id)

    async def refresh(self, instance_id: str | None = None) -> None:
        iid = self.get_instance_id()
        if instance_id is not None and instance_id != iid:
            return
        data = await database_sync_to_async(self.read)(iid)
        if data is None:
            if self._version != -2:
                self._version = -2
                await self.send_json({"type": "gone", "instance_id": iid})
            return
        if data["version"] > self._version:  # never older: a slow poll may read the row before a push did
            self._version = data["version"]
            await self.send_json({"type": "status", "instance": data})


class InstanceListConsumer(_StatusConsumer):
    """Status of every instance, at ``ws/durable/instances/``: a snapshot of the latest, then changes."""

    #: How many instances the snapshot and each poll send at most.
    limit = 50

    def groups_to_join(self) -> list[str]:
        return [live.ALL_GROUP]

    def _latest(self, since=None) -> list[dict]:
        qs = DurableInstance.objects.values(*live.STATUS_FIELDS)
        if since is not None:
            qs = qs.filter(updated_at__gte=since)
        return [live.status_payload(r) for r in qs.order_by("-updated_at")[: self.limit]]

    async def send_snapshot(self) -> None:
        rows = await database_sync_to_async(self._latest)()
        self._versions = {r["instance_id"]: r["version"] for r in rows}
        self._since = max((r["updated_at"] for r in rows), default=None)
        await self.send_json({"type": "snapshot", "instances": rows})

    async def refresh(self, instance_id: str | None = None) -> None:
        if instance_id is not None:
            data = await database_sync_to_async(live.read_status)(instance_id)
            rows = [data] if data is not None else []
        else:
            from django.utils.dateparse import parse_datetime

            since = parse_datetime(self._since) if self._since else None
            rows = await database_sync_to_async(self._latest)(since)
        for data in reversed(rows):
            if self._versions.get(data["instance_id"], -1) >= data["version"]:
                continue
            self._versions[data["instance_id"]] = data["version"]
            if self._since is None or data["updated_at"] > self._since:
                self._since = data["updated_at"]
            await self.send_json({"type": "status", "instance": data})
