"""Checkpoint history and fork (issue 13): re-run an instance from one of its past checkpoints under a new id.

``COUNTS`` counts the executions of each step (the outside world): a fork must not run the steps before its
checkpoint again. Without ``history`` the saved state stays O(1) in the number of steps run.
"""

from __future__ import annotations

import inspect
from collections import Counter

import pytest

import durable
from durable import (
    DurableBackend,
    DurableError,
    InMemoryStateStore,
    PauseForEventException,
    make_durable,
    wait_for_event,
)

COUNTS: Counter = Counter()


@pytest.fixture(autouse=True)
def _clean():
    COUNTS.clear()
    yield
    COUNTS.clear()


async def _count(i):
    COUNTS[i] += 1
    return i


count = durable.step(_count)


async def maybe(value):
    """A backend's history methods may be async or not."""
    return await value if inspect.isawaitable(value) else value


async def eight_steps_body(x):
    total = x
    for i in range(1, 9):
        total += await count(i)
    return total


eight = make_durable(eight_steps_body, name="eight", history=True)
eight_last_two = make_durable(eight_steps_body, name="eight2", history=2, declare=False)
eight_no_history = make_durable(eight_steps_body, name="eight0", declare=False)


async def checkpoints(backend, iid):
    got = await maybe(backend.list_checkpoints(iid))
    for c in got:
        assert {"step", "status", "position"} <= set(c), c
    return got


async def test_fork_from_checkpoint_3_runs_only_the_rest():
    backend = DurableBackend(InMemoryStateStore())
    assert await eight(0, orchestration_backend=backend, instance_id="a") == 36
    assert COUNTS == {i: 1 for i in range(1, 9)}
    saved = await checkpoints(backend, "a")
    steps = [c["step"] for c in saved]
    assert steps == sorted(steps) and len(steps) >= 8 and 3 in steps
    at3 = next(c for c in saved if c["step"] == 3)
    assert at3["status"] == "running" and isinstance(at3["position"], str)
    assert (await maybe(backend.load_checkpoint("a", 3)))["steps"] == 3

    await durable.fork(backend, "a", "a-fork", step=3)
    state = await backend.load_state("a-fork")
    assert tuple(state["forked_from"]) == ("a", 3) and state["status"] == "running"
    assert await eight(orchestration_backend=backend, instance_id="a-fork") == 36
    assert COUNTS == {i: 1 if i <= 3 else 2 for i in range(1, 9)}
    # the original is untouched
    assert (await backend.load_state("a"))["status"] == "completed"
    assert await eight(orchestration_backend=backend, instance_id="a") == 36
    assert COUNTS == {i: 1 if i <= 3 else 2 for i in range(1, 9)}


async def test_fork_with_an_edited_local():
    backend = DurableBackend(InMemoryStateStore())
    assert await eight(0, orchestration_backend=backend, instance_id="b") == 36
    await durable.fork(backend, "b", "b-edit", step=3, locals={"total": 1000})
    # checkpoint 3 is taken as step 3 returns, before ``total += <its value>`` runs
    assert await eight(orchestration_backend=backend, instance_id="b-edit") == 1000 + 3 + 4 + 5 + 6 + 7 + 8
    assert COUNTS == {i: 1 if i <= 3 else 2 for i in range(1, 9)}


async def test_fork_into_a_fresh_backend_object_over_the_same_store():
    store = InMemoryStateStore()
    assert await eight(1, orchestration_backend=DurableBackend(store), instance_id="c") == 37
    await durable.fork(DurableBackend(store), "c", "c2", step=5)
    assert await eight(orchestration_backend=DurableBackend(store), instance_id="c2") == 37
    assert COUNTS == {i: 1 if i <= 5 else 2 for i in range(1, 9)}


async def test_history_2_keeps_only_the_last_two_checkpoints():
    backend = DurableBackend(InMemoryStateStore())
    assert await eight_last_two(0, orchestration_backend=backend, instance_id="h") == 36
    saved = await checkpoints(backend, "h")
    last = (await backend.load_state("h"))["steps"]
    assert [c["step"] for c in saved] == [last - 1, last]
    assert len([k for k in backend.store.keys() if k.startswith("history:h:")]) == 2
    with pytest.raises((DurableError, KeyError, LookupError)):
        await durable.fork(backend, "h", "h-old", step=1)
    assert await backend.load_state("h-old") is None


async def _approval():
    a = await count(1)
    ok = await wait_for_event("approve")
    b = await count(2)
    return (a, ok, b)


approval = make_durable(_approval, name="approval", history=True)


async def test_fork_from_a_paused_checkpoint_is_paused_on_the_same_wait():
    backend = DurableBackend(InMemoryStateStore())
    with pytest.raises(PauseForEventException):
        await approval(orchestration_backend=backend, instance_id="p")
    backend.publish_event("p", "approve", "yes")
    assert await approval(orchestration_backend=backend, instance_id="p") == (1, "yes", 2)
    paused = [c for c in await checkpoints(backend, "p") if c["status"] == "paused"]
    assert len(paused) == 1
    await durable.fork(backend, "p", "p2", step=paused[0]["step"])
    assert (await backend.load_state("p2"))["status"] == "paused"
    with pytest.raises(PauseForEventException) as e:
        await approval(orchestration_backend=backend, instance_id="p2")
    assert e.value.event == "approve"
    backend.publish_event("p2", "approve", "no")
    assert await approval(orchestration_backend=backend, instance_id="p2") == (1, "no", 2)
    assert COUNTS == {1: 1, 2: 2}


async def test_fork_of_an_instance_without_history_is_a_clear_error():
    backend = DurableBackend(InMemoryStateStore())
    assert await eight_no_history(0, orchestration_backend=backend, instance_id="n") == 36
    with pytest.raises((DurableError, KeyError)):
        await durable.fork(backend, "n", "n2", step=1)


# -- without history, the saved state does not grow --------------------------------------------------------------

async def _many(n):
    total = 0
    for i in range(n):
        total += await count(i % 8 + 1)
    await wait_for_event("end")
    return total


no_history = make_durable(_many, name="many")
with_history = make_durable(_many, name="many-h", history=True, declare=False)


async def _paused_state_size(program, n):
    store = InMemoryStateStore()
    backend = DurableBackend(store)
    with pytest.raises(PauseForEventException):
        await program(n, orchestration_backend=backend, instance_id="s")
    return len(store.load_blob("state:s")), sorted(store.keys())


async def test_state_without_history_does_not_grow_with_the_number_of_steps():
    size10, keys10 = await _paused_state_size(no_history, 10)
    size100, keys100 = await _paused_state_size(no_history, 100)
    assert abs(size100 - size10) <= 8, (size10, size100)
    assert not [k for k in keys10 + keys100 if k.startswith("history:")]
    # the control: with history, every step leaves a checkpoint behind
    _, keys = await _paused_state_size(with_history, 100)
    assert len([k for k in keys if k.startswith("history:s:")]) >= 100


async def _inner_frame(n):
    got = await count(n)
    answer = await wait_for_event("answer")
    return got * 100 + answer


async def _outer_frame():
    base = 1
    value = await _inner_frame(2)
    return base, value


nested = make_durable(_outer_frame, name="nested-fork", history=True)


async def test_fork_edits_the_chosen_frame_of_a_nested_call():
    backend = DurableBackend(InMemoryStateStore())
    with pytest.raises(PauseForEventException):
        await nested(orchestration_backend=backend, instance_id="x")
    step = (await backend.load_state("x"))["steps"]  # the pause inside the inner frame
    await durable.fork(backend, "x", "x-inner", step=step, locals={"got": 7})  # default: the innermost frame
    await durable.fork(backend, "x", "x-outer", step=step, locals={"base": 5}, frame=0)
    for iid in ("x", "x-inner", "x-outer"):
        backend.publish_event(iid, "answer", 3)
    assert await nested(orchestration_backend=backend, instance_id="x") == (1, 203)
    assert await nested(orchestration_backend=backend, instance_id="x-inner") == (1, 703)
    assert await nested(orchestration_backend=backend, instance_id="x-outer") == (5, 203)
    assert COUNTS == {2: 1}
    with pytest.raises(ValueError, match="no local"):
        await durable.fork(backend, "x", "x-bad", step=step, locals={"nope": 1})


async def test_fork_refuses_an_existing_id_and_a_finished_checkpoint():
    backend = DurableBackend(InMemoryStateStore())
    assert await eight(0, orchestration_backend=backend, instance_id="e") == 36
    with pytest.raises(ValueError, match="new instance id"):
        await durable.fork(backend, "e", "e", step=3)
    await durable.fork(backend, "e", "e-done", step=3)
    with pytest.raises(ValueError, match="exists"):
        await durable.fork(backend, "e", "e-done", step=4)
    last = (await backend.load_state("e"))["steps"]
    with pytest.raises(ValueError, match="completed"):
        await durable.fork(backend, "e", "e-end", step=last)
