"""Workers whose clocks are 2 minutes off: leases and timers follow the database's clock.

Each skewed worker (and scheduler) is a real subprocess whose ``time.time``,
``datetime.now`` and so ``timezone.now`` run 120 s ahead or behind
(tests/django/skew/sitecustomize.py); every test first checks that the fake
is in force, from the timestamps of the worker's own log. The test database
is SQLite or PostgreSQL (``DATABASE_URL``); on SQLite "the database's clock"
is SQLite's ``now``, the machine's real clock, which the faked Python clock
does not change. Lease: 3 s (tests/django/settings.py).
"""

from __future__ import annotations

import re
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from django.db import connection

import durable_django as dd
from durable_django import clock
from durable_django.models import DurableHistory, DurableInstance, Status
from durable_django.wakeups import send_task
from tests.django.conftest import wait_until
from tests.django.testapp import durable_programs as progs
from tests.django.testapp.models import SideEffect

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(240)]

SKEW = 120.0
SKEW_DIR = str(Path(__file__).resolve().parent / "skew")


def skewed(seconds: float, **extra: str) -> dict[str, str]:
    """The environment of a subprocess whose wall clock is ``seconds`` off."""
    return {"PYTHONPATH": SKEW_DIR, "DURABLE_TEST_CLOCK_SKEW": str(seconds), **extra}


def db_now() -> datetime:
    """The database's clock, read by the (unskewed) test process."""
    return datetime.fromtimestamp(clock._query(connection), tz=UTC)


def row(iid: str) -> DurableInstance:
    return DurableInstance.objects.get(pk=iid)


def status(iid: str) -> str | None:
    return DurableInstance.objects.filter(pk=iid).values_list("status", flat=True).first()


def wait_status(iid: str, wanted: str, timeout: float = 60) -> None:
    wait_until(lambda: status(iid) == wanted, timeout=timeout,
               message=lambda: f"{iid} to be {wanted} (it is {status(iid)})")


def assert_skewed(worker, seconds: float) -> None:
    """The worker's log timestamps (its ``time.time``) really are ``seconds`` off ours."""
    wait_until(lambda: re.search(r"\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),\d+: ", worker.output()), timeout=30,
               message=f"a timestamped line in {worker.name}'s log")
    stamps = re.findall(r"\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),\d+: ", worker.output())
    logged = datetime.strptime(stamps[-1], "%Y-%m-%d %H:%M:%S").astimezone(UTC)
    off = (logged - datetime.now(UTC)).total_seconds()
    assert abs(off - seconds) < 30, f"{worker.name}'s clock is {off:+.0f} s off, expected {seconds:+.0f} s"


def test_worker_ahead_does_not_take_over_a_live_lease(worker_factory, uid):
    owner = worker_factory("owner")
    dd.start(progs.long_step, uid, 8.0, instance_id=uid)  # one step of 8 s: the 3 s lease lives by heartbeats
    wait_until(lambda: row(uid).lease_owner and "owner" in row(uid).lease_owner, timeout=30,
               message="the normal worker to hold the lease")
    ahead = worker_factory("ahead", extra_env=skewed(SKEW))
    assert_skewed(ahead, SKEW)
    received = ahead.output().count(" received")
    for _ in range(3):  # the instance handed to the worker ahead while the owner's step runs
        send_task(uid)
    wait_until(lambda: ahead.output().count("'skipped'") >= 3, timeout=30,
               message=lambda: f"the worker ahead to skip the 3 wake-ups:\n{ahead.output()[-3000:]}")
    assert ahead.output().count(" received") - received >= 3
    assert owner.proc.poll() is None
    wait_status(uid, Status.COMPLETED, timeout=60)
    history = list(DurableHistory.objects.filter(instance_id=uid).values_list("kind", "actor"))
    assert "recovered" not in [k for k, _ in history]
    assert any("owner" in actor for k, actor in history if k == "completed")
    assert SideEffect.objects.filter(key=uid).count() == 1


def test_worker_behind_takes_over_a_dead_workers_lease_on_time(worker_factory, uid, tmp_path):
    hang = tmp_path / "hang"
    hang.mkdir()
    victim = worker_factory("victim", extra_env={"DURABLE_TEST_HANG_DIR": str(hang)})
    dd.start(progs.effect_then_finish, uid, instance_id=uid)
    wait_until(lambda: (hang / f"{uid}.entered").exists(), timeout=60, message="the step to start")
    victim.kill()
    killed_at = db_now()
    behind = worker_factory("behind", extra_env=skewed(-SKEW))
    assert_skewed(behind, -SKEW)
    scheduler = worker_factory.scheduler(extra_env=skewed(-SKEW))  # its sweep runs 2 minutes behind too
    wait_status(uid, Status.COMPLETED, timeout=60)  # a takeover 2 minutes late would time out here
    inst = row(uid)
    # The dead lease expired at most LEASE_SECONDS after the kill; the takeover followed within a few seconds.
    assert inst.finished_at - killed_at < timedelta(seconds=20), (inst.finished_at, killed_at)
    history = list(DurableHistory.objects.filter(instance_id=uid).values_list("kind", "actor"))
    assert [k for k, _ in history].count("recovered") == 1
    assert any("behind" in actor for k, actor in history if k == "completed")
    assert SideEffect.objects.filter(key=uid).count() == 1
    assert "instance(s) scheduled" in scheduler.output()


@pytest.mark.parametrize(("starter", "resumer"), [(SKEW, None), (SKEW, 0.0), (-SKEW, SKEW), (SKEW, -SKEW)],
                         ids=["ahead-resumes-itself", "ahead-then-normal", "behind-then-ahead", "ahead-then-behind"])
def test_sleep_fires_on_time_by_the_database_clock(worker_factory, uid, starter, resumer):
    """``sleep(5)`` started by a skewed worker is due 5 s later by the database's clock, and fires then.

    ``resumer`` None: the starting worker resumes it by the Celery ETA it sent itself (its Celery compares
    the ETA with its own skewed clock). Otherwise the starting worker is killed once paused (any ETA message
    it held dies with it) and another worker, with its own clock, resumes it by the sweep of a scheduler
    with the same clock as that worker: neither may wake it early nor late.
    """
    first = worker_factory("starter", extra_env=skewed(starter))
    assert_skewed(first, starter)
    before = db_now()
    dd.start(progs.sleeper, 5.0, instance_id=uid)
    wait_status(uid, Status.PAUSED, timeout=60)
    after = db_now()
    wake_at = row(uid).wake_at
    assert before + timedelta(seconds=4.5) <= wake_at <= after + timedelta(seconds=5.5), (before, wake_at, after)
    if resumer is not None:
        # Killed once it holds its own timer's wake-up (not while it writes it to the broker).
        wait_until(lambda: first.output().count(" received") >= 2, timeout=30,
                   message="the starting worker to receive its timer's wake-up")
        first.kill()
        second = worker_factory("resumer", extra_env=skewed(resumer))
        assert_skewed(second, resumer)
        worker_factory.scheduler(extra_env=skewed(resumer))
    wait_status(uid, Status.COMPLETED, timeout=60)
    inst = row(uid)
    assert inst.finished_at >= wake_at, "the timer fired early"
    assert inst.finished_at - wake_at < timedelta(seconds=6), (inst.finished_at, wake_at)
    if resumer is None:
        # The ETA woke it on time: a wake-up that came 2 minutes early would be sent back again and again.
        assert first.output().count(" received") <= 4, first.output()[-3000:]
    else:
        history = list(DurableHistory.objects.filter(instance_id=uid).values_list("kind", "actor"))
        assert any("resumer" in actor for k, actor in history if k == "completed")


def test_database_clock_reading_ignores_the_local_clock(monkeypatch, settings):
    """Between readings the clock counts with time.monotonic(): a jump of the wall clock changes nothing."""
    clock.sync(force=True)
    t0 = clock.time()
    monkeypatch.setattr(time, "time", lambda: 0.0)  # the wall clock jumps to 1970
    assert abs(clock.time() - t0) < 5
    assert clock.offset() > 1e9
    settings.DURABLE = {**settings.DURABLE, "CLOCK_SYNC_SECONDS": 0}
    assert clock.time() == 0.0  # 0: each process's own clock


@pytest.mark.parametrize(("value", "ok"), [(60, True), (0, True), (0.5, True), (-1, False), ("60", False),
                                           (True, False), (float("nan"), False)])
def test_clock_sync_seconds_is_checked(settings, value, ok):
    from durable_django.checks import check_settings

    settings.DURABLE = {**settings.DURABLE, "CLOCK_SYNC_SECONDS": value}
    ids = [e.id for e in check_settings()]
    assert ids == ([] if ok else ["durable_django.E003"]), ids


def _request(eta: datetime, **headers):
    import kombu.utils.json as kjson
    from kombu.transport.base import Message

    from durable_django import tasks
    from example_project.celery import app

    m = app.amqp.as_task_v2(uuid.uuid4().hex, tasks.run_instance.name, args=("x",), eta=eta)
    msg = Message(body=kjson.dumps(m.body), headers={**m.headers, **headers}, content_type="application/json",
                  content_encoding="utf-8")
    return tasks.ClockRequest(msg, app=app, task=tasks.run_instance)


def test_only_timer_wake_ups_have_database_etas(monkeypatch):
    """A timer's wake-up (the header) is shifted into this worker's clock; other ETAs, retries included, are not."""
    from durable_django.wakeups import DB_ETA_HEADER, _options

    monkeypatch.setattr(clock, "sync", lambda *a, **k: None)
    monkeypatch.setattr(clock, "offset", lambda: -SKEW)  # this worker's clock is 2 minutes ahead of the database
    eta = datetime.now(UTC)
    assert _options(eta)["headers"] == {DB_ETA_HEADER: True} and "headers" not in _options()
    assert _request(eta, **{DB_ETA_HEADER: True}).eta == eta + timedelta(seconds=SKEW)
    assert _request(eta).eta == eta
    assert _request(eta, **{DB_ETA_HEADER: True, "retries": 1}).eta == eta
