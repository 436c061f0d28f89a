"""Child instances (issue 14) on the Django app: ``durable.start_child`` in a program, ``await child``/``gather``.

Inline runs first (each instance runs in the test process when its transaction commits), then real Celery
workers: a parent killed while its children end, and a fan-out of many children on two workers.
"""

from __future__ import annotations

import os
import time
from io import StringIO

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.test import Client
from django.urls import reverse

import durable_django as dd
from durable_django import children, worker
from durable_django.backend import DjangoOrchestrationBackend
from durable_django.models import DurableHistory, DurableInstance, Status
from tests.django.conftest import wait_until
from tests.django.testapp import child_programs as progs
from tests.django.testapp.models import SideEffect

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(300)]


def notes(key: str) -> list[str]:
    return list(SideEffect.objects.filter(key=key).order_by("id").values_list("note", flat=True))


def row(iid: str) -> DurableInstance:
    return DurableInstance.objects.get(pk=iid)


def status(iid: str) -> str | None:
    return DurableInstance.objects.filter(pk=iid).values_list("status", flat=True).first()


def wait_status(iid: str, wanted: str, timeout: float = 60) -> None:
    wait_until(lambda: status(iid) == wanted, timeout=timeout,
               message=lambda: f"{iid} to be {wanted} (it is {status(iid)})")


# -- inline --------------------------------------------------------------------------------------
def test_a_childs_result_is_the_value_of_await_child(inline, uid):
    dd.start(progs.parent_of_one, uid, 7, instance_id=uid)
    assert status(uid) == Status.COMPLETED
    assert dd.result(uid) == 49
    child = DurableInstance.objects.get(parent_id=uid)
    assert child.instance_id == f"{uid}/child-0" and child.status == Status.COMPLETED
    assert child.on_parent_close == "cancel" and child.program.endswith("child_programs.square")
    assert notes(uid) == ["square 7"]  # the child's step ran once


def test_a_failed_child_raises_its_exception_in_the_parent(inline, uid):
    dd.start(progs.parent_catches, uid, instance_id=uid)
    assert dd.result(uid) == f"caught: child {uid} failed"
    assert status(f"{uid}-boom") == Status.FAILED
    assert notes(uid) == ["boom", "caught"]


def test_cancelling_the_parent_cancels_its_child_which_cleans_up(inline, uid):
    dd.start(progs.parent_leaves, uid, instance_id=uid)
    child = f"{uid}-child"
    assert status(uid) == Status.PAUSED and status(child) == Status.PAUSED
    dd.cancel(uid, "stop")
    assert status(uid) == Status.CANCELLED
    assert status(child) == Status.CANCELLED
    assert sorted(notes(uid)) == ["child-finally", "parent-finally"]  # both finally blocks ran, once each
    assert row(child).cancel_reason == f"its parent {uid!r} ended"


def test_wait_and_abandon_policies(inline, uid):
    dd.start(progs.leaves_children, uid, instance_id=uid)
    assert status(uid) == Status.PAUSED and row(uid).wait_kind == "children"  # it returned; its "wait" child runs
    dd.publish_event(f"{uid}-wait", "go", 1)
    assert status(f"{uid}-wait") == Status.COMPLETED
    assert dd.result(uid) == "parent done"  # woken by its last "wait" child
    assert status(f"{uid}-abandon") == Status.PAUSED  # runs on after its parent
    dd.publish_event(f"{uid}-abandon", "go", 2)
    assert dd.result(f"{uid}-abandon") == 2


def test_a_start_is_idempotent_by_id_and_refuses_another_instances_id(inline, uid):
    dd.start(progs.starts_twice, uid, instance_id=uid)
    assert dd.result(uid) == [9, 9]
    assert DurableInstance.objects.filter(parent_id=uid).count() == 1
    assert notes(uid) == ["square 3"]
    other = f"{uid}-other"
    dd.start(progs.square, "x", 2, instance_id=other)
    dd.start(progs.steals, uid, other, instance_id=f"{uid}-thief")
    assert dd.result(f"{uid}-thief").startswith(f"refused: instance {other!r} already exists")
    assert row(other).parent_id is None


def test_a_start_that_committed_before_a_crash_is_not_made_again(inline, uid):
    # A run without ATOMIC_STEPS commits the child's row at once; a crash before the parent's checkpoint makes the
    # next run start it again, with the same id (the parent's state still counts it as its first child).
    DjangoOrchestrationBackend().start_child_sync(uid, f"{uid}/child-0", progs.square, (uid, 6), {}, "cancel")
    assert status(f"{uid}/child-0") == Status.COMPLETED  # it ran (inline) before its parent's run
    dd.start(progs.parent_of_one, uid, 6, instance_id=uid)
    assert dd.result(uid) == 36
    assert DurableInstance.objects.filter(parent_id=uid).count() == 1
    assert notes(uid) == ["square 6"]  # the child ran once


def test_gather_of_children_wakes_the_parent_once(inline, uid):
    dd.start(progs.fan_out, uid, 5, instance_id=uid)
    assert dd.result(uid) == [0, 1, 4, 9, 16]
    assert DurableInstance.objects.filter(parent_id=uid, status=Status.COMPLETED).count() == 5
    resumed = DurableHistory.objects.filter(instance_id=uid, kind="resumed").count()
    assert resumed == 1, resumed


def test_start_children_creates_them_in_one_step_idempotently(inline, uid):
    # one of the ids exists already as this parent's child (a start committed before a crash): left alone
    DjangoOrchestrationBackend().start_child_sync(uid, f"{uid}/c1", progs.square, (f"{uid}-1", 1), {}, "cancel")
    dd.start(progs.fan_out_at_once, uid, 4, instance_id=uid)
    assert dd.result(uid) == [0, 1, 4, 9]
    assert DurableInstance.objects.filter(parent_id=uid).count() == 4
    assert [len(notes(f"{uid}-{i}")) for i in range(4)] == [1] * 4  # each child ran once
    steps = DurableInstance.objects.get(pk=uid).steps
    assert steps <= 4, steps  # the starts are one checkpoint, not one per child


def test_start_children_refuses_an_id_another_instance_has(inline, uid):
    dd.start(progs.square, f"{uid}-x", 2, instance_id=f"{uid}/c2")
    dd.start(progs.fan_out_at_once, uid, 3, instance_id=uid)
    assert status(uid) == Status.FAILED
    assert "is not a child of" in DurableInstance.objects.get(pk=uid).error
    assert not DurableInstance.objects.filter(parent_id=uid).exists()  # none of the batch was created


def test_first_of_children_is_woken_by_the_first_to_end(inline, uid):
    dd.start(progs.first_of_two, uid, instance_id=uid)
    assert row(uid).wait_kind == "children"
    dd.publish_event(f"{uid}-b", "go", "b won")
    assert dd.result(uid) == "b won"
    assert status(f"{uid}-a") == Status.CANCELLED  # the parent ended: its other child is cancelled (its policy)
    assert notes(f"{uid}-a") == ["child-finally"]


def test_a_child_forced_to_end_cancelled_wakes_its_parent(inline, uid):
    dd.start(progs.awaits_go_child, uid, instance_id=uid)
    assert status(uid) == Status.PAUSED and row(uid).wait_kind == "child"
    dd.cancel(f"{uid}-child", force=True)  # ends it at once: no last checkpoint of its own
    assert dd.result(uid) == "child cancelled"


def test_the_sweep_wakes_a_parent_whose_wake_up_was_lost(inline, uid, monkeypatch):
    dd.start(progs.awaits_go_child, uid, instance_id=uid)
    with monkeypatch.context() as m:
        m.setattr(children, "wake_now", lambda *a: None)  # the wake-up is lost
        dd.publish_event(f"{uid}-child", "go", "done")
        assert status(f"{uid}-child") == Status.COMPLETED and status(uid) == Status.PAUSED
    assert uid in worker.due_instances()
    worker.sweep(inline=True)
    assert dd.result(uid) == "child: done"
    assert uid not in worker.due_instances()


def test_status_command_shows_parent_and_children(inline, uid):
    dd.start(progs.fan_out, uid, 2, instance_id=uid)
    out = StringIO()
    call_command("durable_status", uid, stdout=out)
    text = out.getvalue()
    assert f"{uid}/c0" in text and f"{uid}/c1" in text
    out = StringIO()
    call_command("durable_status", f"{uid}/c0", stdout=out)
    assert f"parent: {uid}" in out.getvalue()


def test_admin_shows_parent_and_children_and_filters_by_parent(inline, uid):
    dd.start(progs.fan_out, uid, 3, instance_id=uid)
    User.objects.create_superuser(f"su-{uid}", password="pw")
    client = Client()
    client.login(username=f"su-{uid}", password="pw")
    page = client.get(reverse("admin:durable_django_durableinstance_change", args=[uid])).content.decode()
    assert 'id="durable-children"' in page
    for i in range(3):
        assert reverse("admin:durable_django_durableinstance_change", args=[f"{uid}/c{i}"]) in page
    child = client.get(reverse("admin:durable_django_durableinstance_change", args=[f"{uid}/c1"])).content.decode()
    assert 'id="durable-parent"' in child
    assert reverse("admin:durable_django_durableinstance_change", args=[uid]) in child
    changelist = reverse("admin:durable_django_durableinstance_changelist")
    listed = client.get(changelist, {"parent": uid}).content.decode()
    assert f"{uid}/c2" in listed and f">{uid}<" not in listed
    assert client.get(changelist, {"parent": "__any__"}).status_code == 200


# -- real workers ---------------------------------------------------------------------------------
def test_a_worker_killed_in_a_childs_step_loses_nothing(worker_factory, uid, tmp_path):
    hold = tmp_path / "hold"
    hold.mkdir()
    n = 4
    for i in range(n):
        (hold / f"{uid}-{i}.hold").touch()
    env = {"DURABLE_TEST_HOLD_DIR": str(hold)}
    victim = worker_factory("victim", extra_env=env)
    dd.start(progs.fan_out, uid, n, "held", instance_id=uid)
    wait_status(uid, Status.PAUSED)
    wait_until(lambda: any((hold / f"{uid}-{i}.entered").exists() for i in range(n)), message="a child to run")
    victim.kill()  # dies in the middle of a child's step; the parent is paused on its children
    for i in range(n):
        (hold / f"{uid}-{i}.hold").unlink()
    worker_factory("after", extra_env=env)
    worker_factory.scheduler()  # the killed worker's child: its lease expires, the sweep hands it out again
    wait_status(uid, Status.COMPLETED, timeout=120)
    assert dd.result(uid) == [i + 1 for i in range(n)]
    assert DurableInstance.objects.filter(parent_id=uid).count() == n  # none started twice
    assert DurableInstance.objects.filter(parent_id=uid, status=Status.COMPLETED).count() == n


def test_a_parent_killed_while_its_children_end_completes_with_every_result(worker_factory, uid, tmp_path):
    hold = tmp_path / "hold"
    hold.mkdir()
    (hold / f"{uid}.hold").touch()
    n = 5
    victim = worker_factory("victim", extra_env={"DURABLE_TEST_HOLD_DIR": str(hold)})
    dd.start(progs.starts_then_works, uid, n, instance_id=uid)
    wait_until(lambda: (hold / f"{uid}.entered").exists(), message="the parent's own step to run")
    assert DurableInstance.objects.filter(parent_id=uid).count() == n  # committed with their checkpoints
    worker_factory("helper")
    worker_factory.scheduler()
    ids = [f"{uid}/c{i}" for i in range(n)]
    wait_until(lambda: DurableInstance.objects.filter(pk__in=ids, status=Status.COMPLETED).count() == n,
               timeout=120, message="the children to complete while their parent's step runs")
    victim.kill()  # the parent dies in its step, after its children ended (none woke it: it was running)
    (hold / f"{uid}.hold").unlink()
    wait_status(uid, Status.COMPLETED, timeout=120)  # its lease expires, the sweep runs it again
    assert dd.result(uid) == [i * i for i in range(n)]
    assert DurableInstance.objects.filter(parent_id=uid).count() == n  # none started twice
    assert [len(notes(f"{uid}-{i}")) for i in range(n)] == [1] * n  # each child's step ran once
    assert "recovered" in DurableHistory.objects.filter(instance_id=uid).values_list("kind", flat=True)


def test_a_thousand_children_fanned_out_and_gathered(worker_factory, uid):
    n = int(os.environ.get("DURABLE_TEST_CHILDREN", "1000"))
    worker_factory("f1")
    worker_factory("f2")
    t0 = time.monotonic()
    dd.start(progs.fan_out_at_once, uid, n, instance_id=uid)
    wait_status(uid, Status.COMPLETED, timeout=240)
    elapsed = time.monotonic() - t0
    assert dd.result(uid) == [i * i for i in range(n)]
    assert DurableInstance.objects.filter(parent_id=uid, status=Status.COMPLETED).count() == n
    assert SideEffect.objects.filter(key__startswith=f"{uid}-").count() == n  # every child's step once
    resumed = DurableHistory.objects.filter(instance_id=uid, kind="resumed").count()
    print(f"\n{n} children started, run and gathered on 2 workers in {elapsed:.1f}s; parent resumed {resumed}x")
    assert resumed <= 3, resumed
    assert worker.due_instances() == []
