"""Failed instances keep their last checkpoint (issue 13): ``program.retry`` continues them.

Completed steps never run again (``COUNTS`` counts each step's executions); the wait the instance was paused on
is checked again, so an event consumed after the last checkpoint is consumed again.
"""

from __future__ import annotations

import time
from collections import Counter

import pytest

from durable import (
    CallStack,
    DurableBackend,
    DurableError,
    InMemoryStateStore,
    PauseForEventException,
    TimerPause,
    make_durable,
    wait_for_event,
)

from .difftools import Clock
from .test_retries import LOG, PLAN, finish, uses_sometimes

COUNTS: Counter = Counter()


@pytest.fixture(autouse=True)
def _clean():
    COUNTS.clear()
    LOG.clear()
    PLAN.update(fails=0, slow=0, broken=None)
    yield
    LOG.clear()
    PLAN.update(fails=0, slow=0, broken=None)


async def numbered(i):
    COUNTS[i] += 1
    if PLAN["broken"] == i:
        raise RuntimeError(f"step {i} is broken")
    return i * 10


@make_durable
async def six_steps(x):
    total = x
    for i in range(1, 7):
        total += await numbered(i)
    return total


@pytest.mark.parametrize("broken", [4, 1])
async def test_failed_instance_keeps_its_checkpoint_and_retry_continues_it(broken):
    PLAN["broken"] = broken
    backend = DurableBackend(InMemoryStateStore())
    with pytest.raises(RuntimeError, match=f"step {broken} is broken"):
        await six_steps(5, orchestration_backend=backend, instance_id="f")
    assert COUNTS == {i: 1 for i in range(1, broken + 1)}
    state = await backend.load_state("f")
    assert state["status"] == "failed" and isinstance(state["error"], RuntimeError)
    assert state["stack"].frames, "the failed state keeps its stack"
    # calling it again re-raises the stored error and runs nothing
    with pytest.raises(RuntimeError, match="broken"):
        await six_steps(5, orchestration_backend=backend, instance_id="f")
    assert sum(COUNTS.values()) == broken

    PLAN["broken"] = None  # the fix is deployed
    got = await six_steps.retry("f", orchestration_backend=DurableBackend(backend.store))
    assert got == 5 + 210
    assert COUNTS == {i: 2 if i == broken else 1 for i in range(1, 7)}
    assert (await backend.load_state("f"))["status"] == "completed"
    with pytest.raises(DurableError):  # not failed any more
        await six_steps.retry("f", orchestration_backend=backend)


async def test_failed_state_says_where_it_failed():
    PLAN["broken"] = 4
    backend = DurableBackend(InMemoryStateStore())
    with pytest.raises(RuntimeError):
        await six_steps(5, orchestration_backend=backend, instance_id="fa")
    state = await backend.load_state("fa")
    assert isinstance(state.get("failed_at"), str) and state["failed_at"]


async def test_retry_of_a_running_or_unknown_instance_is_refused():
    backend = DurableBackend(InMemoryStateStore())
    with pytest.raises(DurableError):
        await six_steps.retry("nobody", orchestration_backend=backend)


async def test_failed_state_without_a_checkpoint_is_refused_clearly():
    """A state that failed before issue 13 has no stack to continue from."""
    backend = DurableBackend(InMemoryStateStore())
    await backend.save_state("old", {"format": 1, "status": "failed", "program": "x", "stack": CallStack([]),
                                     "wait": None, "result": None, "error": ValueError("old"), "steps": 3})
    with pytest.raises(DurableError, match="no checkpoint|without a checkpoint"):
        await six_steps.retry("old", orchestration_backend=backend)


@make_durable
async def waits_then_fails():
    await numbered(1)
    v = await wait_for_event("go")
    return await numbered(v)


@pytest.mark.parametrize("same_backend", [True, False])
async def test_retry_consumes_the_event_again_when_the_failure_came_after_the_wait(same_backend):
    backend = DurableBackend(InMemoryStateStore())
    with pytest.raises(PauseForEventException):
        await waits_then_fails(orchestration_backend=backend, instance_id="w")
    backend.publish_event("w", "go", 5)
    PLAN["broken"] = 5
    with pytest.raises(RuntimeError, match="step 5"):
        await waits_then_fails(orchestration_backend=backend, instance_id="w")
    PLAN["broken"] = None
    again = backend if same_backend else DurableBackend(backend.store)
    assert await waits_then_fails.retry("w", orchestration_backend=again) == 50
    assert COUNTS == {1: 1, 5: 2}
    assert again.pending_events("w") == []


async def test_retrying_an_instance_whose_step_ran_out_of_attempts_gives_it_fresh_attempts():
    PLAN["fails"] = 99
    backend = DurableBackend(InMemoryStateStore())
    clock = Clock(time.time() - 10_000)  # its backoff timers are due in real time (program.retry has no clock)
    with pytest.raises(ConnectionError, match=r"attempt 5\)"):
        await finish(uses_sometimes, backend, "r", clock, "t")
    assert len(LOG) == 5
    PLAN["fails"] = 1
    LOG.clear()
    with pytest.raises(TimerPause):  # attempt 1 of a fresh set fails again, and backs off
        await uses_sometimes.retry("r", orchestration_backend=backend)
    assert LOG == [("t", 1)]
    assert await finish(uses_sometimes, backend, "r", Clock(time.time() + 10)) == (1, "t-ok", 1)
    assert LOG == [("t", 1), ("t", 2)]
