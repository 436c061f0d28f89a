"""durable_django.testing: inline runs, a fake clock that fires timers at once, history assertions.

The helpers themselves, in the three ways a project uses them: the
``durable_env`` pytest fixture (plain and transactional tests) and
``DurableTestMixin`` in a Django ``TestCase``.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest
from django.db import connection
from django.test import TestCase, TransactionTestCase
from django.test.utils import CaptureQueriesContext

import durable_django as dd
from durable import EventTimeout, make_durable, sleep, wait_for_event
from durable_django import clock
from durable_django.models import Status
from durable_django.testing import DurableTestEnv, DurableTestMixin
from tests.django.testapp.durable_programs import write_effect
from tests.django.testapp.models import SideEffect

HOUR = 3600


@make_durable
async def reminders(key: str, count: int):
    """Writes a row after each hour, ``count`` times."""
    for i in range(count):
        await sleep(HOUR)
        await write_effect(key, f"reminder {i}")
    return count


@make_durable
async def review(key: str):
    """Waits a day for a review, then escalates and waits without a deadline."""
    try:
        verdict = await wait_for_event("review", timeout=24 * HOUR)
    except EventTimeout:
        await write_effect(key, "escalated")
        verdict = await wait_for_event("review")
    await write_effect(key, f"verdict {verdict}")
    return verdict


@make_durable
async def thirds(key: str):
    """Due times that are no whole number of microseconds."""
    for i in range(3):
        await sleep(1 / 3)
        await write_effect(key, f"third {i}")


def notes(key: str) -> list[str]:
    return list(SideEffect.objects.filter(key=key).order_by("id").values_list("note", flat=True))


# -- the pytest fixture ----------------------------------------------------------------------
def test_timers_fire_on_advance_without_waiting(durable_env):
    inst = durable_env.start(reminders, "r", 3, instance_id="r")
    assert inst.status == Status.PAUSED and inst.wait_kind == "timer"
    assert inst.wake_at.timestamp() == durable_env.clock.time() + HOUR

    t0 = time.monotonic()
    assert durable_env.advance(HOUR - 1) == [] and notes("r") == []  # not due yet: nothing ran
    assert durable_env.advance(HOUR + 1) == ["r", "r"]  # two timers fall due on the way, each fires
    assert notes("r") == ["reminder 0", "reminder 1"]
    durable_env.assert_waiting("r", timer=True)
    durable_env.advance(HOUR)
    assert durable_env.assert_completed("r", 3) == 3 and notes("r") == ["reminder 0", "reminder 1", "reminder 2"]
    assert time.monotonic() - t0 < 30  # three hours of timers, no real waiting


def test_timers_with_fractional_due_times_fire(durable_env):
    durable_env.start(thirds, "t", instance_id="t")
    durable_env.advance(0.34)
    assert notes("t") == ["third 0"]
    durable_env.advance(0.67)  # the database keeps microseconds: a due time is exact to one of them
    assert notes("t") == ["third 0", "third 1", "third 2"] and durable_env.status("t") == Status.COMPLETED


def test_publish_continues_to_the_next_pause(durable_env):
    durable_env.start(review, "v", instance_id="v")
    durable_env.assert_waiting("v", "review")
    inst = durable_env.publish("v", "review", "ok")
    assert inst.status == Status.COMPLETED and durable_env.result("v") == "ok"
    assert notes("v") == ["verdict ok"]
    durable_env.assert_history("v", ["started", ("paused", "event 'review' until"), ("event_published", "review"),
                                     "resumed", "completed"])


def test_an_event_published_early_is_kept_and_pending_until_consumed(durable_env):
    durable_env.start(reminders, "r", 1, instance_id="r")
    durable_env.publish("r", "unrelated", {"n": 1})
    assert durable_env.pending_events("r") == [("unrelated", {"n": 1})]
    durable_env.assert_waiting("r", timer=True)


def test_an_event_timeout_fires_on_advance(durable_env):
    durable_env.start(review, "v", instance_id="v")
    durable_env.advance(24 * HOUR - 1)
    assert notes("v") == []
    durable_env.advance(1)
    assert notes("v") == ["escalated"]
    durable_env.assert_waiting("v", "review")
    assert durable_env.instance("v").wake_at is None
    durable_env.publish("v", "review", "late")
    assert notes("v") == ["escalated", "verdict late"]


def test_the_fake_clock_is_the_apps_clock(durable_env):
    durable_env.clock.set(datetime(2031, 5, 1, 12, tzinfo=UTC))
    assert clock.now() == datetime(2031, 5, 1, 12, tzinfo=UTC) and clock.time() == durable_env.clock.time()
    durable_env.start(reminders, "r", 1, instance_id="r")
    assert durable_env.instance("r").wake_at == datetime(2031, 5, 1, 13, tzinfo=UTC)
    with CaptureQueriesContext(connection) as queries:
        clock.sync(force=True)  # the database's clock is not read while a test's clock is installed
    assert len(queries) == 0


def test_assert_history_fails_with_a_clear_message(durable_env):
    durable_env.start(review, "v", instance_id="v")
    with pytest.raises(AssertionError) as failure:
        durable_env.assert_history("v", ["started", "completed"])
    message = str(failure.value)
    assert message.startswith("history of 'v': entry 1: expected 'completed', got \"paused (event 'review' until ")
    assert "actual history:\n  0: started\n  1: paused (event 'review' until " in message
    with pytest.raises(AssertionError, match="entry 2: expected 'resumed', but the history ends after 2 entries"):
        durable_env.assert_history("v", ["started", "paused", "resumed"])
    with pytest.raises(AssertionError, match="expected 'paused' with detail containing 'timer'"):
        durable_env.assert_history("v", ["started", ("paused", "timer")])


def test_assertions_say_where_the_instance_stands(durable_env):
    durable_env.start(review, "v", instance_id="v")
    with pytest.raises(AssertionError, match="should wait for a timer, but it is paused, waiting for event 'review'"):
        durable_env.assert_waiting("v", timer=True)
    with pytest.raises(AssertionError, match="should wait for event 'other', but it is paused, waiting for event"):
        durable_env.assert_waiting("v", "other")
    with pytest.raises(AssertionError, match="should have completed, but it is paused, waiting for event 'review'"):
        durable_env.assert_completed("v")
    durable_env.cancel("v", "not needed")
    with pytest.raises(AssertionError, match="should be paused, but it is cancelled: not needed"):
        durable_env.assert_status("v", Status.PAUSED)
    durable_env.start(reminders, "r", 1, instance_id="r")
    with pytest.raises(AssertionError, match=r"should wait for an event, but it is paused, sleeping until 20\d\d-"):
        durable_env.assert_waiting("r")
    durable_env.advance(HOUR)
    with pytest.raises(AssertionError, match="completed with 1, expected 2"):
        durable_env.assert_completed("r", 2)


def test_cancel_and_the_transition_signals(durable_env):
    durable_env.start(reminders, "r", 2, instance_id="r")
    durable_env.cancel("r", "no longer needed")
    assert durable_env.advance(10 * HOUR) == [] and notes("r") == []
    # the cancel is raised at the timer the program sleeps on (it has no cleanup), then it ends cancelled
    assert [t.kind for t in durable_env.transitions] == ["started", "paused", "cancel_requested", "resumed",
                                                         "cancelled"]
    durable_env.assert_history("r", ["started", "paused", ("cancel_requested", "no longer needed"), "resumed",
                                     ("cancelled", "no longer needed")])


@pytest.mark.django_db(transaction=True)
def test_the_fixture_in_a_transactional_test(durable_env):
    """Commits happen: instances run when a transaction commits, e.g. after dd.publish_event from a view."""
    durable_env.start(review, "v", instance_id="v")
    dd.publish_event("v", "review", "committed")  # no eagerly() needed: the commit runs it
    assert durable_env.assert_completed("v") == "committed"
    assert notes("v") == ["verdict committed"]


def test_settings_inside_the_environment(settings):
    settings.DURABLE = {**settings.DURABLE, "RUN_INLINE": False}
    with DurableTestEnv(start=0) as env:
        assert settings.DURABLE["RUN_INLINE"] is True and settings.DURABLE["HEARTBEAT"] is False
        assert clock.time() == 0 == env.clock.time()
    assert settings.DURABLE["RUN_INLINE"] is False and clock.time() > 0


def test_an_inactive_environment_says_how_to_use_it(db):
    with pytest.raises(RuntimeError, match="DurableTestEnv is not active"):
        DurableTestEnv().advance(1)


def test_clock_override_nests_and_restores():
    with clock.override(100.0):
        assert clock.time() == 100.0
        with clock.override(datetime(1970, 1, 1, 0, 10)):  # naive means UTC
            assert clock.time() == 600.0
        assert clock.time() == 100.0
    assert abs(clock.time() - time.time()) < 3600


# -- the TestCase mixin ----------------------------------------------------------------------
class MixinTests(DurableTestMixin, TestCase):
    durable_start = datetime(2030, 1, 1, tzinfo=UTC)

    def test_runs_inside_the_test_transaction(self):
        inst = self.durable.start(reminders, "m", 2, instance_id="m")
        self.assertEqual(inst.wake_at, datetime(2030, 1, 1, 1, tzinfo=UTC))
        self.assertEqual(self.durable.advance(2 * HOUR), ["m", "m"])
        self.assertEqual(self.durable.assert_completed("m"), 2)
        self.assertEqual(notes("m"), ["reminder 0", "reminder 1"])

    def test_eagerly_runs_what_other_code_wakes(self):
        self.durable.start(review, "v", instance_id="v")
        dd.publish_event("v", "review", "too early")  # in a TestCase nothing commits: the wake-up waits
        self.durable.assert_waiting("v", "review")
        with self.durable.eagerly():
            dd.publish_event("v", "review", "yes")
        self.assertEqual(self.durable.result("v"), "too early")  # the first event in the inbox is consumed

    def test_nested_eagerly_runs_each_wake_up_once(self):
        with self.durable.eagerly():
            self.durable.start(review, "n", instance_id="n")
            self.durable.assert_waiting("n", "review")  # start() ran it at once, inside the outer block too
            self.durable.publish("n", "review", "ok")
        self.durable.assert_completed("n", "ok")
        started = [t for t in self.durable.transitions if t.kind == "started"]
        self.assertEqual(len(started), 1)

    def test_settle_runs_what_is_runnable(self):
        self.durable.start(review, "v", instance_id="v")
        dd.publish_event("v", "review", "later")
        self.assertEqual(self.durable.settle(), ["v"])
        self.durable.assert_completed("v", "later")


class MixinTransactionTests(DurableTestMixin, TransactionTestCase):
    def test_commits_run_instances_at_once(self):
        self.durable.start(review, "t", instance_id="t")
        dd.publish_event("t", "review", "done")  # autocommit: the wake-up runs it right away
        self.durable.assert_completed("t", "done")
        self.assertEqual(notes("t"), ["verdict done"])
