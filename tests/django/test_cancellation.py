"""Cancellation that cleans up, and deadlines (issue 13): inline, on the fake clock, and with real Celery workers.

A cancel raises ``InstanceCancelled`` inside the program at its current await, so its ``except``/``finally``
blocks run (their steps checkpointed); a second cancel, ``force=True`` or the grace period end it at once.
A deadline raises ``DeadlineExceeded`` at the current await, also at a paused wait (its wake-up is capped at
the deadline). Every cleanup step writes a ``SideEffect`` row, so the rows say which cleanup ran.
"""

from __future__ import annotations

import math
import threading
from datetime import UTC, date, datetime, timedelta
from io import StringIO

import pytest
from asgiref.sync import async_to_sync
from django.contrib.auth.models import User
from django.core.management import call_command
from django.db import connection
from django.test import Client
from django.urls import reverse

import durable
import durable_django as dd
from durable_django import clock, signals, worker
from durable_django.checks import check_settings
from durable_django.exceptions import InstanceFinished, InvalidInput
from durable_django.models import DurableHistory, DurableInstance, Status
from tests.django.conftest import wait_until
from tests.django.testapp import cancel_programs as progs
from tests.django.testapp.models import SideEffect

pytestmark = pytest.mark.django_db


def notes(key: str) -> list[str]:
    return list(SideEffect.objects.filter(key=key).order_by("id").values_list("note", flat=True))


def kinds(iid: str) -> list[str]:
    return list(DurableHistory.objects.filter(instance_id=iid).order_by("id").values_list("kind", flat=True))


def row(iid: str) -> DurableInstance:
    return DurableInstance.objects.get(pk=iid)


# -- on the fake clock (durable_env: inline runs in the test's transaction) -----------------------------------
def test_cancel_of_a_paused_instance_runs_the_finally_blocks_of_nested_calls(durable_env, uid):
    seen = []

    def receiver(sender, instance_id, **kwargs):
        seen.append((instance_id, kwargs.get("detail")))

    signals.instance_cancel_requested.connect(receiver, weak=False, dispatch_uid=uid)
    try:
        durable_env.start(progs.nested_cleanup, uid, instance_id=uid)
        assert durable_env.waiting_for(uid) == "go" and notes(uid) == ["inner-start"]
        inst = durable_env.cancel(uid, "customer left", actor="ops")
    finally:
        signals.instance_cancel_requested.disconnect(dispatch_uid=uid)
    assert inst.status == Status.CANCELLED and inst.finished_at is not None
    assert notes(uid) == ["inner-start", "inner-finally", "outer-finally"]  # inner first, each once
    assert inst.cancel_requested_at is not None and inst.cancel_reason == "customer left"
    assert inst.error == "customer left" and inst.lease_owner == ""
    history = kinds(uid)
    assert history.index("cancel_requested") < history.index("cancelled") and history[-1] == "cancelled"
    assert DurableHistory.objects.get(instance_id=uid, kind="cancel_requested").actor == "ops"
    assert seen == [(uid, "customer left")]
    assert [t.kind for t in durable_env.transitions if t.kind.startswith("cancel")] == ["cancel_requested",
                                                                                          "cancelled"]
    with pytest.raises(durable.InstanceCancelled, match="was cancelled: customer left"):
        dd.result(uid)
    with pytest.raises(InstanceFinished):
        dd.cancel(uid)


def test_a_cleanup_that_pauses_goes_on_without_being_cancelled_again(durable_env, uid):
    durable_env.start(progs.slow_cleanup, uid, instance_id=uid)
    inst = durable_env.cancel(uid, "stop")
    assert inst.status == Status.PAUSED and inst.waiting_for == "cleanup-done"  # the finally waits
    assert notes(uid) == ["cleanup-start"]
    durable_env.publish(uid, "cleanup-done")
    inst = durable_env.instance(uid)
    assert inst.status == Status.CANCELLED, inst.error
    assert notes(uid) == ["cleanup-start", "cleanup-end"]  # the cleanup's wait was not interrupted


def test_a_second_cancel_forces_and_runs_nothing(durable_env, uid):
    durable_env.start(progs.slow_cleanup, uid, instance_id=uid)
    durable_env.cancel(uid, "stop")
    assert durable_env.status(uid) == Status.PAUSED
    inst = durable_env.cancel(uid, "now")
    assert inst.status == Status.CANCELLED
    assert notes(uid) == ["cleanup-start"]  # the rest of the cleanup never ran
    assert "forced" in DurableHistory.objects.filter(instance_id=uid, kind="cancelled").get().detail
    with pytest.raises(InstanceFinished):
        dd.publish_event(uid, "cleanup-done")


def test_force_ends_at_once(durable_env, uid):
    durable_env.start(progs.nested_cleanup, uid, instance_id=uid)
    inst = durable_env.cancel(uid, "gone", force=True)
    assert inst.status == Status.CANCELLED and inst.error == "gone"
    assert notes(uid) == ["inner-start"]
    assert "cancel_requested" not in kinds(uid)


def test_the_grace_period_forces_a_cleanup_that_does_not_end(durable_env, uid, settings):
    settings.DURABLE = {**settings.DURABLE, "CANCEL_GRACE_SECONDS": 120}
    durable_env.start(progs.slow_cleanup, uid, instance_id=uid)
    durable_env.cancel(uid, "stop")
    durable_env.advance(119)
    assert durable_env.status(uid) == Status.PAUSED
    durable_env.advance(2)
    inst = durable_env.instance(uid)
    assert inst.status == Status.CANCELLED and notes(uid) == ["cleanup-start"]
    forced = DurableHistory.objects.get(instance_id=uid, kind="cancelled")
    assert "CANCEL_GRACE_SECONDS" in forced.actor and "forced" in forced.detail


def test_a_program_that_catches_the_cancellation_compensates_and_completes(durable_env, uid):
    durable_env.start(progs.compensating, uid, instance_id=uid)
    inst = durable_env.cancel(uid, "order withdrawn")
    assert inst.status == Status.COMPLETED and dd.result(uid) == "compensated"
    assert notes(uid) == ["reserved", "released"]
    assert inst.cancel_requested_at is not None  # the request stays on record


def test_a_suspended_instance_is_cancelled_at_once(durable_env, uid):
    durable_env.start(progs.nested_cleanup, uid, instance_id=uid)
    DurableInstance.objects.filter(pk=uid).update(status=Status.SUSPENDED)
    inst = durable_env.cancel(uid, "broken")
    assert inst.status == Status.CANCELLED and notes(uid) == ["inner-start"]


# -- deadlines on the fake clock ----------------------------------------------------------------------------
def test_deadline_at_start_is_raised_at_a_paused_wait(durable_env, uid):
    t0 = durable_env.clock.time()
    inst = durable_env.start(progs.deadline_wait, uid, instance_id=uid, deadline=60)
    assert inst.status == Status.PAUSED
    assert inst.deadline.timestamp() == pytest.approx(t0 + 60, abs=1e-3)
    assert inst.wake_at <= inst.deadline  # the wait's one-hour timeout is capped at the deadline
    durable_env.advance(59)
    assert durable_env.status(uid) == Status.PAUSED and notes(uid) == []
    durable_env.advance(2)
    assert durable_env.status(uid) == Status.COMPLETED and dd.result(uid) == "deadline hit"
    assert notes(uid) == ["deadline"]


def test_the_programs_own_deadline_counts_from_start_unless_start_gives_one(durable_env, uid):
    t0 = durable_env.clock.time()
    inst = durable_env.start(progs.deadline_by_default, uid, instance_id=uid)
    assert inst.deadline.timestamp() == pytest.approx(t0 + 120, abs=1e-3)  # shown in the admin too
    assert inst.wait_kind == "timer" and inst.wake_at == inst.deadline  # the hour's sleep is cut at it
    durable_env.advance(121)
    assert dd.result(uid) == "deadline hit"
    other = durable_env.start(progs.deadline_by_default, f"{uid}-2", instance_id=f"{uid}-2", deadline=10)
    assert other.deadline.timestamp() == pytest.approx(durable_env.clock.time() + 10, abs=1e-3)
    durable_env.advance(11)
    assert dd.result(f"{uid}-2") == "deadline hit"


@pytest.mark.parametrize("form", ["timedelta", "datetime"])
def test_deadline_forms(durable_env, uid, form):
    now = clock.now()
    value = timedelta(minutes=5) if form == "timedelta" else now + timedelta(minutes=5)
    inst = durable_env.start(progs.deadline_wait, uid, instance_id=uid, deadline=value)
    assert inst.deadline.timestamp() == pytest.approx((now + timedelta(minutes=5)).timestamp(), abs=1e-3)
    durable_env.advance(301)
    assert dd.result(uid) == "deadline hit"


def test_starter_and_astart_take_a_deadline(durable_env, uid):
    with durable_env.eagerly():
        a = dd.starter(progs.deadline_wait, instance_id=f"{uid}-a", deadline=30)(f"{uid}-a")
        b = async_to_sync(dd.astart)(progs.deadline_wait, f"{uid}-b", instance_id=f"{uid}-b", deadline=30.5)
    assert row(a.instance_id).deadline is not None and row(b.instance_id).deadline is not None
    durable_env.advance(31)
    assert dd.result(f"{uid}-a") == dd.result(f"{uid}-b") == "deadline hit"


@pytest.mark.parametrize("bad, error, text", [
    ("soon", TypeError, "timedelta, a number of seconds or an aware datetime"),
    (True, TypeError, "got bool"),
    (date(2030, 1, 1), TypeError, "got date"),
    (0, InvalidInput, "positive, finite"),
    (-5, InvalidInput, "positive, finite"),
    (math.nan, InvalidInput, "positive, finite"),
    (math.inf, InvalidInput, "positive, finite"),
    (timedelta(seconds=-1), InvalidInput, "positive, finite"),
    (1e12, InvalidInput, "too far"),
    (datetime(2030, 1, 1), InvalidInput, "naive datetime"),
    (datetime(2000, 1, 1, tzinfo=UTC), InvalidInput, "already passed"),
])
def test_a_bad_deadline_is_refused_and_nothing_is_stored(inline, uid, bad, error, text):
    with pytest.raises(error, match=text):
        dd.start(progs.deadline_wait, uid, instance_id=uid, deadline=bad)
    assert not DurableInstance.objects.filter(pk=uid).exists()


# -- inline mode, real transactions -------------------------------------------------------------------------
@pytest.mark.django_db(transaction=True)
def test_deadline_through_the_sweeps_wake_up(inline, uid):
    inst = dd.start(progs.deadline_wait, uid, instance_id=uid, deadline=0.5)
    inst = row(uid)
    assert inst.status == Status.PAUSED and inst.wake_at <= inst.deadline
    due = inst.deadline.timestamp()
    wait_until(lambda: clock.time() > due, timeout=10, message="the deadline to pass")
    assert uid in worker.sweep()
    assert row(uid).status == Status.COMPLETED and dd.result(uid) == "deadline hit"


@pytest.mark.django_db(transaction=True)
def test_sweep_forces_an_expired_cancellation(inline, uid):
    dd.start(progs.slow_cleanup, uid, instance_id=uid)
    assert dd.cancel(uid, "stop").status == Status.PAUSED
    worker.sweep()
    assert row(uid).status == Status.PAUSED  # within the grace period: still cleaning up
    later = clock.now() + timedelta(seconds=301)
    worker.sweep(now=later)
    assert row(uid).status == Status.CANCELLED and notes(uid) == ["cleanup-start"]


@pytest.mark.django_db(transaction=True)
def test_cancel_of_a_pending_instance_runs_its_cleanup(uid, settings, monkeypatch):
    monkeypatch.setattr("durable_django.wakeups.send_task", lambda iid, **kw: None)  # nothing runs by itself
    monkeypatch.setattr("durable_django.wakeups.send_tasks", lambda ids, **kw: None)
    dd.start(progs.nested_cleanup, uid, instance_id=uid)
    assert dd.cancel(uid, "never mind").status == Status.PENDING
    assert worker.run_instance(uid) == Status.CANCELLED
    assert notes(uid) == ["inner-finally", "outer-finally"]  # raised at the first await, before its step ran


def cancel_while_the_step_runs(uid: str, program, gate_dir, reason: str) -> str:
    """Run ``program`` on a worker thread; cancel it while its gated step is in progress; return the run's outcome.

    The worker holds the instance, so the cancel is a request that the worker reads at its next checkpoint.
    """
    dd.start(program, uid, str(gate_dir), instance_id=uid)
    outcome: list[str] = []

    def run() -> None:
        try:
            outcome.append(worker.run_instance(uid))
        finally:
            connection.close()

    t = threading.Thread(target=run)
    t.start()
    try:
        wait_until(lambda: (gate_dir / f"{uid}.entered").exists(), timeout=30, message="the step to begin")
        inst = dd.cancel(uid, reason)
        assert inst.status == Status.RUNNING and inst.cancel_requested_at is not None
    finally:
        (gate_dir / f"{uid}.go").touch()
        t.join(60)
    assert len(outcome) == 1, "the run did not end"
    return outcome[0]


@pytest.fixture
def captured_wakeups(settings, monkeypatch):
    """Flags read at every checkpoint; wake-ups not sent (the test runs the instance itself)."""
    settings.DURABLE = {**settings.DURABLE, "CANCEL_CHECK_SECONDS": 0}
    monkeypatch.setattr("durable_django.wakeups.send_task", lambda iid, **kw: None)
    monkeypatch.setattr("durable_django.wakeups.send_tasks", lambda ids, **kw: None)


@pytest.mark.django_db(transaction=True)
def test_cancel_of_a_running_instance_is_raised_at_its_next_await(uid, captured_wakeups, tmp_path):
    assert cancel_while_the_step_runs(uid, progs.gated_then_more, tmp_path, "too late") == Status.CANCELLED
    assert notes(uid) == ["gated step", "finally"]  # the step in progress completed; the next one never ran


@pytest.mark.django_db(transaction=True)
def test_cancel_with_a_step_in_progress_in_a_nested_call_runs_both_finally_blocks(uid, captured_wakeups, tmp_path):
    assert cancel_while_the_step_runs(uid, progs.nested_gated, tmp_path, "stop") == Status.CANCELLED
    # the step in progress committed with its checkpoint; then the inner frame's finally, then the outer one's
    assert notes(uid) == ["gated step", "inner-finally", "outer-finally"]
    assert DurableInstance.objects.get(pk=uid).status == Status.CANCELLED


@pytest.mark.django_db(transaction=True)
def test_a_cancel_learnt_at_the_checkpoint_that_pauses_is_delivered_by_a_new_run(inline, uid, settings):
    """The worker reads the flag at the pause's checkpoint, when the program can no longer get it: it wakes the
    instance again, and that run raises the cancellation at the wait."""
    settings.DURABLE = {**settings.DURABLE, "CANCEL_CHECK_SECONDS": 0,
                        "ON_CHECKPOINT": "tests.django.testapp.cancel_programs.cancel_after_first_checkpoint"}
    iid = f"hooked-{uid}"
    dd.start(progs.step_then_wait, iid, instance_id=iid)
    inst = row(iid)
    assert inst.status == Status.CANCELLED and inst.error == "between two checkpoints"
    assert notes(iid) == ["step", "finally"]
    assert kinds(iid).count("paused") == 1  # paused once, then woken for the cancel


def test_system_checks_refuse_bad_cancel_settings(settings):
    bad = (("CANCEL_GRACE_SECONDS", 0), ("CANCEL_GRACE_SECONDS", "5"), ("CANCEL_GRACE_SECONDS", math.nan),
           ("CANCEL_CHECK_SECONDS", -1), ("CANCEL_CHECK_SECONDS", True), ("CANCEL_CHECK_SECONDS", math.inf))
    for name, value in bad:
        settings.DURABLE = {name: value}
        errors = [e for e in check_settings() if name in e.msg]
        assert errors and errors[0].id == "durable_django.E003", (name, value)
    settings.DURABLE = {"CANCEL_GRACE_SECONDS": 10, "CANCEL_CHECK_SECONDS": 0}
    assert not [e for e in check_settings() if "CANCEL" in e.msg]


@pytest.mark.django_db(transaction=True)
def test_command_and_admin_request_then_force(inline, uid):
    dd.start(progs.slow_cleanup, uid, instance_id=uid)
    out = StringIO()
    call_command("durable_cancel", uid, "--reason", "by command", stdout=out)
    assert "cancel requested" in out.getvalue() and row(uid).status == Status.PAUSED
    out = StringIO()
    call_command("durable_status", uid, stdout=out)
    assert "cancel_reason: by command" in out.getvalue() and "cancel_requested_at: 20" in out.getvalue()
    User.objects.create_superuser("root", password="pw")
    client = Client()
    client.login(username="root", password="pw")
    detail = reverse("admin:durable_django_durableinstance_change", args=[uid])
    assert "(cancelling)" in client.get(reverse("admin:durable_django_durableinstance_changelist")).content.decode()
    page = client.get(detail).content.decode()
    assert "cancel requested at" in page and "(by command)" in page and "action-force-cancel" in page
    r = client.post(reverse("admin:durable_django_durableinstance_operation", args=[uid, "force_cancel"]))
    assert r.status_code == 302 and row(uid).status == Status.CANCELLED
    assert notes(uid) == ["cleanup-start"]
    other = f"{uid}-2"
    dd.start(progs.slow_cleanup, other, instance_id=other)
    out = StringIO()
    call_command("durable_cancel", other, "--force", stdout=out)
    assert f"{other}: cancelled" in out.getvalue() and notes(other) == []


@pytest.mark.django_db(transaction=True)
def test_acancel_forwards_force(inline, uid):
    dd.start(progs.slow_cleanup, uid, instance_id=uid)
    assert async_to_sync(dd.acancel)(uid, "async", force=True).status == Status.CANCELLED


def test_deadline_in_the_admin_detail(durable_env, admin_client, uid):
    durable_env.start(progs.deadline_wait, uid, instance_id=uid, deadline=timedelta(hours=2))
    page = admin_client.get(reverse("admin:durable_django_durableinstance_change", args=[uid])).content.decode()
    assert 'id="durable-deadline"' in page


# -- real Celery worker processes ---------------------------------------------------------------------------
def wait_status(iid: str, wanted: str, timeout: float = 60) -> None:
    def current() -> str | None:
        return DurableInstance.objects.filter(pk=iid).values_list("status", flat=True).first()

    wait_until(lambda: current() == wanted, timeout=timeout,
               message=lambda: f"{iid} to be {wanted} (it is {current()})")


@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(240)
def test_workers_cancel_paused_and_running_instances(worker_factory, uid, tmp_path):
    worker_factory(extra_env={"DURABLE_TEST_CANCEL_CHECK_SECONDS": "0"})
    paused, running, pausing, catching = f"{uid}-p", f"{uid}-r", f"{uid}-c", f"{uid}-k"
    dd.start(progs.nested_cleanup, paused, instance_id=paused)
    dd.start(progs.slow_cleanup, pausing, instance_id=pausing)
    dd.start(progs.compensating, catching, instance_id=catching)
    for iid in (paused, pausing, catching):
        wait_status(iid, Status.PAUSED)
    dd.cancel(paused, "by a test")
    dd.cancel(catching, "withdrawn")
    wait_status(paused, Status.CANCELLED)
    assert notes(paused) == ["inner-start", "inner-finally", "outer-finally"]
    assert row(paused).error == "by a test" and kinds(paused)[-1] == "cancelled"
    wait_status(catching, Status.COMPLETED)
    assert dd.result(catching) == "compensated" and notes(catching) == ["reserved", "released"]

    dd.start(progs.gated_then_more, running, str(tmp_path), instance_id=running)
    wait_until(lambda: (tmp_path / f"{running}.entered").exists(), timeout=60, message="the step to begin")
    assert dd.cancel(running, "mid-step").status == Status.RUNNING
    (tmp_path / f"{running}.go").touch()
    wait_status(running, Status.CANCELLED)
    assert notes(running) == ["gated step", "finally"]

    dd.cancel(pausing, "first")
    wait_until(lambda: notes(pausing) == ["cleanup-start"], message="the cleanup to begin")
    wait_status(pausing, Status.PAUSED)
    assert dd.cancel(pausing, "second").status == Status.CANCELLED  # forced: nothing more runs
    assert notes(pausing) == ["cleanup-start"]


@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(240)
def test_workers_grace_period_and_deadline_through_the_sweep(worker_factory, uid):
    env = {"DURABLE_TEST_CANCEL_GRACE_SECONDS": "2"}
    worker_factory(extra_env=env)
    cleaning, late = f"{uid}-c", f"{uid}-d"
    dd.start(progs.slow_cleanup, cleaning, instance_id=cleaning)
    wait_status(cleaning, Status.PAUSED)
    dd.start(progs.deadline_wait, late, instance_id=late, deadline=1.0)
    wait_status(late, Status.PAUSED)
    assert row(late).wake_at <= row(late).deadline
    dd.cancel(cleaning, "stop")
    wait_until(lambda: notes(cleaning) == ["cleanup-start"], message="the cleanup to begin")
    worker_factory.scheduler(extra_env=env)  # the sweep: wakes the deadline, forces the cancellation
    wait_status(late, Status.COMPLETED)
    assert dd.result(late) == "deadline hit" and notes(late) == ["deadline"]
    wait_status(cleaning, Status.CANCELLED, timeout=60)
    assert notes(cleaning) == ["cleanup-start"]
    assert DurableHistory.objects.filter(instance_id=cleaning, kind="cancelled",
                                         actor__contains="CANCEL_GRACE_SECONDS").exists()
    assert row(cleaning).finished_at >= row(cleaning).cancel_requested_at + timedelta(seconds=2)
