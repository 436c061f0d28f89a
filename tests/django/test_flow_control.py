"""Flow control (durable_django.flowcontrol): concurrency limits per program and per key, rate limits,
priorities and per-program queues, with real Celery worker processes (SQLite file, or PostgreSQL with
DATABASE_URL as in ``make test``).

Concurrency is measured, not assumed: every step records when it started and ended (a FlowMark row committed
with its checkpoint), and the test computes the largest number of steps that overlapped in time.
"""

from __future__ import annotations

import os
import time

import pytest
from django.core.management import call_command
from django.db import transaction
from django.test import override_settings

import durable_django
from durable_django import flowcontrol, worker
from durable_django.exceptions import InvalidInput
from durable_django.models import DurableInstance, DurableRateWindow, Status
from tests.django.conftest import wait_until
from tests.django.testapp import flow_programs as fp
from tests.django.testapp.models import FlowMark

PATH = "tests.django.testapp.flow_programs."
pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True, scope="module")
def _purge_the_queues_it_routes_to():
    """The wake-ups these tests route to queues of their own (and to Celery's default one) are not left in a
    shared broker: the queues are purged once the module is done."""
    yield
    from example_project.celery import app

    with app.connection_for_write() as conn:
        for queue in ("reports", "celery", fp.FLOW_QUEUE):
            try:
                conn.default_channel.queue_purge(queue)
            except Exception:  # noqa: BLE001 - a queue that was never declared: nothing to purge
                pass


def max_overlap(marks) -> int:
    """The largest number of [start, end] intervals that contain one instant."""
    points = sorted([(m.start, 1) for m in marks] + [(m.end, -1) for m in marks], key=lambda p: (p[0], p[1]))
    best = now = 0
    for _, delta in points:
        now += delta
        best = max(best, now)
    return best


def all_finished(ids, status=Status.COMPLETED):
    return DurableInstance.objects.filter(pk__in=ids, status=status).count() == len(ids)


def describe(ids):
    return lambda: str(list(DurableInstance.objects.filter(pk__in=ids).values_list(
        "pk", "status", "flow_waiting", "lease_owner", "error")))


# -- declarations and settings (in process) ------------------------------------------------------
def test_rates_parse():
    assert flowcontrol.parse_rate("10/m") == (10, 60.0)
    assert flowcontrol.parse_rate("5/30s") == (5, 30.0)
    assert flowcontrol.parse_rate((2, 1)) == (2, 1.0)
    for bad in ("10", "x/m", "0/s", "3/2w"):
        with pytest.raises(ValueError):
            flowcontrol.parse_rate(bad)


def test_declared_and_settings_limits():
    assert flowcontrol.limits_for(PATH + "two_at_a_time").concurrency == 2
    assert flowcontrol.limits_for(PATH + "prioritised") is None
    with override_settings(DURABLE={"LIMITS": {PATH + "prioritised": {"concurrency": 3, "priority": 7,
                                                                      "key": "tag", "per_key": 1}}}):
        found = flowcontrol.limits_for(PATH + "prioritised")
        assert (found.concurrency, found.priority, found.per_key) == (3, 7, 1)
        inst = durable_django.start(fp.prioritised, "a")
        assert (inst.priority, inst.flow_key) == (7, "a")
    assert flowcontrol.limits_for(PATH + "prioritised") is None  # the settings' limits went with them
    with pytest.raises(ValueError, match="per_key"):
        flowcontrol.limit(fp.prioritised, per_key=1)


def test_bad_limits_settings_are_reported():
    from durable_django.checks import check_flow_control

    with override_settings(DURABLE={"LIMITS": {"x.y": {"concurrency": 0}, "x.z": {"rate": "lots"}},
                                    "QUEUES": "q", "MESSAGE_PRIORITY": 3}):
        ids = sorted(e.id for e in check_flow_control())
    assert ids == ["durable_django.E051", "durable_django.E051", "durable_django.E052", "durable_django.E053"]


def test_start_queue_is_a_reserved_option(settings):
    """start(program, queue=...) used to reach the program (which then never ran): now it routes the instance,
    to a queue that a worker is known to consume, or is refused."""
    with pytest.raises(InvalidInput, match="QUEUES"):
        durable_django.start(fp.prioritised, "a", queue="nobody-listens")
    with pytest.raises(InvalidInput, match="priority"):
        durable_django.start(fp.prioritised, "a", priority=1 << 20)
    assert not DurableInstance.objects.exists()
    settings.DURABLE = {**settings.DURABLE, "QUEUES": ["reports"]}
    inst = durable_django.start(fp.prioritised, "a", queue="reports", priority=3)
    assert (inst.queue, inst.priority) == ("reports", 3)
    assert flowcontrol.route([inst.pk]) == {inst.pk: {"queue": "reports"}}
    routed = durable_django.start(fp.routed, "b")  # the program's own queue
    assert flowcontrol.route([routed.pk]) == {routed.pk: {"queue": fp.FLOW_QUEUE}}


def test_priority_order_in_a_batch_and_the_sweep(settings):
    """A batch runs its instances highest priority first; the sweep hands them out in that order."""
    settings.DURABLE = {**settings.DURABLE, "BATCH_SECONDS": 60}
    with transaction.atomic():
        ids = [durable_django.start(fp.prioritised, f"p{n}", priority=p).pk
               for n, p in enumerate([0, 5, -1, 9, 4, 2])]
    assert worker.due_instances() == [ids[3], ids[1], ids[4], ids[5], ids[0], ids[2]]
    worker.run_batch(ids)
    order = list(FlowMark.objects.order_by("start").values_list("tag", flat=True))
    assert order == ["p3", "p1", "p4", "p5", "p0", "p2"]


def test_over_the_limit_waits_without_a_worker_and_the_freed_slot_wakes_it(inline):
    """In process: the second instance of a limit of one waits (pending, flow_waiting set, no lease) while the
    first holds the slot (hold="finished": even while paused), and runs once the first finishes."""
    first = durable_django.start(fp.exclusive_until_done, "first")
    assert DurableInstance.objects.get(pk=first.pk).status == Status.PAUSED
    second = durable_django.start(fp.exclusive_until_done, "second")
    row = DurableInstance.objects.get(pk=second.pk)
    assert (row.status, row.flow_waiting, row.lease_owner) == (Status.PENDING, PATH + "exclusive_until_done", "")
    assert flowcontrol.running(PATH + "exclusive_until_done") == [first.pk]
    assert worker.due_instances() == []  # the sweep leaves it alone: no slot is free
    durable_django.publish_event(first.pk, "go")
    assert DurableInstance.objects.get(pk=first.pk).status == Status.COMPLETED
    row = DurableInstance.objects.get(pk=second.pk)
    assert (row.status, row.flow_waiting) == (Status.PAUSED, "")
    assert flowcontrol.running(PATH + "exclusive_until_done") == [second.pk]


def test_hold_running_frees_the_slot_while_paused(inline, settings):
    """The default: a paused instance holds no slot."""
    with override_settings(DURABLE={**settings.DURABLE, "LIMITS": {
            "tests.django.testapp.durable_programs.two_events": {"concurrency": 1}}}):
        from tests.django.testapp.durable_programs import two_events

        a = durable_django.start(two_events, "a")
        b = durable_django.start(two_events, "b")
        assert [DurableInstance.objects.get(pk=i.pk).status for i in (a, b)] == [Status.PAUSED, Status.PAUSED]
        assert not DurableInstance.objects.exclude(flow_waiting="").exists()


# -- real workers --------------------------------------------------------------------------
@pytest.mark.timeout(180)
def test_a_limit_of_two_holds_under_load_across_workers(worker_factory):
    for _ in range(3):
        worker_factory()
    ids = [durable_django.start(fp.two_at_a_time, f"t{n}", 0.3).pk for n in range(20)]
    wait_until(lambda: all_finished(ids), timeout=120, message=describe(ids))
    marks = list(FlowMark.objects.filter(tag__startswith="t"))
    assert len({m.tag for m in marks}) == 20
    assert max_overlap(marks) == 2  # never more than the limit, and the limit was used


@pytest.mark.timeout(180)
def test_a_per_key_limit_across_workers(worker_factory):
    for _ in range(3):
        worker_factory()
    ids = [durable_django.start(fp.one_per_customer, f"c{n}", ("ann", "bob")[n % 2], 0.3).pk for n in range(10)]
    wait_until(lambda: all_finished(ids), timeout=120, message=describe(ids))
    marks = list(FlowMark.objects.filter(tag__startswith="c"))
    for customer in ("ann", "bob"):
        assert max_overlap([m for m in marks if m.key == customer]) == 1
    assert max_overlap(marks) == 2  # the two customers ran side by side


@pytest.mark.timeout(120)
def test_a_rate_limit_across_workers(worker_factory):
    for _ in range(2):
        worker_factory()
    ids = [durable_django.start(fp.rate_limited, f"r{n}").pk for n in range(7)]
    wait_until(lambda: all_finished(ids), timeout=60, message=describe(ids))
    windows = list(DurableRateWindow.objects.filter(limit_key="rate:" + PATH + "rate_limited")
                   .values_list("window", "count"))
    assert sum(c for _, c in windows) == 7 and all(c <= 3 for _, c in windows) and len(windows) >= 3
    starts = sorted(FlowMark.objects.filter(tag__startswith="r").values_list("start", flat=True))
    assert starts[-1] - starts[0] > 1.9  # 7 starts at 3 per 2 s: at least one whole window (less a step's delay)


@pytest.mark.timeout(120)
def test_priority_order_with_a_real_worker(worker_factory):
    with transaction.atomic():  # one transaction: one batch message
        ids = [durable_django.start(fp.prioritised, f"q{n}", priority=p).pk for n, p in enumerate([1, 8, 3, 8, 0])]
    worker_factory()
    wait_until(lambda: all_finished(ids), timeout=60, message=describe(ids))
    assert list(FlowMark.objects.order_by("start").values_list("tag", flat=True)) == ["q1", "q3", "q2", "q0", "q4"]


@pytest.mark.timeout(120)
def test_a_program_routed_to_its_own_queue(worker_factory):
    """Only a worker on the program's queue runs it, its timer's wake-up included."""
    worker_factory()  # the default queue only
    routed = durable_django.start(fp.routed, "routed").pk
    other = durable_django.start(fp.prioritised, "plain").pk
    wait_until(lambda: all_finished([other]), timeout=60, message=describe([other]))
    assert DurableInstance.objects.get(pk=routed).status == Status.PENDING  # its message waits in its queue
    worker_factory(queues=fp.FLOW_QUEUE)
    wait_until(lambda: all_finished([routed]), timeout=60, message=describe([routed]))


@pytest.mark.timeout(180)
def test_a_killed_workers_slot_frees_when_its_lease_expires(worker_factory, tmp_path):
    hang = tmp_path / "hang"
    hang.mkdir()
    doomed = worker_factory(extra_env={"DURABLE_TEST_FLOW_HANG_DIR": str(hang)})
    first = durable_django.start(fp.exclusive, "hang-1").pk
    wait_until(lambda: (hang / "hang-1.entered").exists(), timeout=60, message="the step to start")
    worker_factory()  # the doomed worker's solo pool is busy: this one takes the second instance
    second = durable_django.start(fp.exclusive, "second").pk
    wait_until(lambda: DurableInstance.objects.filter(pk=second).exclude(flow_waiting="").exists(), timeout=30,
               message=describe([second]))
    assert flowcontrol.running(PATH + "exclusive") == [first]
    doomed.kill()
    killed_at = time.time()
    worker_factory.scheduler(interval=0.3)
    wait_until(lambda: all_finished([first, second]), timeout=90, message=describe([first, second]))
    marks = list(FlowMark.objects.filter(tag__in=["hang-1", "second"]))
    assert len(marks) == 2 and max_overlap(marks) == 1
    lease = float(os.environ.get("DURABLE_LEASE_SECONDS", "3"))
    assert min(m.start for m in marks) > killed_at + lease * 0.5  # nothing ran until the lease was expiring


def test_sweep_command_runs_waiting_instances(inline):
    """``durable_resume`` (the sweep) runs a waiting instance once its slot is free."""
    a = durable_django.start(fp.exclusive_until_done, "a").pk
    b = durable_django.start(fp.exclusive_until_done, "b").pk
    DurableInstance.objects.filter(pk=a).update(status=Status.CANCELLED)  # cancelled behind the worker's back
    assert worker.due_instances() == [b]
    call_command("durable_resume", verbosity=0)
    assert DurableInstance.objects.get(pk=b).status == Status.PAUSED


def test_the_admin_shows_what_waits_for_a_slot(inline, admin_client):
    first = durable_django.start(fp.exclusive_until_done, "first").pk
    second = durable_django.start(fp.exclusive_until_done, "second").pk
    page = admin_client.get("/admin/durable_django/durableinstance/?flow=slot").content.decode()
    assert second in page and first not in page
    assert "a slot of exclusive_until_done" in page
    assert "waits for a slot" in page  # the filter's choice


def test_the_example_limits_expenses_per_employee():
    """The example project declares a limit on its expense process (example_project/expenses/flow_control.py)."""
    from example_project.expenses.durable_programs import expense_approval

    found = flowcontrol.limits_for(durable_django.programs.path_of(expense_approval))
    assert (found.concurrency, found.per_key, found.hold) == (10, 1, "running")


def test_on_postgresql_the_claim_takes_the_slot_itself(settings):
    """One round trip: the claim's statement also takes a slot of the program's limit; when none is free it takes
    none, and the instance waits."""
    from django.db import connection

    from durable_django import leases

    if connection.vendor != "postgresql":
        pytest.skip("the one-statement claim with a slot is PostgreSQL's")
    first = durable_django.start(fp.exclusive, "a").pk
    second = durable_django.start(fp.exclusive, "b").pk
    flowcontrol.limits_for(PATH + "exclusive")
    assert (PATH + "exclusive", 1, "running") in flowcontrol.program_limits()
    row = leases._claim(first, "w1")
    assert row.slot is None and flowcontrol.admit(row, "w1")  # the first use creates the slots
    leases._release(first, "w1")
    row = leases._claim(first, "w1")
    assert row.slot is not None and flowcontrol.admit(row, "w1")
    other = leases._claim(second, "w2")
    assert other.slot is None and not flowcontrol.admit(other, "w2")
    assert DurableInstance.objects.get(pk=second).flow_waiting == PATH + "exclusive"


def test_a_cancellation_does_not_wait_for_a_slot(inline):
    first = durable_django.start(fp.exclusive_until_done, "first").pk
    second = durable_django.start(fp.exclusive_until_done, "second").pk
    assert DurableInstance.objects.get(pk=second).flow_waiting
    durable_django.cancel(second, "not needed")
    assert DurableInstance.objects.get(pk=second).status == Status.CANCELLED
    assert DurableInstance.objects.get(pk=first).status == Status.PAUSED  # still holds its slot


@pytest.mark.parametrize("mode, expected", [(True, 7), ("inverted", 2)])
def test_message_priority_follows_the_instance_priority(settings, mode, expected):
    settings.DURABLE = {**settings.DURABLE, "MESSAGE_PRIORITY": mode}
    inst = durable_django.start(fp.prioritised, "m", priority=7)
    low = durable_django.start(fp.prioritised, "n", priority=-3)
    routes = flowcontrol.route([inst.pk, low.pk])
    assert routes[inst.pk] == {"priority": expected}
    assert routes[low.pk] == {"priority": 0 if mode is True else 9}
