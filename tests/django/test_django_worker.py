"""Integration with real Celery worker subprocesses on the test database.

The broker is whatever the settings select: kombu's filesystem transport by
default (no server), Redis when ``CELERY_BROKER_URL`` points at it (the
PostgreSQL run of ``make test`` does). Every wait polls a condition with a
deadline.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from django.db import connection

import durable_django as dd
from durable_django.models import DurableHistory, DurableInstance, Status
from tests.django.conftest import ROOT, wait_until
from tests.django.testapp import durable_programs as progs
from tests.django.testapp.models import SideEffect

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(240)]


def status(iid: str) -> str | None:
    return DurableInstance.objects.filter(pk=iid).values_list("status", flat=True).first()


def wait_status(iid: str, wanted: str, timeout: float = 60, on_tick=None) -> None:
    wait_until(lambda: status(iid) == wanted, timeout=timeout, on_tick=on_tick, interval=0.5 if on_tick else 0.05,
               message=lambda: f"{iid} to be {wanted} (it is {status(iid)})")
    assert status(iid) == wanted


def manage(*args: str) -> subprocess.CompletedProcess:
    """Run a management command in another process, on the test database."""
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.django.settings",
           "DURABLE_TEST_DB_NAME": str(connection.settings_dict["NAME"])}
    return subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)


def test_start_pause_publish_from_another_process_resume_complete(worker_factory, uid, settings):
    worker = worker_factory()
    scheme = settings.CELERY_BROKER_URL.partition(":")[0]
    assert f"transport:   {scheme}://" in worker.output()  # the broker under test really is in use
    dd.start(progs.approval, 11, instance_id=uid)
    wait_status(uid, Status.PAUSED)
    assert DurableInstance.objects.get(pk=uid).waiting_for == "approved"
    out = manage("durable_publish", uid, "approved", "--payload", '{"by": "bob"}')
    assert out.returncode == 0, out.stderr
    wait_status(uid, Status.COMPLETED)
    assert dd.result(uid) == {"order": 11, "decision": {"by": "bob"}}
    assert SideEffect.objects.filter(key="approval-11").count() == 1


def test_timer_fires_on_the_worker(worker_factory, uid):
    worker_factory()
    t0 = time.time()
    dd.start(progs.sleeper, 1.0, instance_id=uid)
    wait_status(uid, Status.PAUSED)
    assert DurableInstance.objects.get(pk=uid).wait_kind == "timer"
    wait_status(uid, Status.COMPLETED, timeout=30)  # by the ETA message alone: no sweep here
    assert dd.result(uid) >= 1.0 and time.time() - t0 >= 1.0


def test_timer_survives_the_death_of_the_worker_holding_its_eta(worker_factory, uid):
    first = worker_factory("eta-holder")
    dd.start(progs.sleeper, 1.5, instance_id=uid)
    wait_status(uid, Status.PAUSED)
    wait_until(lambda: "received" in first.output(), message="the ETA message to reach the worker")
    first.kill()  # the worker dies holding the ETA message
    worker_factory("after")
    scheduler = worker_factory.scheduler()
    wait_status(uid, Status.COMPLETED, timeout=60)
    assert dd.result(uid) >= 1.5
    # The scheduler's line may reach its log after the instance it woke has completed.
    wait_until(lambda: "instance(s) scheduled" in scheduler.output(), timeout=30,
               message="the scheduler to report the instance it scheduled")


def test_event_published_before_the_wait(worker_factory, uid):
    dd.start(progs.effect_then_wait, uid, instance_id=uid)
    dd.publish_event(uid, "go", "early")  # before any worker exists
    worker_factory()
    wait_status(uid, Status.COMPLETED)
    assert dd.result(uid) == "early"
    assert "paused" not in DurableHistory.objects.filter(instance_id=uid).values_list("kind", flat=True)


def test_worker_killed_mid_step_another_finishes_side_effect_once(worker_factory, uid, tmp_path):
    hang = tmp_path / "hang"
    hang.mkdir()
    first = worker_factory("victim", extra_env={"DURABLE_TEST_HANG_DIR": str(hang)})
    dd.start(progs.effect_then_finish, uid, instance_id=uid)
    wait_until(lambda: (hang / f"{uid}.entered").exists(), timeout=60, message="the step to start")
    # The step wrote its row but has not reached its checkpoint: nothing is committed yet.
    assert SideEffect.objects.filter(key=uid).count() == 0
    first.kill()
    assert SideEffect.objects.filter(key=uid).count() == 0  # rolled back with the dead worker
    worker_factory("rescuer")
    # The scheduler (`durable_resume --loop`, same sweep as beat) hands it over once the lease expires.
    worker_factory.scheduler()
    wait_status(uid, Status.COMPLETED, timeout=90)
    assert SideEffect.objects.filter(key=uid).count() == 1
    assert dd.result(uid) == 1  # the step saw exactly its own row
    history = list(DurableHistory.objects.filter(instance_id=uid).values_list("kind", "actor"))
    assert [k for k, _ in history].count("recovered") == 1
    assert any("rescuer" in actor for k, actor in history if k == "completed")


def test_two_workers_handed_the_same_instance(worker_factory, uid, tmp_path):
    worker_factory("a")
    worker_factory("b")
    dd.start(progs.slow_then_finish, uid, 1.5, str(tmp_path), instance_id=uid)
    from durable_django.wakeups import send_task

    send_task(uid)  # the same instance handed out twice more
    send_task(uid)
    wait_status(uid, Status.COMPLETED)
    assert SideEffect.objects.filter(key=uid).count() == 1
    assert len((tmp_path / f"{uid}.runs").read_text().split()) == 1  # the step body ran once
    assert "recovered" not in DurableHistory.objects.filter(instance_id=uid).values_list("kind", flat=True)


def test_many_instances_in_parallel_no_loss(worker_factory, uid):
    n = int(os.environ.get("DURABLE_TEST_PARALLEL", "200"))
    worker_factory("p1")
    worker_factory("p2")
    ids = [f"{uid}-{i}" for i in range(n)]
    t0 = time.monotonic()
    for iid in ids:
        dd.start(progs.effect_then_wait, iid, instance_id=iid)
    for i, iid in enumerate(ids):  # some before the wait is reached, some after
        dd.publish_event(iid, "go", i)
    done = lambda: DurableInstance.objects.filter(pk__in=ids, status=Status.COMPLETED).count() == n  # noqa: E731
    wait_until(done, timeout=180, interval=0.2, message=f"{n} instances to complete")
    elapsed = time.monotonic() - t0
    assert SideEffect.objects.filter(key__startswith=uid).count() == n
    results = {iid: dd.result(iid) for iid in ids}
    assert results == {iid: i for i, iid in enumerate(ids)}
    print(f"\n{n} instances (start, pause, event, complete) on 2 workers in {elapsed:.1f}s")
