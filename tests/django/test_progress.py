"""Progress from inside a process (docs/progress.md): real Celery workers, the API, the admin, a real websocket.

The program (tests/django/testapp/progress_programs.py) calls durable.set_status at every step and
durable.publish before and after a wait; the test process reads what the worker's checkpoints saved.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth.models import Permission, User
from django.db import connections, transaction
from django.test import Client
from django.urls import reverse

import durable_django as dd
from durable_django.db import ops
from durable_django.exceptions import UnknownInstance, ValueNotPublished, ValueTimeout
from durable_django.models import DurableInstance, Status
from tests.django.conftest import wait_until
from tests.django.test_channels_live import asgi_server, session_cookie  # noqa: F401  (fixture)
from tests.django.test_demo_pages import APPROVE, answer, element, live, page, roles, submit, text  # noqa: F401
from tests.django.testapp import progress_programs as progs

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(180)]


def wait_status(uid: str, status: str, timeout: float = 60) -> DurableInstance:
    return wait_until(lambda: DurableInstance.objects.filter(pk=uid, status=status).first(), timeout=timeout,
                      message=lambda: f"{uid} {status}: {DurableInstance.objects.filter(pk=uid).first()!r}")


def test_progress_and_values_through_real_workers_api_and_admin(worker_factory, uid):
    worker_factory()
    dd.start(progs.reported_job, uid, 3, instance_id=uid)
    # a view waits for the value the worker publishes (polling with backoff), across processes
    assert dd.get_value(uid, "total", timeout=60) == 0 + 1 + 2
    inst = wait_status(uid, Status.PAUSED)
    assert dd.get_instance(uid).progress == {"stage": "waiting for go", "percent": 90}
    assert inst.progress_text == "waiting for go · 90%"
    assert dd.get_values(uid) == {"total": 3}

    # not there yet: the deadline holds (it neither returns early nor waits much longer)
    began = time.monotonic()
    with pytest.raises(ValueTimeout, match="did not publish 'answer' within 0.5"):
        dd.get_value(uid, "answer", timeout=0.5)
    assert 0.5 <= time.monotonic() - began < 3
    assert dd.get_value(uid, "answer", timeout=0.2, default="none yet") == "none yet"

    # the admin shows it (list column and detail)
    admin = User.objects.create_superuser("root-progress", password="pw")
    client = Client()
    client.force_login(admin)
    listing = client.get(reverse("admin:durable_django_durableinstance_changelist")).content.decode()
    assert "waiting for go · 90%" in listing
    detail = client.get(reverse("admin:durable_django_durableinstance_change", args=[uid])).content.decode()
    assert "&#x27;stage&#x27;: &#x27;waiting for go&#x27;" in detail and 'id="durable-published"' in detail

    # another thread waits while the event is published: it gets the value the worker publishes after it
    got: list = []
    def wait_for_answer() -> None:
        try:
            got.append(dd.get_value(uid, "answer", timeout=60))
        finally:
            connections.close_all()  # this thread's connection, or the test database cannot be dropped

    waiter = threading.Thread(target=wait_for_answer)
    waiter.start()
    dd.publish_event(uid, "go", "ann")
    waiter.join(70)
    assert got == [{"total": 3, "go": "ann"}]
    wait_status(uid, Status.COMPLETED)
    assert dd.get_instance(uid).progress == {"stage": "done", "percent": 100, "message": "go from ann"}
    with pytest.raises(ValueNotPublished, match="never published 'nothing'"):
        dd.get_value(uid, "nothing", timeout=30)  # finished: refused at once, not after 30 s
    with pytest.raises(UnknownInstance):
        dd.get_value(uid + "-missing", "total", timeout=0)


def test_another_process_waits_for_a_value_without_holding_a_worker(worker_factory, uid):
    worker_factory()
    waiter = uid + "-waiter"
    dd.start(progs.waits_for_another, uid, instance_id=waiter)  # before the other even exists: retried
    wait_until(lambda: DurableInstance.objects.filter(pk=waiter, status=Status.PAUSED, wait_kind="timer").exists(),
               timeout=60, message="the waiting instance paused on its retry timer")
    dd.start(progs.reported_job, uid, 2, instance_id=uid)
    wait_status(uid, Status.PAUSED)
    # the waiter is paused between its reads (a timer), so the one worker (pool=solo) is free for the other
    assert DurableInstance.objects.get(pk=waiter).status in (Status.PAUSED, Status.RUNNING)
    dd.publish_event(uid, "go", "cy")
    wait_status(waiter, Status.COMPLETED)
    assert dd.result(waiter) == {"got": {"total": 1, "go": "cy"}}


def test_aget_value_waits_in_async_code(worker_factory, uid):
    worker_factory()

    async def main():
        await dd.astart(progs.reported_job, uid, 2, instance_id=uid)
        with pytest.raises(ValueTimeout):
            await dd.aget_value(uid, "answer", timeout=0.3)
        try:
            return await dd.aget_value(uid, "total", timeout=60)
        finally:  # asgiref's sync thread keeps its connection open: close it (the test database is dropped)
            await sync_to_async(connections.close_all, thread_sensitive=True)()

    assert asyncio.run(main()) == 1


def test_progress_column_written_only_when_it_changed(inline, uid, monkeypatch):
    operations = type(ops("default"))
    real = operations.checkpoint
    written: list[tuple] = []  # the columns of every checkpoint's UPDATE (the statement is cached per column set)

    def spy(self, instance_id, worker_id, columns, *args, **kwargs):
        written.append(tuple(columns))
        return real(self, instance_id, worker_id, columns, *args, **kwargs)

    monkeypatch.setattr(operations, "checkpoint", spy)
    dd.start(progs.sometimes_reports, uid, 7, instance_id=uid)
    inst = DurableInstance.objects.get(pk=uid)
    assert inst.status == Status.COMPLETED and inst.progress == {"block": 6}
    assert len(written) >= 7  # one checkpoint per step at least
    # the status changes at steps 0, 3 and 6: three checkpoints carry the column, the others leave it out
    assert sum("progress" in cols for cols in written) == 3
    assert not any("published" in cols for cols in written)


def test_websocket_receives_the_progress(asgi_server, worker_factory, uid):  # noqa: F811
    from websockets.sync.client import connect

    worker_factory()
    watcher = User.objects.create_user("ws-progress", password="pw")
    watcher.user_permissions.add(Permission.objects.get(codename="view_durableinstance"))
    dd.start(progs.reported_job, uid, 2, instance_id=uid)
    ws_url = f"ws://127.0.0.1:{asgi_server.port}/ws/durable/instances/{uid}/"
    with connect(ws_url, origin=asgi_server.url, open_timeout=10,
                 additional_headers={"Cookie": f"sessionid={session_cookie(watcher)}"}) as ws:
        def next_where(check, deadline: float) -> dict:
            while True:
                msg = json.loads(ws.recv(timeout=max(0.1, deadline - time.monotonic())))
                if msg["type"] == "status" and check(msg["instance"]):
                    return msg["instance"]

        paused = next_where(lambda i: i["status"] == Status.PAUSED, time.monotonic() + 60)
        assert paused["progress"] == {"stage": "waiting for go", "percent": 90}
        assert paused["progress_text"] == "waiting for go · 90%"
        dd.publish_event(uid, "go", "bob")
        done = next_where(lambda i: i["status"] == Status.COMPLETED, time.monotonic() + 60)
        assert done["progress"]["message"] == "go from bob"


def test_bad_status_fails_the_step_where_it_is_set(inline, uid, settings):
    settings.DURABLE = {**settings.DURABLE, "MAX_STATUS_BYTES": 20}
    dd.start(progs.reported_job, uid, 1, instance_id=uid)  # {"stage": "working", "percent": 0} is 32 bytes
    inst = DurableInstance.objects.get(pk=uid)
    assert inst.status == Status.FAILED
    assert "more than the limit of 20" in inst.error and "set_status" in inst.error


def test_the_employee_sees_the_progress_of_the_expense(inline, roles):  # noqa: F811
    """The example project: the expense process reports its stage; the employee's page and its live status
    show it (example_project/expenses/progress.py)."""
    e = submit(roles["alice"], "1500", "Conference")
    url = reverse("expense", args=[e.pk])
    html = page(roles["alice"], url)
    both = "waiting for the manager and finance (asked at the same time)"
    assert text(element(html, "progress-text")) == f"both · 25% · {both}"
    assert 'value="25"' in element(html, "progress-bar")
    assert live(e)["progress"] == {"stage": "both", "percent": 25, "message": both}
    answer(roles["bob"], e.instance_id, "manager_decision", APPROVE)
    assert live(e)["progress_text"] == "finance_left · 60% · approved by the manager, waiting for finance"
    answer(roles["carol"], e.instance_id, "finance_decision", APPROVE)
    assert live(e)["progress"]["stage"] == "paid"
    assert text(element(page(roles["alice"], url), "progress-text")) == "paid · 100% · paid"


def test_a_fork_starts_with_the_progress_of_its_checkpoint(inline, uid):
    from durable_django import operations

    dd.start(progs.reports_with_history, uid, 5, instance_id=uid)
    assert dd.get_instance(uid).progress == {"step": 4}
    with pytest.raises(RolledBack), transaction.atomic():  # rolled back: the fork is never scheduled nor run
        fork = operations.fork(uid, 3, new_instance_id=uid + "-f")
        assert DurableInstance.objects.get(pk=fork.pk).progress == {"step": 2}  # set before checkpoint 3's step
        raise RolledBack
    assert not DurableInstance.objects.filter(pk=uid + "-f").exists()


class RolledBack(Exception):
    pass


def test_set_status_inside_a_db_step(inline, uid):
    dd.start(progs.reports_from_a_step, uid, instance_id=uid)
    inst = DurableInstance.objects.get(pk=uid)
    assert inst.status == Status.COMPLETED and inst.progress == {"stage": "in a db_step", "done": 2}


def test_bad_progress_settings_are_reported_by_the_checks(settings):
    from durable_django.checks import check_progress_settings

    assert check_progress_settings() == []
    settings.DURABLE = {**settings.DURABLE, "MAX_STATUS_BYTES": "4k", "MAX_PUBLISHED_KEYS": 0,
                        "VALUE_POLL_MAX_INTERVAL": -1}
    ids = [e.id for e in check_progress_settings()]
    assert ids == ["durable_django.E070", "durable_django.E070", "durable_django.E071"]
