"""Parallel branches (``durable.gather``/``first``) in the Django app: branch rows, waits, wake-ups.

The inline tests run each instance in the test process when its transaction
commits (``RUN_INLINE``); the worker tests use real Celery workers (and kill
one mid-group). See durable_django/branches.py.
"""

from __future__ import annotations

import asyncio
import re
import time
from datetime import timedelta
from io import StringIO

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth.models import User
from django.core.management import call_command
from django.db import connection
from django.test import Client
from django.urls import reverse

import durable_django as dd
from durable import CallStack, StateTamperedError
from durable_django import eventloop
from durable_django.backend import DjangoOrchestrationBackend
from durable_django.exceptions import LeaseLost
from durable_django.live import read_status
from durable_django.models import DurableBranch, DurableEvent, DurableHistory, DurableInstance, Status
from durable_django.worker import due_instances, run_instance
from tests.django.conftest import wait_until
from tests.django.testapp import branch_programs as bp
from tests.django.testapp.models import SideEffect

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(240)]


def row(iid: str) -> DurableInstance:
    return DurableInstance.objects.get(pk=iid)


def notes(key: str) -> list[str]:
    return sorted(SideEffect.objects.filter(key=key).values_list("note", flat=True))


def branches(iid: str) -> dict[str, tuple[str, str, str]]:
    return {b.path: (b.status, b.wait_kind, b.waiting_for) for b in DurableBranch.objects.filter(instance_id=iid)}


# -- inline ---------------------------------------------------------------------------------------------------
def test_two_event_waits_at_once_then_one_by_one(inline, uid):
    dd.start(bp.two_approvals, uid, instance_id=uid)
    inst = row(uid)
    assert (inst.status, inst.wait_kind) == (Status.PAUSED, "branches")
    assert inst.waiting_for == "event 'manager' (branch 0.0); event 'finance' (branch 0.1)"
    assert inst.wake_at is None
    assert branches(uid) == {"0.0": ("paused", "event", "manager"), "0.1": ("paused", "event", "finance")}
    assert notes(uid) == ["finance-asked", "manager-asked"]
    assert list(due_instances()) == []  # nothing to wake: no event yet

    dd.publish_event(uid, "finance", "ok-f")
    inst = row(uid)
    assert (inst.status, inst.waiting_for) == (Status.PAUSED, "event 'manager' (branch 0.0)")
    assert branches(uid)["0.1"][0] == "completed"  # it ended; the other still waits
    assert notes(uid) == ["finance-asked", "finance-got", "manager-asked"]

    dd.publish_event(uid, "manager", "ok-m")
    inst = row(uid)
    assert inst.status == Status.COMPLETED, inst.error
    assert dd.result(uid) == ["ok-m", "ok-f"]
    assert notes(uid) == ["done", "finance-asked", "finance-got", "manager-asked", "manager-got"]
    assert not DurableBranch.objects.filter(instance_id=uid).exists()  # deleted when the group ended
    detail = list(DurableHistory.objects.filter(instance_id=uid, kind="paused").values_list("detail", flat=True))
    assert detail[0] == "branches: event 'manager' (branch 0.0); event 'finance' (branch 0.1)"


def test_an_event_for_no_live_wait_wakes_nothing_in_the_sweep(inline, uid, settings):
    dd.start(bp.two_approvals, uid, instance_id=uid)
    settings.DURABLE = {**settings.DURABLE, "RUN_INLINE": False}  # the events stay in the inbox
    dd.publish_event(uid, "unrelated")
    assert uid not in due_instances()
    assert not DurableInstance.objects.with_pending_event().filter(pk=uid).exists()
    dd.publish_event(uid, "finance", 1)
    assert uid in due_instances()  # a paused branch waits for it
    assert DurableInstance.objects.with_pending_event().filter(pk=uid).exists()
    assert DurableInstance.objects.runnable_now(row(uid).updated_at + timedelta(seconds=1)).filter(pk=uid).exists()


def test_failure_in_one_branch_cancels_the_other_and_its_finally_runs(inline, uid):
    dd.start(bp.failure_cancels_other, uid, instance_id=uid)
    assert row(uid).waiting_for == "event 'never' (branch 0.0); event 'boom' (branch 0.1)"
    dd.publish_event(uid, "boom")
    assert row(uid).status == Status.COMPLETED, row(uid).error
    assert dd.result(uid) == "boom in a branch"
    assert notes(uid) == ["caught", "waiter-finally", "waiter-started"]
    assert not DurableBranch.objects.filter(instance_id=uid).exists()


def test_first_returns_the_first_and_cancels_the_other(inline, uid):
    dd.start(bp.first_of_two, uid, instance_id=uid)
    assert row(uid).wait_kind == "branches"
    dd.publish_event(uid, "left", "L")
    assert row(uid).status == Status.COMPLETED, row(uid).error
    assert dd.result(uid) == "L"
    assert notes(uid) == ["left-asked", "left-got", "waiter-finally", "waiter-started"]


def test_two_branches_never_take_the_same_event(inline, uid):
    """Both branches of a nested group wait for events published before they wait: each takes its own."""
    dd.start(bp.nested, uid, instance_id=uid)
    inst = row(uid)
    assert inst.waiting_for == "event 'n1' (branch 0.0/0.0); event 'n2' (branch 0.0/0.1); event 'top' (branch 0.1)"
    assert branches(uid)["0.0/0.0"] == ("paused", "event", "n1")
    dd.publish_event(uid, "n2", "two")
    dd.publish_event(uid, "top", "t")
    assert row(uid).waiting_for == "event 'n1' (branch 0.0/0.0)"
    assert branches(uid)["0.0"] == ("paused", "branches", "event 'n1' (branch 0.0/0.0)")
    dd.publish_event(uid, "n1", "one")
    assert row(uid).status == Status.COMPLETED, row(uid).error
    assert dd.result(uid) == [["one", "two"], "t"]
    assert not DurableBranch.objects.filter(instance_id=uid).exists()


def test_events_of_one_name_for_two_branches_are_taken_one_each(settings, uid):
    settings.DURABLE = {**settings.DURABLE, "RUN_INLINE": False}
    dd.start(bp.same_event_twice, uid, instance_id=uid)
    for payload in ("v1", "v2", "v3"):  # published before any branch waits; the third is one too many
        dd.publish_event(uid, "vote", payload)
    assert run_instance(uid) == Status.COMPLETED, row(uid).error
    assert sorted(dd.result(uid)) == ["v1", "v2"]
    left = DurableEvent.objects.filter(instance_id=uid, consumed_at__isnull=True).values_list("payload", flat=True)
    assert list(left) == ["v3"]


def test_branch_checkpoints_write_only_their_own_row(inline, uid):
    """Each branch has a 20 KB local and five steps: the instance row's state holds neither branch's frames, and
    a branch's checkpoint does not UPDATE the instance row's state."""
    statements: list[str] = []

    def record(execute, sql, params, many, context):
        statements.append(sql)
        return execute(sql, params, many, context)

    with connection.execute_wrapper(record):
        dd.start(bp.heavy_branches, uid, 5, instance_id=uid)
    assert row(uid).status == Status.COMPLETED, row(uid).error
    assert dd.result(uid) == [20_000, 20_000]
    def writes(table: str, column: str) -> list[str]:
        """Statements that UPDATE (or INSERT into) ``table`` and set ``column`` (any vendor's quoting, in a CTE too)."""
        found = re.compile(rf"(UPDATE|INSERT INTO)\s+[`\"]?{table}[`\"]?\s+(SET\s+|\()[^;]*?[`\"]?\b{column}\b[`\"]?")
        return [sql for sql in statements if found.search(sql)]

    state_updates = [sql for sql in writes(DurableInstance._meta.db_table, "state") if "INSERT" not in sql[:30]]
    branch_writes = writes(DurableBranch._meta.db_table, "state")
    print(f"\n{len(branch_writes)} branch row writes, {len(state_updates)} instance state UPDATEs")
    assert len(branch_writes) >= 10  # at least one per step of each branch
    assert len(state_updates) <= 3, state_updates  # the group's start, its end and the completion


def test_branch_rows_hold_the_frames_not_the_instance_row(settings, uid):
    settings.DURABLE = {**settings.DURABLE, "RUN_INLINE": False}
    dd.start(bp.heavy_waits, uid, instance_id=uid)
    assert run_instance(uid) == Status.PAUSED
    sizes = {b.path: len(bytes(b.state)) for b in DurableBranch.objects.filter(instance_id=uid)}
    assert set(sizes) == {"0.0", "0.1"} and min(sizes.values()) > 20_000, sizes
    assert len(bytes(row(uid).state)) < 5_000  # the awaiting frame and the group, no branch's frames
    dd.publish_event(uid, "y", "Y")
    assert run_instance(uid) == Status.PAUSED
    assert len(bytes(row(uid).state)) < 5_000
    dd.publish_event(uid, "x", "X")
    assert run_instance(uid) == Status.COMPLETED
    assert dd.result(uid) == [[20_000, "X"], [20_000, "Y"]]


def test_admin_page_status_command_and_live_status_show_every_wait(inline, uid):
    dd.start(bp.two_approvals, uid, instance_id=uid)
    both = "event 'manager' (branch 0.0); event 'finance' (branch 0.1)"
    User.objects.create_superuser("root-b", password="pw")
    client = Client()
    client.login(username="root-b", password="pw")
    page = client.get(reverse("admin:durable_django_durableinstance_change", args=[uid])).content.decode()
    assert "<h2>Branches</h2>" in page
    section = page.split('id="durable-branches"')[1].split("</table>")[0]
    assert "<code>0.0</code>" in section and "<code>0.1</code>" in section
    assert "event &#x27;manager&#x27;" in section and "event &#x27;finance&#x27;" in section
    assert "approve line" in section  # each branch's position
    assert 'value="manager"' in page  # the publish form offers a paused branch's event
    listing = client.get(reverse("admin:durable_django_durableinstance_changelist") + "?waits=branches")
    assert uid in listing.content.decode()

    out = StringIO()
    call_command("durable_status", stdout=out)
    assert any(uid in line and both in line for line in out.getvalue().splitlines())
    out = StringIO()
    call_command("durable_status", uid, stdout=out)
    text = out.getvalue()
    assert "branches:" in text and "0.0" in text and "waits for event 'manager'" in text
    assert read_status(uid)["waiting_for"] == both  # what the websocket pushes

    dd.publish_event(uid, "finance", 1)
    page = client.get(reverse("admin:durable_django_durableinstance_change", args=[uid])).content.decode()
    section = page.split('id="durable-branches"')[1].split("</table>")[0]
    assert "completed" in section and "finance" not in section.split("completed")[1].split("</tr>")[0]
    assert read_status(uid)["waiting_for"] == "event 'manager' (branch 0.0)"


def test_test_env_timer_branch_fires_on_advance_and_assert_waiting_sees_branch_waits(durable_env, uid):
    inst = durable_env.start(bp.timer_and_event, uid, 3600.0, instance_id=uid)
    assert inst.wait_kind == "branches"
    durable_env.assert_waiting(uid, "go")  # the event branch's wait
    durable_env.assert_waiting(uid, timer=True)  # the timer branch's
    with pytest.raises(AssertionError, match="waiting for timer until .* \\(branch 0.0\\); event 'go'"):
        durable_env.assert_waiting(uid, "other")
    assert durable_env.advance(3601) == [uid]  # woken at the timer branch's due time
    assert "timer-done" in notes(uid)
    durable_env.assert_waiting(uid, "go")
    with pytest.raises(AssertionError):
        durable_env.assert_waiting(uid, timer=True)
    durable_env.publish(uid, "go", "g")
    assert durable_env.assert_completed(uid) == ["timer", "g"]


def test_branch_checkpoint_is_fenced_by_the_lease_and_signed_for_its_path(settings, uid):
    settings.DURABLE = {**settings.DURABLE, "RUN_INLINE": False}
    dd.start(bp.two_approvals, uid, instance_id=uid)  # pending: nobody runs it
    program = row(uid).program
    state = {"format": 1, "status": "paused", "program": program, "stack": CallStack([]), "steps": 3, "result": None,
             "error": None, "wait": {"kind": "event", "event": "manager", "due": None}}
    DurableInstance.objects.filter(pk=uid).update(lease_owner="someone-else")
    backend = DjangoOrchestrationBackend(worker_id="me", program=program)
    with pytest.raises(LeaseLost):
        backend.save_branch_sync(uid, "0.0", state)
    assert not DurableBranch.objects.filter(instance_id=uid).exists()  # the lost lease wrote nothing
    DurableInstance.objects.filter(pk=uid).update(lease_owner="me")
    backend.save_branch_sync(uid, "0.0", state)
    assert branches(uid) == {"0.0": ("paused", "event", "manager")}
    assert backend.load_branch_sync(uid, "0.0")["steps"] == 3
    blob = DurableBranch.objects.get(instance_id=uid, path="0.0").state
    DurableBranch.objects.create(instance_id=uid, path="0.1", state=blob)  # another branch's valid blob
    with pytest.raises(StateTamperedError):
        backend.load_branch_sync(uid, "0.1")
    DurableInstance.objects.filter(pk=uid).update(status=Status.CANCELLED)  # a cancelled instance: no more writes
    with pytest.raises(LeaseLost):
        backend.save_branch_sync(uid, "0.0", {**state, "steps": 4})
    assert backend.load_branch_sync(uid, "0.0")["steps"] == 3


def test_a_sync_call_in_a_run_resumes_its_task_before_any_other_task_runs():
    """What keeps a step's writes and its branch's checkpoint together: a thread-sensitive call (``db_step``, the
    async ORM) is done when the awaiting task resumes, with no other task (another branch and its checkpoint)
    run in between."""
    order: list[str] = []

    def call() -> None:
        order.append("call")

    async def step() -> None:
        await sync_to_async(call)()
        order.append("after")

    async def other() -> None:
        for _ in range(5):
            order.append("other")
            await asyncio.sleep(0)

    async def main() -> None:
        await asyncio.gather(other(), step(), other())

    class Backend:
        inline = False

    eventloop.run(Backend(), main)
    i = order.index("call")
    assert order[i + 1] == "after", order


# -- real Celery workers ----------------------------------------------------------------------------------------
def wait_for(iid: str, what, message: str, timeout: float = 60):
    return wait_until(lambda: what(row(iid)), timeout=timeout,
                      message=lambda: f"{iid}: {message} (it is {row(iid).status}, {row(iid).waiting_for!r})")


def test_worker_two_waits_at_once_one_event_then_the_other(worker_factory, uid):
    worker_factory()
    dd.start(bp.two_approvals, uid, instance_id=uid)
    wait_for(uid, lambda r: r.status == Status.PAUSED and r.wait_kind == "branches", "paused on both branches")
    assert row(uid).waiting_for == "event 'manager' (branch 0.0); event 'finance' (branch 0.1)"
    dd.publish_event(uid, "manager", {"by": "m"})
    wait_for(uid, lambda r: r.waiting_for == "event 'finance' (branch 0.1)", "the manager's branch to go on")
    assert row(uid).status == Status.PAUSED
    assert notes(uid) == ["finance-asked", "manager-asked", "manager-got"]  # the other branch still waits
    dd.publish_event(uid, "finance", {"by": "f"})
    wait_for(uid, lambda r: r.status == Status.COMPLETED, "completion")
    assert dd.result(uid) == [{"by": "m"}, {"by": "f"}]
    assert notes(uid) == ["done", "finance-asked", "finance-got", "manager-asked", "manager-got"]
    assert not DurableBranch.objects.filter(instance_id=uid).exists()


def test_worker_timer_in_one_branch_event_in_the_other(worker_factory, uid):
    worker_factory()
    t0 = time.time()
    dd.start(bp.timer_and_event, uid, 2.0, instance_id=uid)
    wait_for(uid, lambda r: r.status == Status.PAUSED and r.wait_kind == "branches", "paused on both branches")
    inst = row(uid)
    assert inst.waiting_for.startswith("timer until ") and inst.waiting_for.endswith("(branch 0.0); event 'go' "
                                                                                   "(branch 0.1)")
    assert inst.wake_at is not None and abs(inst.wake_at.timestamp() - (t0 + 2.0)) < 1.5  # woken at the timer
    # The timer's wake-up (an ETA message, no sweep here) runs the timer's branch; the other still waits.
    wait_until(lambda: "timer-done" in notes(uid), timeout=30, message="the timer's branch to go on")
    assert time.time() - t0 >= 2.0
    wait_for(uid, lambda r: r.status == Status.PAUSED and r.waiting_for == "event 'go' (branch 0.1)",
             "the event's branch alone to wait")
    assert row(uid).wake_at is None
    dd.publish_event(uid, "go", "went")
    wait_for(uid, lambda r: r.status == Status.COMPLETED, "completion")
    assert dd.result(uid) == ["timer", "went"]


def test_worker_killed_mid_group_branch_steps_written_once(worker_factory, uid, tmp_path):
    """Branch b hangs in its second step with its row written (not committed) while branch a goes on; the worker
    is killed; another worker resumes each branch from its own last checkpoint: every step's row exists once."""
    hang = tmp_path / "hang"
    hang.mkdir()
    victim = worker_factory("victim", extra_env={"DURABLE_TEST_HANG_DIR": str(hang)})
    dd.start(bp.steps_in_parallel, uid, 4, 1, instance_id=uid)
    wait_until(lambda: (hang / f"{uid}.entered").exists(), timeout=60, message="branch b's step 1 to start")
    assert "b-1" not in notes(uid)  # written, not committed
    committed_before = notes(uid)
    assert "b-0" in committed_before and "a-0" in committed_before
    victim.kill()
    assert notes(uid) == committed_before  # the dead worker's open transaction is gone
    worker_factory("rescuer")
    worker_factory.scheduler()  # hands the instance over once the lease expires
    wait_for(uid, lambda r: r.status == Status.COMPLETED, "completion by the rescuer", timeout=90)
    assert dd.result(uid) == ["a", "b"]
    expected = sorted([f"a-{i}" for i in range(4)] + [f"b-{i}" for i in range(4)] + ["end"])
    assert notes(uid) == expected  # each step's row exactly once
    kinds = list(DurableHistory.objects.filter(instance_id=uid).values_list("kind", flat=True))
    assert kinds.count("recovered") == 1
