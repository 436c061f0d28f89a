"""The async API (astart, apublish_event, acancel, aresume, aresult, aget_instance): from async views under
ASGI (Django's AsyncClient, and a real daphne server with a real Celery worker) and from plain async code.

The async functions run the sync ones in asgiref's thread-sensitive executor, so they must give the same rows,
the same wake-ups after commit and the same exceptions; these tests check each from real async callers.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import urllib.error
import urllib.request

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from django.contrib.auth.models import User
from django.db import connections, transaction
from django.test import AsyncClient

import durable_django as dd
from durable_django import api, events, views
from durable_django.exceptions import InstanceExists, InstanceFinished, InvalidPayload, UnknownInstance
from durable_django.humantasks import sync as humantasks_sync
from durable_django.models import DurableEvent, DurableHistory, DurableInstance, Status
from tests.django.conftest import wait_until
from tests.django.test_channels_live import asgi_server  # noqa: F401  (fixture)
from tests.django.testapp import durable_programs as progs

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(120)]

PAIRS = [(api.start, dd.astart), (events.publish_event, dd.apublish_event), (api.cancel, dd.acancel),
         (api.resume, dd.aresume), (api.result, dd.aresult), (api.get_instance, dd.aget_instance),
         (humantasks_sync.answer, humantasks_sync.aanswer), (views.publish_for_user, views.apublish_for_user)]


@pytest.fixture(autouse=True, scope="module")
def _close_the_executor_threads_connections():
    """Plain async code (``asyncio.run``) runs the sync API in asgiref's single thread-sensitive thread, whose
    connection Django never closes: close it after this module, or the test database cannot be dropped."""
    yield
    asyncio.run(sync_to_async(connections.close_all, thread_sensitive=True)())


def row(iid: str) -> DurableInstance:
    return DurableInstance.objects.get(pk=iid)


@pytest.mark.parametrize(("sync", "asynchronous"), PAIRS, ids=lambda f: getattr(f, "__name__", ""))
def test_each_async_function_has_the_signature_of_its_sync_twin(sync, asynchronous):
    assert inspect.iscoroutinefunction(asynchronous)
    assert asynchronous.__name__ == "a" + sync.__name__
    assert list(inspect.signature(asynchronous).parameters.values()) == list(
        inspect.signature(sync).parameters.values())


def test_the_async_names_are_exported_like_the_sync_ones():
    for name in ("astart", "apublish_event", "acancel", "aresume", "aresult", "aget_instance"):
        assert name in dd.__all__ and getattr(dd, name) is getattr(api, name)


# -- async views through Django's AsyncClient (the ASGI handler in this process) ---------------------------
def test_async_views_start_publish_and_read_the_result(inline, uid):
    async def scenario():
        client = AsyncClient()
        assert (await client.post(f"/test-async/start/{uid}/", "\"k\"", content_type="application/json")
                ).status_code == 201
        status = (await client.get(f"/test-async/status/{uid}/")).json()
        assert status == {"status": "paused", "waiting_for": "first"}
        assert (await client.post(f"/test-async/publish/{uid}/first/", "1", content_type="application/json")
                ).status_code == 202
        assert (await client.get(f"/test-async/status/{uid}/")).json()["waiting_for"] == "second"
        unfinished = (await client.get(f"/test-async/result/{uid}/")).json()
        assert unfinished["error"] == "LookupError"
        await client.post(f"/test-async/publish/{uid}/second/", "{\"n\": 2}", content_type="application/json")
        return (await client.get(f"/test-async/result/{uid}/")).json()

    assert async_to_sync(scenario)() == {"result": [1, {"n": 2}]}
    inst = row(uid)
    assert inst.status == Status.COMPLETED and inst.result == [1, {"n": 2}]
    assert list(DurableHistory.objects.filter(instance_id=uid).order_by("id").values_list("kind", flat=True)) == [
        "started", "paused", "event_published", "resumed", "paused", "event_published", "resumed", "completed"]


def test_the_sync_start_in_an_async_view_is_refused_and_astart_is_the_fix(uid):
    async def scenario():
        return (await AsyncClient().post(f"/test-async/start-sync/{uid}/")).json()

    assert async_to_sync(scenario)()["error"] == "SynchronousOnlyOperation"
    assert not DurableInstance.objects.filter(pk=uid).exists()


def test_async_views_cancel_and_resume_give_the_sync_errors(inline, uid):
    async def scenario():
        client = AsyncClient()
        missing = (await client.post("/test-async/cancel/nope/")).json()
        await client.post(f"/test-async/start/{uid}/", "\"k\"", content_type="application/json")
        cancelled = (await client.post(f"/test-async/cancel/{uid}/")).json()
        again = (await client.post(f"/test-async/cancel/{uid}/")).json()
        resumed = (await client.post(f"/test-async/resume/{uid}/")).json()
        published = (await client.post(f"/test-async/publish/{uid}/first/", "1",
                                        content_type="application/json")).json()
        result = (await client.get(f"/test-async/result/{uid}/")).json()
        return missing, cancelled, again, resumed, published, result

    missing, cancelled, again, resumed, published, result = async_to_sync(scenario)()
    assert missing["error"] == "UnknownInstance" and cancelled == {"status": "cancelled"}
    assert again["error"] == resumed["error"] == published["error"] == "InstanceFinished"
    assert result["error"] == "InstanceCancelled"
    inst = row(uid)
    assert inst.status == Status.CANCELLED and inst.error == "no longer needed"
    # the view requested it (its cleanup then ran in this process, inline, and ended it cancelled)
    assert DurableHistory.objects.get(instance_id=uid, kind="cancel_requested").actor == "async-view"
    assert DurableHistory.objects.filter(instance_id=uid).latest("id").kind == "cancelled"
    assert not DurableEvent.objects.filter(instance_id=uid).exists()


def test_an_async_view_answers_as_the_logged_in_user(inline, uid):
    boss = User.objects.create_superuser("async-boss", password="pw")
    User.objects.create_user("async-nobody", password="pw")
    dd.start(progs.approval, 5, instance_id=uid)

    async def scenario():
        anonymous = await AsyncClient().post(f"/test-async/answer/{uid}/approved/", "1",
                                             content_type="application/json")
        nobody = AsyncClient()
        await nobody.alogin(username="async-nobody", password="pw")
        refused = await nobody.post(f"/test-async/answer/{uid}/approved/", "1", content_type="application/json")
        client = AsyncClient()
        await client.aforce_login(boss)
        done = await client.post(f"/test-async/answer/{uid}/approved/", "{\"ok\": true}",
                                 content_type="application/json")
        return anonymous.status_code, refused.status_code, done.status_code

    assert async_to_sync(scenario)() == (401, 403, 202)
    assert row(uid).status == Status.COMPLETED and dd.result(uid) == {"order": 5, "decision": {"ok": True}}
    assert DurableHistory.objects.get(instance_id=uid, kind="event_published").actor == boss.username


# -- plain async code ------------------------------------------------------------------------------------------
def test_plain_async_code_gets_the_same_outcomes_and_exceptions(inline, uid):
    async def scenario():
        inst = await dd.astart(progs.approval, 9, instance_id=uid)
        assert (await dd.astart(progs.approval, 9, instance_id=uid)).pk == inst.pk  # idempotent
        with pytest.raises(InstanceExists):
            await dd.astart(progs.two_events, "x", instance_id=uid)
        with pytest.raises(TypeError):
            await dd.astart(progs.approval, instance_id=f"{uid}-b")  # a missing argument
        with pytest.raises(UnknownInstance):
            await dd.aget_instance("missing")
        with pytest.raises(UnknownInstance):
            await dd.apublish_event("missing", "approved")
        with pytest.raises(InvalidPayload):
            await dd.apublish_event(uid, "approved", float("nan"))
        with pytest.raises(LookupError):
            await dd.aresult(uid)
        await dd.apublish_event(uid, "approved", {"by": "code"})
        assert (await dd.aget_instance(uid)).status == Status.COMPLETED
        with pytest.raises(InstanceFinished):
            await dd.acancel(uid)
        with pytest.raises(InstanceFinished):
            await dd.aresume(uid)
        return await dd.aresult(uid)

    assert async_to_sync(scenario)() == {"order": 9, "decision": {"by": "code"}}
    assert DurableEvent.objects.filter(instance_id=uid).count() == 1


def test_apublish_event_with_an_idempotency_key_stores_one_event(inline, uid):
    async def scenario():
        await dd.astart(progs.two_events, "k", instance_id=uid)
        ahead = await dd.apublish_event(uid, "second", "b", idempotency_key="once")  # kept until the wait
        assert (await dd.apublish_event(uid, "second", "b", idempotency_key="once")).pk == ahead.pk
        await dd.apublish_event(uid, "first", "a")
        return await dd.aresult(uid)

    assert async_to_sync(scenario)() == ["a", "b"]
    assert DurableEvent.objects.filter(instance_id=uid).count() == 2


def test_a_failed_instance_raises_its_error_from_aresult(inline, uid):
    dd.start(progs.failing, "boom", instance_id=uid)
    with pytest.raises(ValueError, match="boom"):
        async_to_sync(dd.aresult)(uid)


def test_aresume_inline_runs_the_instance_and_returns_its_outcome(uid, settings):
    dd.start(progs.effect_then_finish, uid, instance_id=uid)  # not inline: it stays pending (no worker)
    assert row(uid).status == Status.PENDING
    assert async_to_sync(dd.aresume)(uid, inline=True) == Status.COMPLETED
    assert row(uid).status == Status.COMPLETED and dd.result(uid) == 1


def test_a_rolled_back_transaction_around_the_sync_call_leaves_nothing(inline, uid):
    """Several writes in one transaction: a sync function wrapped once (documented in docs/async.md)."""

    def start_and_fail():
        with transaction.atomic():
            dd.start(progs.two_events, "k", instance_id=uid)
            raise RuntimeError("the caller's transaction fails")

    async def scenario():
        with pytest.raises(RuntimeError):
            await sync_to_async(start_and_fail)()

    async_to_sync(scenario)()
    assert not DurableInstance.objects.filter(pk=uid).exists()


def test_asyncio_run_from_a_script(uid):
    """``asyncio.run(...)`` (a script, a management command): no asgiref outer loop, asgiref's own sync thread."""

    async def main():
        await dd.astart(progs.two_events, "k", instance_id=uid)
        await dd.apublish_event(uid, "first", "a")
        return await dd.aget_instance(uid)

    inst = asyncio.run(main())
    assert inst.status == Status.PENDING
    assert DurableEvent.objects.get(instance_id=uid).name == "first"
    assert dd.resume(uid, inline=True) == Status.PAUSED  # took "first" from its inbox, now waits for "second"
    assert row(uid).waiting_for == "second"


# -- a real ASGI server (daphne) and a real Celery worker ------------------------------------------------------
def _http(method: str, url: str, body: object = None) -> tuple[int, dict]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=20) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_under_daphne_a_publish_from_an_async_view_resumes_the_instance(asgi_server, worker_factory, uid):  # noqa: F811
    worker_factory()
    base = f"{asgi_server.url}/test-async"
    assert _http("POST", f"{base}/start/{uid}/", "k") == (201, {"instance_id": uid, "status": "pending"})
    wait_until(lambda: row(uid).waiting_for == "first", timeout=60, message="the worker to run it to its wait")
    code, body = _http("POST", f"{base}/publish/{uid}/first/", {"a": 1})
    assert code == 202 and DurableEvent.objects.filter(pk=body["event_id"], instance_id=uid).exists()
    wait_until(lambda: row(uid).waiting_for == "second", timeout=60, message="the publish to resume it")
    assert _http("GET", f"{base}/result/{uid}/")[1]["error"] == "LookupError"
    _http("POST", f"{base}/publish/{uid}/second/", [2])
    wait_until(lambda: row(uid).status == Status.COMPLETED, timeout=60, message="the instance to complete")
    assert _http("GET", f"{base}/result/{uid}/") == (200, {"result": [{"a": 1}, [2]]})
    assert _http("POST", f"{base}/publish/{uid}/first/", 1)[1]["error"] == "InstanceFinished"
    assert _http("POST", f"{base}/cancel/nope/")[1]["error"] == "UnknownInstance"
    assert _http("POST", f"{base}/start-sync/{uid}-s/")[1]["error"] == "SynchronousOnlyOperation"
