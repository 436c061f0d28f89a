"""durable.testing: run a program to its next pause, publish and continue, fire timers at once, assert history."""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest

from durable import CheckpointException, EventTimeout, gather, make_durable, sleep, start_child, wait_for_event
from durable.testing import DurableTestEnv, FakeClock, HistoryEntry

effects: list = []
DAY = 24 * 3600


@pytest.fixture(autouse=True)
def _clear_effects():
    effects.clear()


@make_durable
async def approval(amount: int):
    effects.append(("submitted", amount))
    decision = await wait_for_event("decision")
    if decision != "approve":
        effects.append("rejected")
        return "rejected"
    try:
        await wait_for_event("paid", timeout=DAY)
    except EventTimeout:
        effects.append("reminder")
        await wait_for_event("paid")
    effects.append("done")
    return "paid"


@make_durable
async def ticker(n: int):
    for i in range(n):
        await sleep(60)
        effects.append(("tick", i))
    return n


@make_durable
async def broken():
    await sleep(1)
    raise ValueError("no such account")


@make_durable
async def keeps_a_lock():
    lock = threading.Lock()
    await sleep(1)
    return lock


def test_run_to_next_pause_then_publish_and_continue():
    env = DurableTestEnv()
    snap = env.start(approval, 120, instance_id="e1")
    assert (snap.status, snap.wait_kind, snap.waiting_for) == ("paused", "event", "decision")
    assert effects == [("submitted", 120)]

    snap = env.publish("e1", "decision", "approve")
    assert snap.waiting_for == "paid" and snap.due == pytest.approx(env.clock.time() + DAY)
    snap = env.publish("e1", "paid")
    assert snap.completed and snap.result == "paid"
    assert effects == [("submitted", 120), "done"]
    assert env.result("e1") == "paid"


def test_a_run_whose_wait_is_not_over_runs_nothing():
    env = DurableTestEnv()
    env.start(approval, 1, instance_id="e1")
    assert env.run("e1").waiting_for == "decision"
    env.publish("e1", "other-event")  # not what it waits for: kept in the inbox, nothing runs
    assert effects == [("submitted", 1)] and env.pending_events("e1") == [("other-event", None)]
    env.assert_history("e1", ["started", "paused", ("event_published", "other-event")])


def test_an_event_published_before_the_wait_is_kept():
    env = DurableTestEnv()
    env.start(approval, 1, instance_id="e1")
    env.publish("e1", "decision", "approve")
    env.backend.publish_event("e1", "paid")  # published directly, while nothing runs
    assert env.run("e1").completed


def test_timers_fire_on_advance_without_waiting():
    env = DurableTestEnv(start=datetime(2030, 1, 1, tzinfo=UTC))
    env.start(ticker, 3, instance_id="t")
    env.assert_waiting("t", timer=True)
    assert env.snapshot("t").due == datetime(2030, 1, 1, 0, 1, tzinfo=UTC).timestamp()

    t0 = time.monotonic()
    assert env.advance(59) == [] and effects == []  # not due yet: nothing runs
    runs = env.advance(timedelta(minutes=1, seconds=2))  # the first two timers fall due on the way, in order
    assert [s.status for s in runs] == ["paused", "paused"] and effects == [("tick", 0), ("tick", 1)]
    assert env.clock.now() == datetime(2030, 1, 1, 0, 2, 1, tzinfo=UTC)
    assert env.advance(60)[-1].completed and env.result("t") == 3
    assert time.monotonic() - t0 < 5  # three minutes of timers, no real waiting


def test_an_event_timeout_fires_on_advance():
    env = DurableTestEnv()
    env.start(approval, 1, instance_id="e1")
    env.publish("e1", "decision", "approve")
    env.advance(DAY - 1)
    assert "reminder" not in effects and env.waiting_for("e1") == "paid"
    env.advance(1)
    assert effects[-1] == "reminder"
    snap = env.assert_waiting("e1", "paid")
    assert snap.due is None  # the second wait has no timeout


def test_history_records_each_transition():
    env = DurableTestEnv(start=0)
    env.start(ticker, 1, instance_id="t")
    env.advance(60)
    assert env.history("t") == [HistoryEntry("started"),
                                HistoryEntry("paused", "timer until 1970-01-01T00:01:00+00:00"),
                                HistoryEntry("resumed"), HistoryEntry("completed")]
    env.assert_history("t", ["started", ("paused", "timer until 1970-01-01T00:01"), "resumed", "completed"])


def test_assert_history_fails_with_a_clear_message():
    env = DurableTestEnv()
    env.start(approval, 1, instance_id="e1")
    with pytest.raises(AssertionError) as wrong_kind:
        env.assert_history("e1", ["started", "completed"])
    message = str(wrong_kind.value)
    assert "entry 1: expected 'completed', got \"paused (event 'decision')\"" in message
    assert "actual history:\n  0: started\n  1: paused (event 'decision')" in message

    with pytest.raises(AssertionError, match="entry 1: expected 'paused' with detail containing 'timer'"):
        env.assert_history("e1", ["started", ("paused", "timer")])
    with pytest.raises(AssertionError, match="entry 2: expected 'resumed', but the history ends after 2 entries"):
        env.assert_history("e1", ["started", "paused", "resumed"])
    with pytest.raises(AssertionError, match="1 more entries than expected, from entry 1: \"paused"):
        env.assert_history("e1", ["started"])


def test_assert_waiting_and_assert_completed_say_where_the_instance_stands():
    env = DurableTestEnv()
    env.start(approval, 1, instance_id="e1")
    with pytest.raises(AssertionError, match="should wait for event 'paid', but it waits for event 'decision'"):
        env.assert_waiting("e1", "paid")
    with pytest.raises(AssertionError, match="should wait for a timer, but it waits for event 'decision'"):
        env.assert_waiting("e1", timer=True)
    with pytest.raises(AssertionError, match="should have completed, but it is paused, waiting for event 'decision'"):
        env.assert_completed("e1")
    env.publish("e1", "decision", "reject")
    assert env.assert_completed("e1", "rejected") == "rejected"
    with pytest.raises(AssertionError, match="completed with 'rejected', expected 'paid'"):
        env.assert_completed("e1", "paid")
    with pytest.raises(AssertionError, match="should wait for an event, but it is completed"):
        env.assert_waiting("e1")


def test_a_failing_program_fails_its_instance():
    env = DurableTestEnv()
    env.start(broken, instance_id="b")
    snap = env.advance(1)[0]
    assert snap.failed and isinstance(snap.error, ValueError)
    with pytest.raises(ValueError, match="no such account"):
        env.result("b")
    env.assert_history("b", ["started", "paused", "resumed", ("failed", "ValueError: no such account")])
    with pytest.raises(AssertionError, match="it is failed: ValueError: no such account"):
        env.assert_completed("b")


def test_cancel_stops_the_instance():
    env = DurableTestEnv()
    env.start(ticker, 5, instance_id="t")
    assert env.cancel("t").status == "cancelled"
    assert env.advance(3600) == [] and effects == []
    assert env.run("t").status == "cancelled"
    env.assert_history("t", ["started", "paused", "cancelled"])
    with pytest.raises(ValueError, match="cannot be cancelled: it is cancelled"):
        env.cancel("t")


def test_state_goes_through_the_real_checkpoint():
    """A local that cannot be pickled fails the test, as it would fail in production."""
    env = DurableTestEnv()
    with pytest.raises(CheckpointException, match="local variable 'lock'"):
        env.start(keeps_a_lock, instance_id="k")


def test_unknown_instances_and_duplicate_ids_are_refused():
    env = DurableTestEnv()
    with pytest.raises(KeyError, match="no instance 'nope' was started in this environment"):
        env.publish("nope", "x")
    env.start(ticker, 1, instance_id="t")
    with pytest.raises(ValueError, match="already started"):
        env.start(ticker, 1, instance_id="t")


def test_async_twins_in_a_running_loop():
    async def scenario():
        env = DurableTestEnv()
        await env.astart(approval, 5, instance_id="e1")
        with pytest.raises(RuntimeError, match="await the a-prefixed twin"):
            env.publish("e1", "decision", "approve")
        await env.apublish("e1", "decision", "approve")
        await env.aadvance(DAY)
        return await env.apublish("e1", "paid")

    assert asyncio.run(scenario()).result == "paid"
    assert effects == [("submitted", 5), "reminder", "done"]


async def hello(name):
    await sleep(5)
    return f"hello {name}"


def test_a_plain_async_def_can_be_started():
    env = DurableTestEnv()
    env.start(hello, "ada", instance_id="h")
    env.advance(5)
    assert env.result("h") == "hello ada"


def test_fake_clock():
    clock = FakeClock(100)
    assert clock() == clock.time() == 100.0
    assert clock.advance(timedelta(seconds=5)) == 105.0
    clock.set(datetime(1970, 1, 1, 0, 2))  # naive means UTC
    assert clock.now() == datetime(1970, 1, 1, 0, 2, tzinfo=UTC)
    with pytest.raises(ValueError, match="cannot go back"):
        clock.set(0)
    with pytest.raises(ValueError, match="only moves forward"):
        clock.advance(-1)
    assert FakeClock().time() == int(FakeClock().time())  # whole seconds: sums of durations stay exact


async def _approval(who):
    return await wait_for_event(who)


@make_durable
async def _kid(n):
    await sleep(60)
    return n * 2


@make_durable
async def _parallel_expense():
    manager, finance = await gather(_approval("manager"), _approval("finance"))
    child = await start_child(_kid, 5)
    return manager, finance, await child


def test_parallel_waits_and_children_in_the_env():
    env = DurableTestEnv()
    snap = env.start(_parallel_expense, instance_id="px")
    assert snap.wait_kind == "branches"
    assert [(w["event"], w["branch"]) for w in snap.waits] == [("manager", "0.0"), ("finance", "0.1")]
    env.assert_waiting("px", "finance")
    env.assert_waiting("px", "manager")
    snap = env.publish("px", "manager", "yes")
    assert [w["event"] for w in snap.waits] == ["finance"]
    with pytest.raises(AssertionError, match="event 'finance' \\(branch 0.1\\)"):
        env.assert_waiting("px", "manager")
    snap = env.publish("px", "finance", "ok")
    assert snap.wait_kind == "child" and snap.waits[0]["child"] == "px/child-0"
    env.advance(60)  # the child's timer; its end runs the parent, as a host would
    assert env.assert_completed("px") == ("yes", "ok", 10)
    assert env.result("px/child-0") == 10
    assert ("paused", "event 'manager' (branch 0.0); event 'finance' (branch 0.1)") in [
        (h.kind, h.detail) for h in env.history("px")]
