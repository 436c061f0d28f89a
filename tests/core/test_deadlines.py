"""Deadlines (issue 13): ``DeadlineExceeded`` is raised inside the program at its current await, once.

The runtime's clock is injected; ``advance`` is a leaf step that takes time on it. Shared helpers (``record``,
``LOG``) come from test_cancellation.
"""

from __future__ import annotations

import asyncio
import time

import pytest

import durable
from durable import DeadlineExceeded, PauseForEventException, TimerPause, make_durable, sleep, wait_for_event

from .difftools import Clock
from .test_cancellation import LOG, SHARED, T0, new_backend, record


@pytest.fixture(autouse=True)
def _clean():
    LOG.clear()
    SHARED.clear()
    yield
    LOG.clear()
    SHARED.clear()


@make_durable(deadline=60.0)
async def long_sleep():
    try:
        await sleep(3600)
    except DeadlineExceeded:
        await record("late")
        await record("still running")  # raised once: cleanup after it is not interrupted again
        return "timed out"
    return "slept"


@make_durable(deadline=60.0)
async def long_wait():
    try:
        return await wait_for_event("never")
    except DeadlineExceeded as e:
        await record("late")
        return ("timed out", isinstance(e, TimeoutError))


@pytest.mark.parametrize("program, pause_type", [(long_sleep, TimerPause), (long_wait, PauseForEventException)])
async def test_deadline_passes_while_paused_on_a_long_wait(program, pause_type):
    clock = Clock(T0)
    backend = new_backend()
    with pytest.raises(pause_type) as p:
        await program.runtime(backend, "d", clock=clock).run(program)
    assert p.value.due == pytest.approx(T0 + 60)  # the wait's due time is capped at the deadline
    state = await backend.load_state("d")
    assert state["deadline"] == pytest.approx(T0 + 60)
    assert state["wait"]["deadline"] is True
    clock.now = T0 + 59
    with pytest.raises(pause_type):
        await program.runtime(backend, "d", clock=clock).run(program)
    assert LOG == []
    clock.now = T0 + 60
    got = await program.runtime(backend, "d", clock=clock).run(program)
    assert got in ("timed out", ("timed out", True))
    assert LOG[0] == "late"
    assert (await backend.load_state("d"))["deadline_hit"] is True


def advance(seconds):
    """A leaf step that takes ``seconds`` of the injected clock."""
    async def run():
        SHARED["clock"].now += seconds
        LOG.append(("advance", seconds))
    return run()


@make_durable(deadline=10.0)
async def slow_steps():
    try:
        await advance(5)
        await advance(20)  # the deadline passes while this step runs
        await record("never")
    except DeadlineExceeded:
        await record("handled")
    await record("after")
    await advance(100)
    await record("still after")
    return "done"


async def test_deadline_passing_between_steps_is_raised_once_at_the_next_await():
    SHARED["clock"] = clock = Clock(T0)
    backend = new_backend()
    got = await slow_steps.runtime(backend, "b", clock=clock).run(slow_steps)
    assert got == "done"
    assert LOG == [("advance", 5), ("advance", 20), "handled", "after", ("advance", 100), "still after"]


@make_durable
async def no_own_deadline():
    await advance(5)
    await advance(5)
    await record("never")


async def test_runtime_deadline_uncaught_fails_the_instance():
    SHARED["clock"] = clock = Clock(T0)
    backend = new_backend()
    rt = no_own_deadline.runtime(backend, "r", clock=clock, deadline=T0 + 7)
    with pytest.raises(DeadlineExceeded):
        await rt.run(no_own_deadline)
    assert LOG == [("advance", 5), ("advance", 5)]
    state = await backend.load_state("r")
    assert state["status"] == "failed" and isinstance(state["error"], DeadlineExceeded)


@make_durable
async def naps():
    try:
        await sleep(3600)
    except DeadlineExceeded:
        return "woke at the deadline"
    return "slept an hour"


async def test_instance_deadline_in_real_time():
    """``program.instance(id, orchestration_backend=b, deadline=...)``: the instance wakes at its deadline."""
    backend = new_backend()
    call = naps.instance("n", orchestration_backend=backend, deadline=time.time() + 0.3)
    with pytest.raises(TimerPause) as p:
        await call()
    assert p.value.due <= time.time() + 0.3 + 1e-3
    limit = time.monotonic() + 10
    while time.time() < p.value.due:  # a timer: the test waits for its due time, no longer
        assert time.monotonic() < limit
        await asyncio.sleep(0.05)
    assert await naps(orchestration_backend=backend, instance_id="n") == "woke at the deadline"


async def _always_fails():
    LOG.append("attempt")
    raise ConnectionError("down")


always_fails = durable.step(_always_fails, retry=durable.RetryPolicy(max_attempts=10, initial_interval=30.0,
                                                                       backoff=1.0, jitter=0.0))


@make_durable(deadline=45.0)
async def retries_until_the_deadline():
    try:
        await always_fails()
    except DeadlineExceeded:
        await record("gave up")
        return "deadline"
    return "not reached"


async def test_a_retry_backoff_is_cut_at_the_deadline():
    clock = Clock(T0)
    backend = new_backend()
    with pytest.raises(TimerPause) as p:  # attempt 1 failed: back off 30 s
        await retries_until_the_deadline.runtime(backend, "r", clock=clock).run(retries_until_the_deadline)
    assert p.value.due == T0 + 30
    clock.now = p.value.due
    with pytest.raises(TimerPause) as p:  # attempt 2 failed: the next backoff would end after the deadline
        await retries_until_the_deadline.runtime(backend, "r", clock=clock).run(retries_until_the_deadline)
    assert p.value.due == T0 + 45
    clock.now = p.value.due
    got = await retries_until_the_deadline.runtime(backend, "r", clock=clock).run(retries_until_the_deadline)
    assert got == "deadline"
    assert LOG == ["attempt", "attempt", "gave up"]  # no third attempt


async def _slow_and_failing():
    SHARED["clock"].now += 30  # the deadline passes while the attempt runs
    LOG.append("attempt")
    raise ConnectionError("down")


slow_and_failing = durable.step(_slow_and_failing, retry=durable.RetryPolicy(max_attempts=4, initial_interval=0.0))


@make_durable(deadline=45.0)
async def retries_past_the_deadline():
    try:
        await slow_and_failing()
    except DeadlineExceeded:
        return "deadline"
    except ConnectionError:
        return "ran out of attempts"
    return "not reached"


async def test_deadline_passing_during_an_attempt_stops_immediate_retries():
    SHARED["clock"] = clock = Clock(T0)
    backend = new_backend()
    got = await retries_past_the_deadline.runtime(backend, "d", clock=clock).run(retries_past_the_deadline)
    assert got == "deadline"
    assert LOG == ["attempt", "attempt"]  # 30 s, 60 s: the deadline (45 s) passed during the second attempt
