"""Step retry policies and retrying failed instances from their last checkpoint (issue 13), in the Django app.

Each behaviour runs inline (:class:`durable_django.testing.DurableTestEnv`: the
executor's code in the test process, a fake clock) and on real Celery worker
processes (the broker the settings select; timers by ETA and the scheduler).
Rows are counted in the database, step bodies in log files outside it (never
rolled back). Every wait polls a condition with a deadline.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from django.core.management import call_command
from django.db import connection

import durable_django as dd
from durable import CallStack
from durable_django import operations
from durable_django.models import DurableEvent, DurableHistory, DurableInstance, Status
from durable_django.payloads import instance_detail
from durable_django.signing import STATE, blob_context, sign, unsign
from durable_django.testing import DurableTestEnv
from tests.django import retry_programs as rp
from tests.django.conftest import ROOT, wait_until
from tests.django.testapp.models import SideEffect

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(240)]


def row(iid: str) -> DurableInstance:
    return DurableInstance.objects.get(pk=iid)


def history(iid: str, kind: str | None = None) -> list[tuple[str, str]]:
    rows = DurableHistory.objects.filter(instance_id=iid).order_by("id")
    if kind:
        rows = rows.filter(kind=kind)
    return list(rows.values_list("kind", "detail"))


def rows_of(key: str) -> int:
    return SideEffect.objects.filter(key=key).count()


def manage(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """A management command in another process, on the test database."""
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.django.settings",
           "DURABLE_TEST_DB_NAME": str(connection.settings_dict["NAME"]), **(env or {})}
    return subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)


def wait_status(iid: str, *wanted: str, timeout: float = 60) -> DurableInstance:
    wait_until(lambda: row(iid).status in wanted, timeout=timeout,
               message=lambda: f"{iid} to be {' or '.join(wanted)} (it is {row(iid).status}: {row(iid).error[-500:]})")
    return row(iid)


# -- a retry policy, inline -----------------------------------------------------------------------------------------
def test_flaky_step_retries_on_a_durable_timer_and_keeps_one_row(uid, tmp_path):
    with DurableTestEnv() as env:
        env.start(rp.charge_order, uid, str(tmp_path), 2, instance_id=uid)
        inst = row(uid)
        # attempt 1 failed: its row is rolled back, the backoff is a timer in the row, no worker holds it
        assert inst.status == Status.PAUSED and inst.wait_kind == "timer" and inst.wake_at is not None
        assert inst.waiting_for == "retry flaky_charge (attempt 2/5)"
        assert inst.lease_owner == "" and rows_of(uid) == 0
        assert rp.runs(str(tmp_path), f"{uid}.charge") == 1
        retrying = history(uid, "retrying")
        assert len(retrying) == 1 and "flaky_charge failed (attempt 1 of 5): ValueError: boom 1" in retrying[0][1]
        assert "next attempt at" in retrying[0][1]
        shown = instance_detail(inst)["retrying"]
        assert shown["attempt"] == 2 and shown["failed_attempt"] == 1 and "boom 1" in shown["error"]

        env.advance(0.5)  # not due yet: nothing runs
        assert rp.runs(str(tmp_path), f"{uid}.charge") == 1 and row(uid).status == Status.PAUSED
        env.advance(0.6)  # attempt 2 fails too
        assert row(uid).waiting_for == "retry flaky_charge (attempt 3/5)" and rows_of(uid) == 0
        env.advance(1.1)  # attempt 3 succeeds
        env.assert_completed(uid, {"charged": uid, "attempt": 3})
    assert rows_of(uid) == 1 and SideEffect.objects.get(key=uid).note == "attempt 3"
    assert rp.runs(str(tmp_path), f"{uid}.charge") == 3
    details = [d for _, d in history(uid, "retrying")]
    assert len(details) == 2 and "(attempt 2 of 5): ValueError: boom 2" in details[1]
    assert history(uid)[-1][0] == "completed"


def test_attempts_exhausted_raise_at_the_await_where_the_program_catches_it(uid, tmp_path):
    with DurableTestEnv() as env:
        env.start(rp.gives_up, uid, str(tmp_path), instance_id=uid)
        assert row(uid).waiting_for == "retry always_fails (attempt 2/3)"
        env.advance(0.2)
        assert row(uid).waiting_for == "retry always_fails (attempt 3/3)"
        env.advance(0.4)
        result = env.assert_completed(uid)
    assert result == "gave up: ValueError: card declined (attempt 3)"
    assert rp.runs(str(tmp_path), f"{uid}.fails") == 3
    assert rows_of(uid) == 0 and rows_of(f"{uid}-gave-up") == 1  # no failed attempt left a row
    assert len(history(uid, "retrying")) == 2


def test_a_non_retryable_error_is_raised_at_once(uid, tmp_path):
    with DurableTestEnv() as env:
        env.start(rp.gives_up, uid, str(tmp_path), "key", instance_id=uid)
        assert env.assert_completed(uid).startswith("gave up: KeyError")
    assert rp.runs(str(tmp_path), f"{uid}.fails") == 1 and rows_of(uid) == 0 and not history(uid, "retrying")


def test_status_command_and_admin_show_the_backoff(uid, tmp_path, admin_client):
    from io import StringIO

    from django.urls import reverse

    with DurableTestEnv() as env:
        env.start(rp.charge_order, uid, str(tmp_path), 2, instance_id=uid)
        out = StringIO()
        call_command("durable_status", uid, stdout=out)
        text = out.getvalue()
        assert "retrying: step flaky_charge, attempt 1 of 5 failed; attempt 2 at" in text
        assert "last error: ValueError: boom 1" in text
        page = admin_client.get(reverse("admin:durable_django_durableinstance_change", args=[uid])).content.decode()
        assert 'id="durable-retrying"' in page and "attempt 1 of 5 failed" in page and "boom 1" in page
        env.start(rp.fix_me, f"{uid}-f", str(tmp_path), instance_id=f"{uid}-f")
        page = admin_client.get(reverse("admin:durable_django_durableinstance_change", args=[f"{uid}-f"])).content
        assert b'id="durable-failed-at"' in page and b"Failed at</th><td><code>fix_me line " in page
        assert b'value="Retry from the last checkpoint"' in page


def test_rejections_of_a_human_task_survive_the_rollback_of_a_failed_attempt(uid, tmp_path):
    """The rejected event, the taken answer and the failed attempt's writes share one transaction: the attempt's
    rollback must not bring the rejected event back to the inbox (the backend writes the rejection again)."""
    from django.contrib.auth.models import User
    from django.db import transaction

    ursula, nobody = User.objects.create_user("ursula"), User.objects.create_user("nobody")
    with DurableTestEnv() as env:
        env.start(rp.task_then_flaky, uid, str(tmp_path), instance_id=uid)
        assert env.waiting_for(uid) == "ok"
        with transaction.atomic():  # both arrive before the instance runs again: one run takes them
            dd.publish_event(uid, "ok", "from nobody", actor=nobody)
            dd.publish_event(uid, "ok", "from ursula", actor=ursula)
        assert row(uid).waiting_for == "retry flaky_charge (attempt 2/5)" and rows_of(uid) == 0
        stranger, answer = DurableEvent.objects.filter(instance_id=uid).order_by("id")
        assert stranger.rejected and stranger.consumed_at is not None
        assert answer.rejected is None and answer.consumed_at is not None
        assert len(history(uid, "event_rejected")) == 1
        env.advance(1.1)
        env.assert_completed(uid, ["from ursula", 2])
    assert rows_of(uid) == 1 and DurableEvent.objects.filter(instance_id=uid, consumed_at=None).count() == 0


# -- retrying a failed instance, inline -----------------------------------------------------------------------------
def test_failed_instance_retried_after_a_fix_continues_from_the_failed_step(uid, tmp_path, monkeypatch):
    log = str(tmp_path)
    with DurableTestEnv() as env:
        env.start(rp.fix_me, uid, log, instance_id=uid)
        inst = env.assert_status(uid, Status.FAILED)
        assert "not fixed yet" in inst.error and rows_of(f"{uid}-before") == 1 and rows_of(f"{uid}-attempt") == 0
        for n in (2, 3):  # retried twice: the first retry fails again (nothing was fixed), the second completes
            if n == 3:
                monkeypatch.setattr(rp, "FIXED", True)  # the fix is deployed
            with env.eagerly():
                operations.retry(uid, actor="op")
            assert rp.runs(log, f"{uid}.fix") == n
            assert row(uid).status == (Status.FAILED if n == 2 else Status.COMPLETED)
        env.assert_completed(uid, ["old", "fixed"])
    # the step before the failure ran once and left one row (the probe found three after two retries)
    assert rp.runs(log, f"{uid}.before") == 1 and rows_of(f"{uid}-before") == 1
    assert rows_of(f"{uid}-attempt") == 1  # failed attempts left nothing
    retried = [(d, a) for k, d, a in DurableHistory.objects.filter(instance_id=uid, kind="operator")
               .values_list("kind", "detail", "actor")]
    assert len(retried) == 2 and all(d.startswith("retried from the last checkpoint at ") and a == "op"
                                     for d, a in retried)
    assert "fix_me" in retried[0][0] and "(it had failed at fix_me line " in retried[0][0]


def test_retry_takes_the_awaited_event_again_and_a_data_fix_is_enough(uid, tmp_path):
    log = str(tmp_path)
    with DurableTestEnv() as env:
        env.start(rp.wait_then_fail, uid, log, instance_id=uid)
        assert env.waiting_for(uid) == "go"
        env.publish(uid, "go", {"n": 1})
        env.assert_status(uid, Status.FAILED)
        # the event was taken after the last checkpoint (the pause): it stays in the inbox for the retry
        assert DurableEvent.objects.get(instance_id=uid).consumed_at is None
        SideEffect.objects.create(key=f"{uid}-fixed")  # the data fix
        with env.eagerly():
            operations.retry(uid)
        env.assert_completed(uid, [{"n": 1}, "fixed"])
    assert DurableEvent.objects.get(instance_id=uid).consumed_at is not None
    assert rp.runs(log, f"{uid}.before") == 1 and rows_of(f"{uid}-before") == 1


def test_retry_with_a_changed_step_layout_suspends(uid, tmp_path, monkeypatch):
    with DurableTestEnv() as env:
        env.start(rp.fix_me, uid, str(tmp_path), instance_id=uid)
        env.assert_status(uid, Status.FAILED)
        monkeypatch.setattr(rp.fix_me.compiled, "layout_hash", "changed")  # as if new code had another layout
        with env.eagerly():
            operations.retry(uid)
        inst = env.assert_status(uid, Status.SUSPENDED)
    assert "CodeChangedError" in inst.error and "changed its step layout" in inst.error
    assert rp.runs(str(tmp_path), f"{uid}.before") == 1


def test_a_failure_without_a_checkpoint_starts_over(uid, tmp_path, monkeypatch):
    """A row failed before failed instances kept their last checkpoint (its state has no stack)."""
    with DurableTestEnv() as env:
        env.start(rp.fix_me, uid, str(tmp_path), instance_id=uid)
        inst = env.assert_status(uid, Status.FAILED)
        context = blob_context(uid, inst.program, STATE)
        state = unsign(inst.state, context)
        state["stack"] = CallStack([])
        DurableInstance.objects.filter(pk=uid).update(state=sign(state, context))
        monkeypatch.setattr(rp, "FIXED", True)
        with env.eagerly():
            operations.retry(uid)
        env.assert_completed(uid, ["old", "fixed"])
    assert history(uid, "operator")[-1][1] == "retried from the start"
    assert rp.runs(str(tmp_path), f"{uid}.before") == 2  # the old behaviour: everything ran again


def test_durable_retry_command(uid, tmp_path, monkeypatch):
    from io import StringIO

    from django.core.management.base import CommandError

    log = str(tmp_path)
    with DurableTestEnv() as env:
        for i in range(2):
            env.start(rp.fix_me, f"{uid}-{i}", log, instance_id=f"{uid}-{i}")
        env.start(rp.charge_order, f"{uid}-ok", log, 0, instance_id=f"{uid}-ok")
        out = StringIO()
        call_command("durable_retry", "--all-failed", "--program", "tests.django.retry_programs.fix", "--dry-run",
                     stdout=out)
        assert out.getvalue().count("(would retry from ") == 2
        assert row(f"{uid}-0").status == Status.FAILED  # a dry run changes nothing
        with pytest.raises(CommandError, match="could not be retried"):
            call_command("durable_retry", f"{uid}-ok", stdout=StringIO(), stderr=StringIO())
        monkeypatch.setattr(rp, "FIXED", True)
        out = StringIO()
        with env.eagerly():
            call_command("durable_retry", "--all-failed", "--program", "tests.django.retry_programs.", stdout=out)
        assert "2 instance(s) retried." in out.getvalue()
        for i in range(2):
            env.assert_completed(f"{uid}-{i}", ["old", "fixed"])
            assert DurableHistory.objects.filter(instance_id=f"{uid}-{i}", actor="manage.py durable_retry").exists()
    assert rows_of(f"{uid}-0-before") == 1 and rows_of(f"{uid}-1-before") == 1


# -- on real Celery workers -----------------------------------------------------------------------------------------
def test_on_workers_retries_wait_on_durable_timers_and_exhaustion_is_caught(worker_factory, uid, tmp_path):
    worker_factory("retrier")
    log = str(tmp_path)
    dd.start(rp.charge_order, uid, log, 2, instance_id=uid)
    dd.start(rp.gives_up, f"{uid}-x", log, instance_id=f"{uid}-x")
    # in the backoff: paused on a timer, no worker holds it, the failed attempt's row rolled back
    inst = wait_until(lambda: (r := row(uid)).waiting_for == "retry flaky_charge (attempt 2/5)" and r,
                      message="the first backoff")
    assert inst.status == Status.PAUSED and inst.wait_kind == "timer" and inst.wake_at is not None
    assert inst.lease_owner == "" and rows_of(uid) == 0
    inst = wait_status(uid, Status.COMPLETED)
    assert inst.result == {"charged": uid, "attempt": 3}
    assert rows_of(uid) == 1 and rp.runs(log, f"{uid}.charge") == 3
    details = [d for _, d in history(uid, "retrying")]
    assert len(details) == 2 and "(attempt 1 of 5): ValueError: boom 1" in details[0]
    assert "(attempt 2 of 5): ValueError: boom 2" in details[1]
    inst = wait_status(f"{uid}-x", Status.COMPLETED)
    assert inst.result == "gave up: ValueError: card declined (attempt 3)"
    assert rows_of(f"{uid}-x") == 0 and rows_of(f"{uid}-x-gave-up") == 1 and rp.runs(log, f"{uid}-x.fails") == 3


def test_on_workers_a_worker_killed_during_the_backoff(worker_factory, uid, tmp_path):
    victim = worker_factory("victim", extra_env={"DURABLE_TEST_BACKOFF": "3"})
    log = str(tmp_path)
    dd.start(rp.charge_order, uid, log, 1, instance_id=uid)
    wait_until(lambda: row(uid).waiting_for == "retry flaky_charge (attempt 2/5)", message="the backoff")
    wait_until(lambda: victim.output().count("received") >= 2, message="the backoff's ETA message to reach the worker")
    inst = row(uid)
    assert inst.status == Status.PAUSED and inst.lease_owner == ""  # in its backoff: no worker holds it
    victim.kill()  # SIGKILL while the instance sleeps in its backoff, its wake-up message held by the dead worker
    worker_factory("rescuer")
    worker_factory.scheduler()
    inst = wait_status(uid, Status.COMPLETED, timeout=90)
    assert inst.result == {"charged": uid, "attempt": 2}
    assert rows_of(uid) == 1 and rp.runs(log, f"{uid}.charge") == 2
    (pid1, attempt1), (pid2, attempt2) = (line.split() for line in (tmp_path / f"{uid}.charge").read_text().split("\n")
                                          if line)
    assert (attempt1, attempt2) == ("1", "2") and pid1 == str(victim.proc.pid) and pid2 != pid1
    assert any("rescuer" in actor for kind, actor in DurableHistory.objects.filter(instance_id=uid)
               .values_list("kind", "actor") if kind == "completed")


def test_on_workers_failed_instance_retried_after_a_deploy(worker_factory, uid, tmp_path):
    log = str(tmp_path)
    same, other = f"{uid}-same", f"{uid}-other"
    old = worker_factory("old-code")
    dd.start(rp.fix_me, same, log, instance_id=same)
    dd.start(rp.fix_me, other, log, instance_id=other)
    for iid in (same, other):
        assert "not fixed yet" in wait_status(iid, Status.FAILED).error
    out = manage("durable_retry", same)  # nothing fixed yet: it fails again, from the same checkpoint
    assert out.returncode == 0 and "retried from " in out.stdout, out.stderr
    wait_until(lambda: rp.runs(log, f"{same}.fix") == 2 and row(same).status == Status.FAILED,
               message="the first retry to fail again")
    old.stop()
    fixed = worker_factory("fixed-code", extra_env={"DURABLE_TEST_RETRY_CODE": "fixed"})  # same step layout
    out = manage("durable_retry", same)
    assert out.returncode == 0, out.stderr
    inst = wait_status(same, Status.COMPLETED)
    assert inst.result == ["new", "fixed"]
    # retried twice; the step before the failure ran once and its exactly-once row exists once
    assert rp.runs(log, f"{same}.before") == 1 and rows_of(f"{same}-before") == 1
    assert rows_of(f"{same}-attempt") == 1 and rp.runs(log, f"{same}.fix") == 3
    # another deploy, with another step layout: the retry suspends with the code-change message
    fixed.stop()
    worker_factory("relayout", extra_env={"DURABLE_TEST_RETRY_CODE": "relayout"})
    assert manage("durable_retry", other).returncode == 0
    inst = wait_status(other, Status.SUSPENDED, Status.COMPLETED, Status.FAILED)
    assert "CodeChangedError" in inst.error and "changed its step layout" in inst.error
    assert rows_of(f"{other}-before") == 1 and not rows_of(f"{other}-new-step")
