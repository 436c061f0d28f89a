"""The public functions, run inline (no Celery): outcomes of good and bad input."""

from __future__ import annotations

import pytest
from asgiref.sync import async_to_sync
from django.utils import timezone

import durable
import durable_django as dd
from durable_django import signals
from durable_django.backend import STATE, DjangoOrchestrationBackend, blob_context, sign, unsign
from durable_django.exceptions import (
    InstanceExists,
    InstanceFinished,
    InvalidPayload,
    UnknownInstance,
    UnknownProgram,
)
from durable_django.models import DurableEvent, DurableHistory, DurableInstance, Status
from durable_django.store import DjangoStateStore
from tests.django.testapp import durable_programs as progs
from tests.django.testapp.models import Order, SideEffect

pytestmark = pytest.mark.django_db(transaction=True)


def kinds(iid: str) -> list[str]:
    return list(DurableHistory.objects.filter(instance_id=iid).order_by("id").values_list("kind", flat=True))


def reload(iid: str) -> DurableInstance:
    return DurableInstance.objects.get(pk=iid)


def test_start_pause_publish_complete(inline, uid):
    seen = []

    def receiver(sender, **kw):
        seen.append((kw["kind"], kw["instance_id"]))

    signals.instance_transition.connect(receiver)
    try:
        inst = dd.start(progs.approval, 7, instance_id=uid)
        row = reload(uid)
        assert row.status == Status.PAUSED and row.waiting_for == "approved" and row.wait_kind == "event"
        assert "wait_for_event('approved')" in row.position
        assert row.lease_owner == "" and row.program == "tests.django.testapp.durable_programs.approval"
        assert SideEffect.objects.filter(key="approval-7").count() == 1
        dd.publish_event(uid, "approved", {"by": "alice"})
        row = reload(uid)
        assert row.status == Status.COMPLETED
        assert row.result == {"order": 7, "decision": {"by": "alice"}}
        assert dd.result(uid) == {"order": 7, "decision": {"by": "alice"}}
        assert row.finished_at is not None and inst.instance_id == uid
        assert kinds(uid) == ["started", "paused", "event_published", "resumed", "completed"]
        assert DurableEvent.objects.get(instance_id=uid).consumed_at is not None
        assert SideEffect.objects.filter(key="approval-7").count() == 1
    finally:
        signals.instance_transition.disconnect(receiver)
    assert [k for k, i in seen if i == uid] == ["started", "paused", "event_published", "resumed", "completed"]


def test_start_is_idempotent_by_instance_id(inline, uid):
    a = dd.start(progs.approval, 1, instance_id=uid)
    b = dd.start(progs.approval, 1, instance_id=uid)
    assert a.pk == b.pk and DurableInstance.objects.filter(pk=uid).count() == 1
    assert kinds(uid).count("started") == 1
    assert SideEffect.objects.filter(key="approval-1").count() == 1
    with pytest.raises(InstanceExists, match="already exists and runs"):
        dd.start(progs.sleeper, 1, instance_id=uid)


def test_start_by_path_and_plain_async_def(inline, uid, settings):
    """Issue 10: a plain async def is refused by default (nothing stored) and runs once PROGRAMS lists it."""
    path = "tests.django.testapp.durable_programs.plain_async"
    with pytest.raises(UnknownProgram, match="not a declared durable program"):
        dd.start(path, 21, instance_id=uid)
    assert not DurableInstance.objects.exists()
    dd.start("tests.django.testapp.durable_programs._double", 21, instance_id=uid + "-declared")
    assert dd.result(uid + "-declared") == 42  # make_durable's assignment form counts as declared
    settings.DURABLE = {**settings.DURABLE, "PROGRAMS": [path]}
    dd.start(path, 21, instance_id=uid)
    assert reload(uid).status == Status.COMPLETED and dd.result(uid) == 42


def test_unknown_and_refused_programs(inline, settings):
    with pytest.raises(UnknownProgram, match="cannot import"):
        dd.start("tests.django.testapp.durable_programs.nope")
    with pytest.raises(UnknownProgram, match="not a make_durable"):
        dd.start("tests.django.testapp.models.Order")

    async def nested():
        return 1

    with pytest.raises(UnknownProgram, match="module level"):
        dd.start(durable.make_durable(nested))
    settings.DURABLE = {**settings.DURABLE, "PROGRAMS": ["tests.django.testapp.durable_programs.sleeper"]}
    with pytest.raises(UnknownProgram, match="not in DURABLE"):
        dd.start(progs.approval, 1)
    assert not DurableInstance.objects.exists()


def test_unpicklable_arguments_are_refused(inline):
    with pytest.raises(InvalidPayload, match="cannot be stored"):
        dd.start(progs.sleeper, (x for x in range(3)))
    assert not DurableInstance.objects.exists()


def test_publish_bad_input(inline, uid):
    with pytest.raises(UnknownInstance, match="no durable instance with id 'missing'"):
        dd.publish_event("missing", "approved")
    dd.start(progs.approval, 2, instance_id=uid)
    with pytest.raises(InvalidPayload, match="JSON-serializable"):
        dd.publish_event(uid, "approved", {"obj": object()})
    with pytest.raises(ValueError, match="non-empty string"):
        dd.publish_event(uid, "")
    assert not DurableEvent.objects.exists() and reload(uid).status == Status.PAUSED
    dd.publish_event(uid, "approved", True)
    assert reload(uid).status == Status.COMPLETED
    with pytest.raises(InstanceFinished, match="it is completed"):
        dd.publish_event(uid, "approved", True)
    assert DurableEvent.objects.count() == 1


def test_duplicate_event_with_idempotency_key_is_stored_once(inline, uid):
    dd.start(progs.two_events, uid, instance_id=uid)
    e1 = dd.publish_event(uid, "first", 1, idempotency_key="k1")
    e2 = dd.publish_event(uid, "first", 99, idempotency_key="k1")
    assert e1.pk == e2.pk and DurableEvent.objects.filter(instance_id=uid).count() == 1
    assert reload(uid).waiting_for == "second"
    dd.publish_event(uid, "second", 2)
    assert dd.result(uid) == [1, 2]


@pytest.mark.parametrize("payload", [None, 0, "text", [1, "a", None], {"k": {"n": None, "f": 1.5}}])
def test_payload_round_trips_and_the_event_row_matches(inline, uid, payload):
    dd.start(progs.two_events, uid, instance_id=uid)
    event = dd.publish_event(uid, "first", payload)
    row = DurableEvent.objects.get(pk=event.pk)
    assert (row.instance_id, row.name, row.payload, row.idempotency_key) == (uid, "first", payload, None)
    assert event.payload == payload and row.consumed_at is not None
    dd.publish_event(uid, "second", "b")
    assert dd.result(uid) == [payload, "b"]
    assert kinds(uid).count("event_published") == 2


def test_publish_in_a_rolled_back_transaction_leaves_nothing(inline, uid):
    from django.db import transaction

    dd.start(progs.two_events, uid, instance_id=uid)
    before = kinds(uid)
    with pytest.raises(RuntimeError), transaction.atomic():
        dd.publish_event(uid, "first", 1)
        raise RuntimeError("the caller's transaction fails")
    assert not DurableEvent.objects.filter(instance_id=uid).exists()
    assert kinds(uid) == before and reload(uid).waiting_for == "first"


def test_event_published_before_the_wait_is_kept(inline, uid):
    dd.start(progs.two_events, uid, instance_id=uid)
    dd.publish_event(uid, "second", "b")  # published before the program waits for it
    assert reload(uid).waiting_for == "first"
    dd.publish_event(uid, "first", "a")
    assert reload(uid).status == Status.COMPLETED and dd.result(uid) == ["a", "b"]
    assert DurableEvent.objects.filter(instance_id=uid, consumed_at__isnull=True).count() == 0


def test_cancel(inline, uid):
    dd.start(progs.approval, 3, instance_id=uid)
    dd.cancel(uid, "customer left")
    row = reload(uid)
    assert row.status == Status.CANCELLED and row.error == "customer left"
    with pytest.raises(InstanceFinished, match="cancelled"):
        dd.publish_event(uid, "approved")
    with pytest.raises(InstanceFinished):
        dd.cancel(uid)
    with pytest.raises(InstanceFinished):
        dd.resume(uid)
    with pytest.raises(durable.InstanceCancelled):
        dd.result(uid)
    with pytest.raises(UnknownInstance):
        dd.cancel("missing")
    assert kinds(uid)[-1] == "cancelled"


def test_failure_is_stored(inline, uid):
    dd.start(progs.failing, "boom", instance_id=uid)
    row = reload(uid)
    assert row.status == Status.FAILED and "ValueError: boom" in row.error
    with pytest.raises(ValueError, match="boom"):
        dd.result(uid)
    assert kinds(uid)[-1] == "failed"


def test_a_step_that_raises_leaves_none_of_its_writes(inline, uid):
    """Caught in the program: the step's writes are rolled back, and the next step and checkpoint commit."""
    orders = Order.objects.count()
    dd.start(progs.catches_a_failed_step, uid, instance_id=uid)
    row = reload(uid)
    assert row.status == Status.COMPLETED and dd.result(uid) is True
    assert not SideEffect.objects.filter(key=f"{uid}-first").exists()
    assert Order.objects.count() == orders
    assert SideEffect.objects.filter(key=f"{uid}-after").count() == 1


def test_a_step_failing_in_the_database_fails_the_instance(inline, uid):
    """Not caught: the instance is failed (not suspended, though PostgreSQL aborted the transaction)."""
    dd.start(progs.fails_in_a_step, uid, instance_id=uid)
    row = reload(uid)
    assert row.status == Status.FAILED and "IntegrityError" in row.error
    assert not SideEffect.objects.filter(key=f"{uid}-first").exists()
    assert kinds(uid)[-1] == "failed"


def test_an_async_orm_call_failing_in_the_database_fails_the_instance(inline, uid):
    order = Order.objects.create()
    dd.start(progs.fails_in_async_orm, order.pk, instance_id=uid)
    row = reload(uid)
    assert row.status == Status.FAILED and "IntegrityError" in row.error


def test_tampered_state_suspends_and_is_never_unpickled(inline, uid):
    dd.start(progs.approval, 4, instance_id=uid)
    good = bytes(reload(uid).state)
    bad = good[:-5] + bytes(b ^ 1 for b in good[-5:])
    DurableInstance.objects.filter(pk=uid).update(state=bad)
    dd.publish_event(uid, "approved", 1)
    row = reload(uid)
    assert row.status == Status.SUSPENDED and "StateTamperedError" in row.error
    assert bytes(row.state) == bad and DurableEvent.objects.get(instance_id=uid).consumed_at is None
    # an operator restores the blob and resumes: nothing was lost
    DurableInstance.objects.filter(pk=uid).update(state=good)
    dd.resume(uid)
    assert reload(uid).status == Status.COMPLETED and dd.result(uid)["decision"] == 1


def _age_layout(uid: str) -> None:
    row = reload(uid)
    context = blob_context(uid, row.program, STATE)
    state = unsign(row.state, context)
    frame = state["stack"].frames[0]
    frame.fingerprint = (frame.fingerprint[0], "0ld1ayout")
    DurableInstance.objects.filter(pk=uid).update(state=sign(state, context))


def test_changed_code_suspends_then_a_registered_migration_resumes(inline, uid):
    dd.start(progs.two_events, uid, instance_id=uid)
    _age_layout(uid)
    dd.publish_event(uid, "first", 1)
    row = reload(uid)
    assert row.status == Status.SUSPENDED and "CodeChangedError" in row.error and "changed its step layout" in row.error
    calls = []

    def migrate(frame):
        calls.append(frame.pc)
        return True  # same positions in the new layout: resume as is

    from durable_django import programs

    dd.register_migration(progs.two_events, migrate)
    try:
        dd.resume(uid)
        assert calls and reload(uid).waiting_for == "second"
        assert "migrated" in kinds(uid) and reload(uid).layout_hash == progs.two_events.compiled.layout_hash
        dd.publish_event(uid, "second", 2)
        assert dd.result(uid) == [1, 2]
    finally:
        programs._migrations.clear()


def test_timer_and_sweep(inline, uid):
    from durable_django import worker

    dd.start(progs.sleeper, 0.3, instance_id=uid)
    row = reload(uid)
    assert row.status == Status.PAUSED and row.wait_kind == "timer" and row.wake_at > timezone.now()
    assert uid not in worker.sweep(dry_run=True)
    from tests.django.conftest import wait_until

    wait_until(lambda: uid in worker.sweep(dry_run=True), timeout=10, message="timer due")
    worker.sweep(inline=True)
    assert reload(uid).status == Status.COMPLETED and dd.result(uid) >= 0.3


def test_wait_with_timeout(inline, uid):
    from durable_django import worker
    from tests.django.conftest import wait_until

    dd.start(progs.wait_with_timeout, 0.2, instance_id=uid)
    assert reload(uid).wake_at is not None
    wait_until(lambda: uid in worker.sweep(inline=True), timeout=10, message="timeout sweep")
    assert dd.result(uid) == "timed out"


def test_binding_publishes_on_model_save(inline, uid):
    order = Order.objects.create(status="new", total=10)
    dd.start(progs.order_process, order.pk, instance_id=uid, link=order)
    order.save()
    assert reload(uid).status == Status.PAUSED
    order.status = "approved"
    order.save()
    assert reload(uid).status == Status.COMPLETED
    order.refresh_from_db()
    assert order.total == 11  # async ORM write in a step, committed with its checkpoint
    order.save()  # once=True (and the instance finished): a second save publishes nothing more
    assert DurableEvent.objects.filter(instance_id=uid).count() == 1
    assert reload(uid).content_object == order


def test_lease_held_by_another_worker_skips(inline, uid, settings):
    from durable_django import worker

    settings.DURABLE = {**settings.DURABLE, "RUN_INLINE": False}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("durable_django.wakeups.send_task", lambda *a, **k: None)
        dd.start(progs.effect_then_finish, uid, instance_id=uid)
    later = timezone.now() + timezone.timedelta(seconds=60)
    DurableInstance.objects.filter(pk=uid).update(lease_owner="other", lease_expires_at=later, status=Status.RUNNING)
    assert worker.run_instance(uid) == worker.SKIPPED
    assert uid not in worker.sweep(dry_run=True)
    # Expired a second ago: SQLite's clock (what the sweep compares with) has only millisecond resolution.
    expired = timezone.now() - timezone.timedelta(seconds=1)
    DurableInstance.objects.filter(pk=uid).update(lease_expires_at=expired)
    assert uid in worker.sweep(dry_run=True)
    assert worker.run_instance(uid) == Status.COMPLETED
    assert "recovered" in kinds(uid) and SideEffect.objects.filter(key=uid).count() == 1


@pytest.mark.parametrize("write", [False, True], ids=["single-statement-checkpoint", "transaction"])
def test_lease_taken_over_during_a_step_keeps_nothing_of_the_step(inline, uid, settings, write):
    from django.db import connection

    from durable_django import worker

    if write and connection.vendor == "sqlite":
        pytest.skip("SQLite: the other worker would wait for the step's write lock (one writer at a time)")
    settings.DURABLE = {**settings.DURABLE, "RUN_INLINE": False}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("durable_django.wakeups.send_task", lambda *a, **k: None)
        dd.start(progs.lease_lost_mid_step, uid, write, instance_id=uid)
    before = reload(uid)
    from contextlib import contextmanager

    from durable_django.db import ops

    cls = type(ops())
    standalone, paths = cls.standalone, []

    @contextmanager
    def spy(self):
        with standalone(self) as committed:
            paths.append(committed)
            yield committed

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cls, "standalone", spy)
        assert worker.run_instance(uid) == worker.LOST
    # on PostgreSQL the checkpoint after a step without database work is one autocommit statement
    assert paths == ([not write] if connection.vendor == "postgresql" else [])
    row = reload(uid)
    assert row.lease_owner == "thief" and row.steps == before.steps and row.state == before.state
    assert not SideEffect.objects.filter(key=uid).exists()
    # the claim showed the instance running (issue 10); nothing else of the lost run was kept
    assert before.status == Status.PENDING and row.status == Status.RUNNING and kinds(uid) == ["started"]


def test_lease_lost_at_a_completion_writes_no_history_and_consumes_no_event(inline, uid, settings):
    from durable_django import worker

    settings.DURABLE = {**settings.DURABLE, "RUN_INLINE": False}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("durable_django.wakeups.send_task", lambda *a, **k: None)
        dd.start(progs.lease_lost_at_completion, uid, instance_id=uid)
        assert worker.run_instance(uid) == Status.PAUSED
        dd.publish_event(uid, "go", 1)
    before, history = reload(uid), kinds(uid)
    assert history == ["started", "paused", "event_published"]
    assert worker.run_instance(uid) == worker.LOST
    row = reload(uid)
    assert row.lease_owner == "thief" and (row.status, row.steps, row.state) == (Status.PAUSED, before.steps,
                                                                                 before.state)
    assert kinds(uid) == history  # neither "resumed" nor "completed"
    assert DurableEvent.objects.get(instance_id=uid, name="go").consumed_at is None


def test_poison_instance_is_suspended_after_max_attempts(inline, uid, settings):
    from durable_django import worker

    settings.DURABLE = {**settings.DURABLE, "RUN_INLINE": False, "MAX_ATTEMPTS": 2}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("durable_django.wakeups.send_task", lambda *a, **k: None)
        dd.start(progs.effect_then_finish, uid, instance_id=uid)
    DurableInstance.objects.filter(pk=uid).update(attempts=2)
    assert worker.run_instance(uid) == worker.SKIPPED
    row = reload(uid)
    assert row.status == Status.SUSPENDED and "MAX_ATTEMPTS" in row.error
    dd.resume(uid, inline=True)
    assert reload(uid).status == Status.COMPLETED


def test_backend_and_store_work_with_the_core_directly(uid):
    backend = DjangoOrchestrationBackend()
    with pytest.raises(durable.PauseForEventException) as info:
        async_to_sync(progs.two_events)(uid, orchestration_backend=backend, instance_id=uid)
    assert info.value.event == "first"
    assert reload(uid).status == Status.PAUSED
    backend.publish_event(uid, "first", "x")
    backend.publish_event(uid, "second", "y")
    assert async_to_sync(progs.two_events)(uid, orchestration_backend=DjangoOrchestrationBackend(),
                                           instance_id=uid) == ["x", "y"]
    store = DjangoStateStore()
    assert store.load_blob(uid) == bytes(reload(uid).state)
    assert store.load_blob("nope") is None
    blob = store.load_blob(uid)
    state = async_to_sync(store.load)(uid)  # the seed's dict contract: the state, verified for its row
    assert state["status"] == "completed" and state["result"] == ["x", "y"]
    assert async_to_sync(store.load)("nope") is None
    store.save_blob(uid, b"abc")
    assert store.update_blob(uid, lambda old: old + b"d") == b"abcd" and store.load_blob(uid) == b"abcd"
    assert uid in set(store.keys())
    store.update_blob(uid, lambda old: blob)
    assert dd.result(uid) == ["x", "y"]  # the restored blob verifies again
    async_to_sync(store.save)(uid, {**state, "result": ["saved", "again"]})  # signed for the row: it verifies
    assert dd.result(uid) == ["saved", "again"]
    store.delete_blob(uid)
    assert store.load_blob(uid) is None and uid not in set(store.keys())
    assert async_to_sync(store.load)(uid) is None
    with pytest.raises(UnknownInstance):
        store.save_blob("nope", b"x")  # rows come from start(), never from the store
    with pytest.raises(UnknownInstance):
        async_to_sync(store.save)("nope", state)


def test_signing_key_rotation(inline, uid, settings):
    dd.start(progs.approval, 5, instance_id=uid)
    old = settings.SECRET_KEY
    settings.SECRET_KEY = "a-brand-new-secret-key-0123456789"
    settings.SECRET_KEY_FALLBACKS = [old]
    dd.publish_event(uid, "approved", 1)
    assert reload(uid).status == Status.COMPLETED


def test_cancel_during_a_step_rolls_the_step_back(inline, uid):
    dd.start(progs.cancelled_mid_step, uid, uid, instance_id=uid)
    row = reload(uid)
    assert row.status == Status.CANCELLED and row.error == "from another connection"
    assert SideEffect.objects.filter(key=uid).count() == 0  # the step's write went with its refused checkpoint
    assert row.state is None  # no checkpoint was ever kept


def test_start_inside_a_step_is_scheduled_after_the_checkpoint(inline, uid):
    dd.start(progs.parent, uid + "-child", instance_id=uid)
    assert reload(uid).status == Status.COMPLETED
    assert reload(uid + "-child").status == Status.COMPLETED and dd.result(uid + "-child") == 10


def test_autocommit_steps_mode(inline, uid, settings):
    """ATOMIC_STEPS=False: writes commit on their own (at-least-once), events still consumed with the checkpoint."""
    settings.DURABLE = {**settings.DURABLE, "ATOMIC_STEPS": False}
    dd.start(progs.effect_then_wait, uid, instance_id=uid)
    assert SideEffect.objects.filter(key=uid).count() == 1
    dd.publish_event(uid, "go", "x")
    assert dd.result(uid) == "x"
    assert DurableEvent.objects.get(instance_id=uid).consumed_at is not None


def test_sweep_recovers_lost_wake_ups(uid):
    """A wake-up message that never arrived (broker down, worker died holding it) is re-sent by the sweep."""
    from durable_django import worker

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("durable_django.wakeups.send_task", lambda *a, **k: None)  # every message is lost
        dd.start(progs.approval, 14, instance_id=uid)
        assert worker.due_instances() == [uid]  # pending, nobody took it
        assert worker.sweep(inline=True) == [uid]
        assert reload(uid).status == Status.PAUSED and worker.due_instances() == []
        dd.publish_event(uid, "approved", "late")
        dd.publish_event(uid, "unrelated", 1)
        assert worker.due_instances() == [uid]  # the pending event is found, once
    worker.sweep(inline=True)
    assert dd.result(uid)["decision"] == "late" and worker.due_instances() == []


def test_heartbeat_keeps_the_lease_of_a_step_longer_than_the_lease(uid, settings):
    import threading
    import time

    from durable_django import worker

    lease = settings.DURABLE["LEASE_SECONDS"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("durable_django.wakeups.send_task", lambda *a, **k: None)
        dd.start(progs.long_step, uid, lease * 1.7, instance_id=uid)
    outcome = []

    def run():  # another "worker" thread, with its own connection (closed at the end)
        from django.db import connection

        try:
            outcome.append(worker.run_instance(uid))
        finally:
            connection.close()

    runner = threading.Thread(target=run)
    runner.start()
    try:
        from tests.django.conftest import wait_until

        wait_until(lambda: reload(uid).lease_owner, timeout=10, message="the claim")
        deadline = time.monotonic() + lease * 1.3
        while time.monotonic() < deadline:  # past the original lease: still owned, never handed out
            assert uid not in worker.due_instances()
            time.sleep(0.1)
        assert reload(uid).lease_expires_at > timezone.now()
    finally:
        runner.join(timeout=60)
    assert outcome == [Status.COMPLETED] and SideEffect.objects.filter(key=uid).count() == 1
    assert "recovered" not in kinds(uid)
