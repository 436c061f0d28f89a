"""Batched wake-ups: one message per burst of instances, claimed with one statement, run one after the other.

The in-process tests record the messages the app hands to Celery (the tasks'
``apply_async``) instead of sending them, so that what a transaction sends can
be checked exactly; the worker tests use real Celery worker subprocesses.
"""

from __future__ import annotations

import pytest
from django.db import connection, transaction

import durable_django as dd
from durable_django import leases, worker
from durable_django.models import DurableHistory, DurableInstance, Status
from durable_django.tasks import run_instance, run_instances
from tests.django.conftest import wait_until
from tests.django.testapp import durable_programs as progs
from tests.django.testapp.models import SideEffect

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(240)]


@pytest.fixture
def sent(monkeypatch):
    """The wake-up messages the app sends, as (task name, ids) pairs, instead of sending them."""
    out: list[tuple[str, list[str]]] = []
    monkeypatch.setattr(run_instance, "apply_async", lambda args, **kw: out.append(("one", [args[0]])))
    monkeypatch.setattr(run_instances, "apply_async", lambda args, **kw: out.append(("batch", list(args[0]))))
    return out


def _statements(kinds: list[str]):
    def wrapper(execute, sql, params, many, context):
        kinds.append(sql.strip())
        return execute(sql, params, many, context)

    return connection.execute_wrapper(wrapper)


def test_burst_in_one_transaction_sends_one_message_per_batch(sent, settings, uid):
    settings.DURABLE = {**settings.DURABLE, "BATCH_SIZE": 4}
    ids = [f"{uid}-{i}" for i in range(10)]
    with transaction.atomic():
        for iid in ids:
            dd.start(progs.effect_then_finish, iid, instance_id=iid)
        assert sent == []  # nothing before the commit
    assert sent == [("batch", ids[:4]), ("batch", ids[4:8]), ("batch", ids[8:])]


def test_single_start_and_autocommit_send_one_run_instance_message(sent, uid):
    with transaction.atomic():
        dd.start(progs.effect_then_finish, uid, instance_id=uid)
    dd.start(progs.effect_then_finish, f"{uid}-b", instance_id=f"{uid}-b")  # autocommit: sent at once
    dd.publish_event(uid, "noise")
    assert sent == [("one", [uid]), ("one", [f"{uid}-b"]), ("one", [uid])]


def test_rolled_back_savepoint_drops_only_its_wake_ups(sent, uid):
    with transaction.atomic():
        dd.start(progs.effect_then_finish, f"{uid}-kept", instance_id=f"{uid}-kept")
        try:
            with transaction.atomic():
                dd.start(progs.effect_then_finish, f"{uid}-gone", instance_id=f"{uid}-gone")
                raise RuntimeError("roll back this savepoint")
        except RuntimeError:
            pass
        dd.start(progs.effect_then_finish, f"{uid}-late", instance_id=f"{uid}-late")
    assert sent == [("batch", [f"{uid}-kept", f"{uid}-late"])]
    assert not DurableInstance.objects.filter(pk=f"{uid}-gone").exists()


def test_rolled_back_transaction_sends_nothing(sent, uid):
    with pytest.raises(RuntimeError), transaction.atomic():
        for i in range(3):
            dd.start(progs.effect_then_finish, f"{uid}-{i}", instance_id=f"{uid}-{i}")
        raise RuntimeError("roll back")
    with transaction.atomic():
        dd.start(progs.effect_then_finish, f"{uid}-x", instance_id=f"{uid}-x")
    assert sent == [("one", [f"{uid}-x"])]


def test_batch_size_one_sends_a_message_per_instance(sent, settings, uid):
    settings.DURABLE = {**settings.DURABLE, "BATCH_SIZE": 1}
    with transaction.atomic():
        for i in range(3):
            dd.start(progs.effect_then_finish, f"{uid}-{i}", instance_id=f"{uid}-{i}")
    assert sent == [("one", [f"{uid}-{i}"]) for i in range(3)]


def test_run_batch_claims_the_batch_with_one_statement_and_runs_each(sent, uid):
    ids = [f"{uid}-{i}" for i in range(6)]
    with transaction.atomic():
        for iid in ids:
            dd.start(progs.effect_then_finish, iid, instance_id=iid)
    assert sent == [("batch", ids)]
    sent.clear()
    kinds: list[str] = []
    with _statements(kinds):
        outcomes = worker.run_batch(ids, worker_id="batcher")
    assert outcomes == {iid: Status.COMPLETED for iid in ids}
    qn = connection.ops.quote_name
    claims = [sql for sql in kinds if "UPDATE" in sql and f"{qn('attempts')} = {qn('attempts')} + 1" in sql]
    assert len(claims) == 1 and all(f"'{iid}'" not in claims[0] for iid in ids)  # one parameterized claim
    assert all(dd.result(iid) == 1 for iid in ids)
    assert SideEffect.objects.filter(key__startswith=uid).count() == 6
    rows = DurableInstance.objects.filter(pk__in=ids)
    assert set(rows.values_list("lease_owner", flat=True)) == {""}
    assert set(rows.values_list("attempts", flat=True)) == {0}
    assert sent == []  # nothing handed back


def test_two_workers_racing_for_one_batch_split_it(sent, uid):
    ids = [f"{uid}-{i}" for i in range(5)]
    with transaction.atomic():
        for iid in ids:
            dd.start(progs.effect_then_finish, iid, instance_id=iid)
    first = leases._claim_free(ids[:3], "worker-a")
    assert sorted(r.instance_id for r in first) == ids[:3]
    assert leases._claim_free(ids[:3], "worker-b") == []
    # worker-b is handed the whole batch: the ones worker-a holds are skipped, not run twice.
    out = worker.run_batch(ids, worker_id="worker-b")
    assert out == {**{iid: worker.SKIPPED for iid in ids[:3]}, **{iid: Status.COMPLETED for iid in ids[3:]}}
    assert set(DurableInstance.objects.filter(pk__in=ids[:3]).values_list("lease_owner", flat=True)) == {"worker-a"}


def test_concurrent_claims_of_one_batch_never_overlap(uid):
    import threading

    from django.db import connections

    ids = [f"{uid}-{i}" for i in range(40)]
    with transaction.atomic():
        for iid in ids:
            dd.start(progs.effect_then_finish, iid, instance_id=iid)
    barrier = threading.Barrier(2)
    got: dict[str, list[str]] = {}

    def claim(name: str) -> None:
        try:
            barrier.wait(timeout=10)
            got[name] = [r.instance_id for r in leases._claim_free(ids, name)]
        finally:
            connections.close_all()

    threads = [threading.Thread(target=claim, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(got["a"] + got["b"]) == sorted(ids)  # every instance claimed once, by one of them
    owners = dict(DurableInstance.objects.filter(pk__in=ids).values_list("pk", "lease_owner"))
    assert all(owners[iid] == "a" for iid in got["a"]) and all(owners[iid] == "b" for iid in got["b"])


def test_batch_hands_back_what_it_did_not_start_in_time(sent, settings, uid):
    settings.DURABLE = {**settings.DURABLE, "BATCH_SECONDS": 0.000001}
    ids = [f"{uid}-{i}" for i in range(4)]
    with transaction.atomic():
        for iid in ids:
            dd.start(progs.effect_then_finish, iid, instance_id=iid)
    sent.clear()
    out = worker.run_batch(ids, worker_id="slowpoke")
    assert out == {ids[0]: Status.COMPLETED}
    assert sent == [("batch", ids[1:])]  # another worker may take them now
    rest = DurableInstance.objects.filter(pk__in=ids[1:])
    assert set(rest.values_list("status", "lease_owner", "attempts")) == {(Status.PENDING, "", 0)}


def test_sweep_sends_its_wake_ups_in_batches(sent, settings, uid):
    settings.DURABLE = {**settings.DURABLE, "BATCH_SIZE": 3}
    ids = [f"{uid}-{i}" for i in range(5)]
    with transaction.atomic():
        for iid in ids:
            dd.start(progs.effect_then_finish, iid, instance_id=iid)
    sent.clear()  # as if these wake-ups were lost
    assert sorted(worker.sweep()) == sorted(ids)
    assert sorted(len(batch) for _, batch in sent) == [2, 3]
    assert sorted(iid for _, batch in sent for iid in batch) == sorted(ids)


def test_worker_killed_mid_batch_the_rest_is_picked_up(worker_factory, uid, tmp_path):
    hang = tmp_path / "hang"
    hang.mkdir()
    victim = worker_factory("victim", extra_env={"DURABLE_TEST_HANG_DIR": str(hang)})
    ids = [f"{uid}-{i}" for i in range(4)]
    with transaction.atomic():  # one message for the four
        for iid in ids:
            dd.start(progs.effect_then_finish, iid, instance_id=iid)
    first = wait_until(lambda: next(iter(hang.glob("*.entered")), None), timeout=60,
                       message="the first step of the batch to start")
    victim.kill()  # mid-batch: one step in progress, three claimed and not started
    started = first.name.removesuffix(".entered")
    assert started in ids
    assert SideEffect.objects.filter(key__startswith=uid).count() == 0  # the step's write died with it
    worker_factory("rescuer")
    worker_factory.scheduler()  # the sweep hands them out once the dead worker's lease expires
    wait_until(lambda: DurableInstance.objects.filter(pk__in=ids, status=Status.COMPLETED).count() == 4,
               timeout=90, message="the four instances to complete")
    for iid in ids:
        assert SideEffect.objects.filter(key=iid).count() == 1
        assert dd.result(iid) == 1
    assert [k for k in DurableHistory.objects.filter(instance_id=started).values_list("kind", flat=True)].count(
        "recovered") == 1


def test_two_workers_handed_the_same_batch_run_each_step_once(worker_factory, uid, tmp_path):
    worker_factory("a")
    worker_factory("b")
    ids = [f"{uid}-{i}" for i in range(4)]
    with transaction.atomic():
        for iid in ids:
            dd.start(progs.slow_then_finish, iid, 0.3, str(tmp_path), instance_id=iid)
    from durable_django.wakeups import send_tasks

    send_tasks(ids)  # the same batch handed out once more
    wait_until(lambda: DurableInstance.objects.filter(pk__in=ids, status=Status.COMPLETED).count() == 4,
               timeout=90, message="the four instances to complete")
    for iid in ids:
        assert SideEffect.objects.filter(key=iid).count() == 1
        assert len((tmp_path / f"{iid}.runs").read_text().split()) == 1  # the step body ran once


@pytest.mark.parametrize("bad", [{"BATCH_SIZE": 0}, {"BATCH_SIZE": 2.5}, {"BATCH_SECONDS": 0},
                                 {"PREPARED_STATEMENTS": "yes"}])
def test_system_checks_reject_bad_batching_settings(settings, bad):
    from durable_django.checks import check_settings

    settings.DURABLE = bad
    assert [e.id for e in check_settings()] == ["durable_django.E003"]


def test_system_checks_accept_the_batching_settings(settings):
    from durable_django.checks import check_settings

    settings.DURABLE = {"BATCH_SIZE": 1, "BATCH_SECONDS": 0.5, "PREPARED_STATEMENTS": False}
    assert check_settings() == []


@pytest.mark.parametrize("prepared", [True, False])
def test_runs_with_and_without_prepared_statements(inline, settings, uid, prepared):
    settings.DURABLE = {**settings.DURABLE, "PREPARED_STATEMENTS": prepared}
    dd.start(progs.approval, 3, instance_id=uid)
    assert DurableInstance.objects.get(pk=uid).status == Status.PAUSED
    dd.publish_event(uid, "approved", {"ok": prepared})
    assert dd.result(uid) == {"order": 3, "decision": {"ok": prepared}}
    assert SideEffect.objects.filter(key="approval-3").count() == 1
