"""Websocket status streams: refusals, snapshots, updates from this process, a worker process and Redis.

The consumers run under channels' ``WebsocketCommunicator`` here; a real
daphne server with a real websocket client is in ``test_channels_live.py``.
Every wait is a receive with a deadline (no sleep-and-hope).
"""

from __future__ import annotations

import time

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from channels.routing import URLRouter
from channels.testing.websocket import WebsocketCommunicator
from django.contrib.auth.models import AnonymousUser, Permission, User

import durable_django as dd
from durable import make_durable, wait_for_event
from durable_django import consumers, live
from durable_django.models import Status
from durable_django.routing import websocket_urlpatterns
from tests.django.testapp.durable_programs import two_events  # importable by worker processes

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(120)]
REDIS_URL = "redis://127.0.0.1:6379/5"


@make_durable
async def two_step():
    first = await wait_for_event("first")
    second = await wait_for_event("second")
    return [first, second]


def viewer(username: str = "watcher", perm: bool = True) -> User:
    user = User.objects.create_user(username, password="pw")
    if perm:
        user.user_permissions.add(Permission.objects.get(codename="view_durableinstance"))
    return User.objects.get(pk=user.pk)


def communicator(path: str, user) -> WebsocketCommunicator:
    c = WebsocketCommunicator(URLRouter(websocket_urlpatterns), path)
    c.scope["user"] = user
    return c


async def receive_until(c: WebsocketCommunicator, predicate, timeout: float = 20.0) -> dict:
    """Receive messages until one satisfies ``predicate``; fail at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError("no matching websocket message before the deadline")
        msg = await c.receive_json_from(timeout=remaining)
        if predicate(msg):
            return msg


def is_status(status: str):
    return lambda m: m.get("type") == "status" and m["instance"]["status"] == status


def test_anonymous_and_unauthorised_are_refused(uid):
    nobody = viewer("nobody", perm=False)

    async def scenario():
        for user in (AnonymousUser(), nobody):
            for path in (f"/ws/durable/instances/{uid}/", "/ws/durable/instances/"):
                c = communicator(path, user)
                connected, code = await c.connect(timeout=5)
                assert not connected and code == consumers.REFUSED
                await c.disconnect()

    async_to_sync(scenario)()


def test_one_instance_snapshot_then_updates_in_process(inline, uid):
    user = viewer()
    dd.start(two_step, instance_id=uid)

    async def scenario():
        c = communicator(f"/ws/durable/instances/{uid}/", user)
        connected, _ = await c.connect(timeout=5)
        assert connected
        snap = await receive_until(c, lambda m: m["type"] == "status")
        assert snap["instance"]["status"] == Status.PAUSED and snap["instance"]["waiting_for"] == "first"
        await sync_to_async(dd.publish_event)(uid, "first", 1)
        msg = await receive_until(c, lambda m: m["type"] == "status" and m["instance"]["waiting_for"] == "second")
        assert msg["instance"]["version"] > snap["instance"]["version"]
        await sync_to_async(dd.publish_event)(uid, "second", 2)
        await receive_until(c, is_status(Status.COMPLETED))
        await c.disconnect()

    async_to_sync(scenario)()


def test_list_stream_snapshot_and_new_instances(inline, uid):
    user = viewer()
    dd.start(two_step, instance_id=f"{uid}-a")

    async def scenario():
        c = communicator("/ws/durable/instances/", user)
        assert (await c.connect(timeout=5))[0]
        snap = await receive_until(c, lambda m: m["type"] == "snapshot")
        assert [i["instance_id"] for i in snap["instances"]] == [f"{uid}-a"]
        await sync_to_async(dd.start)(two_step, instance_id=f"{uid}-b")
        await receive_until(c, lambda m: m["type"] == "status" and m["instance"]["instance_id"] == f"{uid}-b"
                            and m["instance"]["status"] == Status.PAUSED)
        await sync_to_async(dd.cancel)(f"{uid}-a")
        await receive_until(c, lambda m: m["type"] == "status" and m["instance"]["instance_id"] == f"{uid}-a"
                            and m["instance"]["status"] == Status.CANCELLED)
        await c.disconnect()

    async_to_sync(scenario)()


def test_unknown_instance_is_reported_gone(uid):
    user = viewer()

    async def scenario():
        c = communicator(f"/ws/durable/instances/{uid}-missing/", user)
        assert (await c.connect(timeout=5))[0]
        assert await c.receive_json_from(timeout=5) == {"type": "gone", "instance_id": f"{uid}-missing"}
        await c.disconnect()

    async_to_sync(scenario)()


def test_worker_process_update_reaches_the_consumer_by_polling(worker_factory, uid, settings):
    """Embedded setup: the in-memory layer never sees the worker's push; the consumer's poll does."""
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    user = viewer()
    worker_factory()
    dd.start(two_events, "k", instance_id=uid)

    async def scenario():
        c = communicator(f"/ws/durable/instances/{uid}/", user)
        assert (await c.connect(timeout=5))[0]
        await receive_until(c, is_status(Status.PAUSED), timeout=60)
        await sync_to_async(dd.publish_event)(uid, "first", 1)
        await receive_until(c, lambda m: m["type"] == "status" and m["instance"]["waiting_for"] == "second", 60)
        await c.disconnect()

    async_to_sync(scenario)()


def test_worker_process_update_arrives_through_channels_redis(worker_factory, uid, settings, monkeypatch):
    """Production setup: the worker pushes through Redis; polling is slowed down so only the push can be in time."""
    redis = pytest.importorskip("redis")
    try:
        redis.Redis.from_url(REDIS_URL).ping()
    except Exception as exc:  # pragma: no cover - depends on the machine
        pytest.skip(f"Redis is not reachable at {REDIS_URL}: {exc}")
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels_redis.core.RedisChannelLayer",
                                           "CONFIG": {"hosts": [{"address": REDIS_URL, "socket_timeout": 30}],
                                                      "prefix": f"durable-test-{uid}"}}}
    monkeypatch.setattr(consumers, "SAFETY_POLL_INTERVAL", 600.0)
    user = viewer()
    worker_factory(extra_env={"REDIS_URL": REDIS_URL, "CHANNELS_PREFIX": f"durable-test-{uid}"})
    dd.start(two_events, "k", instance_id=uid)

    async def scenario():
        c = communicator(f"/ws/durable/instances/{uid}/", user)
        assert (await c.connect(timeout=5))[0]
        assert live.layer_is_cross_process(live.get_layer())
        await receive_until(c, is_status(Status.PAUSED), timeout=60)
        await sync_to_async(dd.publish_event)(uid, "first", 1)
        await receive_until(c, lambda m: m["type"] == "status" and m["instance"]["waiting_for"] == "second", 60)
        await c.disconnect()

    try:
        async_to_sync(scenario)()
    finally:  # channels_redis keeps some keys (a channel's in-flight counter) without expiry: remove ours
        client = redis.Redis.from_url(REDIS_URL)
        keys = client.keys(f"durable-test-{uid}*")
        if keys:
            client.delete(*keys)
        client.close()
