"""Cancellation (issue 13): raised inside the program at its current await, so except/finally run.

``record`` is a leaf step (``durable.step``): cancellation (and deadlines, see test_deadlines.py) are checked
before leaf awaits. ``LOG`` is the outside world.
"""

from __future__ import annotations

import asyncio
import threading

import pytest

import durable
from durable import (
    DurableBackend,
    DurableError,
    InMemoryStateStore,
    InstanceCancelled,
    PauseForEventException,
    make_durable,
    wait_for_event,
)

from .difftools import Clock

T0 = 1_800_000_000.0
LOG: list = []
SHARED: dict = {}


@pytest.fixture(autouse=True)
def _clean():
    LOG.clear()
    SHARED.clear()
    yield
    LOG.clear()
    SHARED.clear()


async def _record(what, value=None):
    LOG.append(what if value is None else (what, value))
    return value


record = durable.step(_record)


def new_backend():
    return DurableBackend(InMemoryStateStore())


async def status(backend, iid):
    return (await backend.load_state(iid))["status"]


# -- cancelling a paused instance -------------------------------------------------------------------------------

async def inner():
    try:
        await record("inner-start")
        return await wait_for_event("never")
    finally:
        await record("inner-cleanup")


@make_durable
async def outer():
    try:
        return await inner()
    finally:
        await record("outer-cleanup")


async def test_cancel_runs_every_finally_innermost_first_and_ends_cancelled():
    backend = new_backend()
    with pytest.raises(PauseForEventException):
        await outer(orchestration_backend=backend, instance_id="o")
    with pytest.raises(InstanceCancelled, match="user asked"):
        await outer.cancel("o", orchestration_backend=backend, reason="user asked")
    assert LOG == ["inner-start", "inner-cleanup", "outer-cleanup"]
    assert await status(backend, "o") == "cancelled"
    # a cancelled instance runs nothing again, with any backend object
    for b in (backend, DurableBackend(backend.store)):
        with pytest.raises(InstanceCancelled):
            await outer(orchestration_backend=b, instance_id="o")
    assert len(LOG) == 3


@make_durable
async def compensates():
    await record("reserve")
    try:
        await wait_for_event("paid")
    except InstanceCancelled as e:
        await record("release", str(e))
        raise
    return "paid"


async def test_program_catches_the_cancellation_runs_a_compensation_and_reraises():
    backend = new_backend()
    with pytest.raises(PauseForEventException):
        await compensates(orchestration_backend=backend, instance_id="c")
    with pytest.raises(InstanceCancelled):
        await compensates.cancel("c", orchestration_backend=DurableBackend(backend.store), reason="out of stock")
    assert LOG == ["reserve", ("release", "out of stock")]
    assert await status(backend, "c") == "cancelled"


@make_durable
async def swallows():
    try:
        await wait_for_event("x")
    except InstanceCancelled:
        await record("swallowed")
    return "finished anyway"


async def test_a_program_that_swallows_the_cancellation_is_not_cancelled():
    backend = new_backend()
    with pytest.raises(PauseForEventException):
        await swallows(orchestration_backend=backend, instance_id="s")
    try:
        await swallows.cancel("s", orchestration_backend=backend)
    except InstanceCancelled:
        pytest.fail("the program caught the cancellation and completed")
    state = await backend.load_state("s")
    assert (state["status"], state["result"]) == ("completed", "finished anyway")
    assert LOG == ["swallowed"]


@make_durable
async def slow_cleanup():
    try:
        await wait_for_event("work")
    finally:
        await record("cleanup-start")
        await wait_for_event("cleanup-done")
        await record("cleanup-end")


async def _cancel_into_paused_cleanup(backend):
    with pytest.raises(PauseForEventException):
        await slow_cleanup(orchestration_backend=backend, instance_id="p")
    with pytest.raises(PauseForEventException) as p:
        await slow_cleanup.cancel("p", orchestration_backend=backend, reason="stop")
    assert p.value.event == "cleanup-done"
    state = await backend.load_state("p")
    assert state["status"] == "paused" and state["cancel"] == "stop"
    assert LOG == ["cleanup-start"]


async def test_cleanup_that_pauses_finishes_when_its_event_comes_and_ends_cancelled():
    backend = new_backend()
    await _cancel_into_paused_cleanup(backend)
    backend.publish_event("p", "cleanup-done")
    with pytest.raises(InstanceCancelled):
        await slow_cleanup(orchestration_backend=backend, instance_id="p")
    assert LOG == ["cleanup-start", "cleanup-end"]
    assert await status(backend, "p") == "cancelled"


async def test_a_second_cancel_forces_a_paused_cleanup_and_runs_nothing():
    backend = new_backend()
    await _cancel_into_paused_cleanup(backend)
    backend.publish_event("p", "cleanup-done")  # even with its event there, the forced instance runs nothing
    with pytest.raises(InstanceCancelled):
        await slow_cleanup.cancel("p", orchestration_backend=backend, reason="now")
    assert LOG == ["cleanup-start"]
    assert await status(backend, "p") == "cancelled"


async def test_force_cancel_runs_no_cleanup():
    backend = new_backend()
    with pytest.raises(PauseForEventException):
        await slow_cleanup(orchestration_backend=backend, instance_id="f")
    with pytest.raises(InstanceCancelled):
        await slow_cleanup.cancel("f", orchestration_backend=backend, force=True)
    assert LOG == []
    assert await status(backend, "f") == "cancelled"


# -- request_cancel while running -------------------------------------------------------------------------------

async def _asks_cancel():
    LOG.append("asked")
    SHARED["runtime"].request_cancel("from inside")
    return "step result"


def asks_cancel():
    """A leaf step (a plain def returning an awaitable) that cancels its own instance while it runs."""
    return _asks_cancel()


@make_durable
async def cancelled_mid_step():
    await record("a")
    try:
        got = await asks_cancel()  # the step completes; the cancellation is raised at the next await
        await record("b", got)
    finally:
        await record("cleanup")
    await record("after")


async def test_request_cancel_during_a_step_raises_at_the_next_await():
    backend = new_backend()
    rt = cancelled_mid_step.runtime(backend, "m")
    SHARED["runtime"] = rt
    with pytest.raises(InstanceCancelled, match="from inside"):
        await rt.run(cancelled_mid_step)
    assert LOG == ["a", "asked", "cleanup"]
    assert await status(backend, "m") == "cancelled"


async def _waits_for_flag():
    SHARED["started"].set()
    for _ in range(500):  # a step that takes a while; it is not interrupted
        if SHARED["stop"].is_set():
            break
        await asyncio.sleep(0.01)
    LOG.append("step-done")


def long_step():
    return _waits_for_flag()


@make_durable
async def cancelled_from_another_thread():
    try:
        await long_step()
        await record("next")
    finally:
        await record("cleanup")


async def test_request_cancel_from_another_thread():
    SHARED.update(started=threading.Event(), stop=threading.Event())
    backend = new_backend()
    rt = cancelled_from_another_thread.runtime(backend, "t")

    def canceller():
        assert SHARED["started"].wait(10)
        rt.request_cancel("operator")
        SHARED["stop"].set()

    thread = threading.Thread(target=canceller)
    thread.start()
    try:
        with pytest.raises(InstanceCancelled):
            await rt.run(cancelled_from_another_thread)
    finally:
        SHARED["stop"].set()
        thread.join(10)
    assert LOG == ["step-done", "cleanup"]


@make_durable
async def short():
    await record("one")
    return "done"


@make_durable
async def broken():
    await record("one")
    raise ValueError("broken")


async def test_cancelling_a_finished_instance_is_a_clear_error():
    backend = new_backend()
    assert await short(orchestration_backend=backend, instance_id="done") == "done"
    with pytest.raises(ValueError):
        await broken(orchestration_backend=backend, instance_id="failed")
    for program, iid, word in [(short, "done", "completed"), (broken, "failed", "failed")]:
        with pytest.raises(DurableError) as e:
            await program.cancel(iid, orchestration_backend=backend)
        assert not isinstance(e.value, InstanceCancelled), e.value
        assert word in str(e.value) and iid in str(e.value)
        assert await status(backend, iid) == word
    assert LOG == ["one", "one"]




class Crash(BaseException):
    """A simulated process death."""


@make_durable
async def two_steps_then_wait():
    try:
        await record("one")
        await record("two")
        return await wait_for_event("never")
    finally:
        await record("cleanup")


async def test_cancel_an_instance_whose_process_died_while_it_ran():
    """A crash right after checkpoint 1 leaves it 'running'; cancel raises at its current await."""
    backend = new_backend()

    def die(_iid, steps):
        if steps == 1:
            raise Crash()

    with pytest.raises(Crash):
        await two_steps_then_wait.runtime(backend, "x", on_checkpoint=die).run(two_steps_then_wait)
    assert await status(backend, "x") == "running"
    with pytest.raises(InstanceCancelled):
        await two_steps_then_wait.cancel("x", orchestration_backend=DurableBackend(backend.store), reason="dead")
    assert LOG == ["one", "cleanup"]  # "two" never ran: the cancellation came first
    assert await status(backend, "x") == "cancelled"


# -- interruptions while a step is being retried -----------------------------------------------------------------

async def _cancels_then_fails():
    LOG.append("attempt")
    if len(LOG) == 1:
        SHARED["runtime"].request_cancel("stop retrying")
    raise ConnectionError("down")


cancels_now = durable.step(_cancels_then_fails, retry=durable.RetryPolicy(max_attempts=3, initial_interval=0.0))
cancels_later = durable.step(_cancels_then_fails, retry=durable.RetryPolicy(max_attempts=3, initial_interval=5.0,
                                                                               jitter=0.0))


@make_durable
async def retried_then_cancelled(later):
    try:
        if later:
            await cancels_later()
        else:
            await cancels_now()
    finally:
        await record("cleanup")


async def test_cancel_requested_during_a_failing_attempt_stops_immediate_retries():
    backend = new_backend()
    SHARED["runtime"] = rt = retried_then_cancelled.runtime(backend, "c0", clock=Clock(T0))
    with pytest.raises(InstanceCancelled):
        await rt.run(retried_then_cancelled, (False,), {})
    assert LOG == ["attempt", "cleanup"]


async def test_cancel_requested_during_a_failing_attempt_is_not_lost_in_the_backoff():
    backend = new_backend()
    SHARED["runtime"] = rt = retried_then_cancelled.runtime(backend, "c5", clock=Clock(T0))
    with pytest.raises(InstanceCancelled):
        await rt.run(retried_then_cancelled, (True,), {})
    assert LOG == ["attempt", "cleanup"]
    assert await status(backend, "c5") == "cancelled"


@make_durable
async def cancelled_in_backoff():
    try:
        await cancels_later()
    except durable.InstanceCancelled:
        await record("compensate")
        raise


async def test_cancel_while_a_step_backs_off_raises_at_the_steps_await_and_runs_no_more_attempts():
    backend = new_backend()
    clock = Clock(T0)
    SHARED["runtime"] = _NoCancel()
    with pytest.raises(durable.TimerPause):
        await cancelled_in_backoff.runtime(backend, "k", clock=clock).run(cancelled_in_backoff)
    assert (await backend.load_state("k"))["retry"]["attempt"] == 2
    with pytest.raises(InstanceCancelled):
        await cancelled_in_backoff.cancel("k", orchestration_backend=backend, reason="enough")
    assert LOG == ["attempt", "compensate"]
    state = await backend.load_state("k")
    assert state["status"] == "cancelled" and not state.get("retry")


class _NoCancel:
    """Stands in for the runtime in ``_cancels_then_fails`` when the test cancels from outside."""

    def request_cancel(self, reason):
        pass


async def _flaky_cleanup():
    LOG.append(("cleanup attempt", durable.current_attempt()))
    if durable.current_attempt() == 1:
        raise ConnectionError("cleanup service down")


flaky_cleanup = durable.step(_flaky_cleanup, retry=durable.RetryPolicy(max_attempts=3, initial_interval=10.0,
                                                                         jitter=0.0))


@make_durable
async def cleanup_is_retried():
    try:
        await wait_for_event("work")
    finally:
        await flaky_cleanup()
        await record("cleaned")


async def test_a_cleanup_step_backs_off_and_the_instance_still_ends_cancelled():
    """The cancellation is raised once; a retried step in the finally backs off on a durable timer as usual."""
    clock = Clock(T0)
    backend = new_backend()
    with pytest.raises(PauseForEventException):
        await cleanup_is_retried.runtime(backend, "cr", clock=clock).run(cleanup_is_retried)
    with pytest.raises(durable.TimerPause) as p:
        await cleanup_is_retried.runtime(backend, "cr", clock=clock).cancel(cleanup_is_retried, "bye")
    state = await backend.load_state("cr")
    assert state["cancel"] == "bye" and state["retry"]["attempt"] == 2
    clock.now = p.value.due
    with pytest.raises(InstanceCancelled):
        await cleanup_is_retried.runtime(backend, "cr", clock=clock).run(cleanup_is_retried)
    assert LOG == [("cleanup attempt", 1), ("cleanup attempt", 2), "cleaned"]
    assert await status(backend, "cr") == "cancelled"
