"""A step followed only by a bare return is saved together with the completion (one checkpoint, not two)."""

import asyncio
import threading

import pytest

from durable import CheckpointException, DurableBackend, InMemoryStateStore, make_durable, signing
from durable.stack import transformer

calls: list[str] = []


async def work(x):
    calls.append(f"work {x}")
    return x + 1


async def helper(x):
    a = await work(x)
    b = await work(a)
    return b


@make_durable
async def one_step(x):
    return await work(x)


@make_durable
async def copy_then_return(x):
    y = await work(x)
    z = y
    return z


@make_durable
async def computes_after(x):
    y = await work(x)
    return y * 10


@make_durable
async def nested(x):
    return await helper(x)


@make_durable
async def in_try(x):
    try:
        return await work(x)
    finally:
        calls.append("finally")


class Recorder(DurableBackend):
    """Records the status of every saved state; ``refuse`` makes saving that status fail."""

    def __init__(self, store, refuse: str | None = None) -> None:
        super().__init__(store)
        self.saved: list[str] = []
        self.refuse = refuse

    async def save_state(self, instance_id, state):
        if state["status"] == self.refuse:
            raise CheckpointException(f"this store refuses {self.refuse} states")
        self.saved.append(state["status"])
        await super().save_state(instance_id, state)


def run(program, backend, iid, *args):
    return asyncio.run(program(*args, orchestration_backend=backend, instance_id=iid))


@pytest.fixture(autouse=True)
def _clear():
    calls.clear()


def test_compiler_marks_bare_return_blocks():
    assert [b.tail for b in transformer.compile(one_step.fn).blocks] == [False, True]
    assert [b.tail for b in transformer.compile(copy_then_return.fn).blocks] == [False, True]
    assert [b.tail for b in transformer.compile(computes_after.fn).blocks] == [False, False]
    # a return inside try/finally runs the finally first: not a bare return
    assert not any(b.tail for b in transformer.compile(in_try.fn).blocks[:-1])


@pytest.mark.parametrize("program, expected, saves", [
    (one_step, 2, ["completed"]),
    (copy_then_return, 2, ["completed"]),
    (computes_after, 20, ["running", "completed"]),
    # the inner steps are checkpointed; the outer frame's bare return joins the completion
    (nested, 3, ["running", "running", "completed"]),
    (in_try, 2, ["running", "completed"]),
])
def test_checkpoints_saved(program, expected, saves):
    b = Recorder(InMemoryStateStore())
    assert run(program, b, "i", 1) == expected
    assert b.saved == saves
    assert run(program, DurableBackend(b.store), "i", 1) == expected  # stored result, nothing runs again
    assert calls.count("work 1") == 1


def test_refused_completion_keeps_the_step_that_ran():
    """If the completion cannot be saved, the checkpoint that was left out is saved instead."""
    store = InMemoryStateStore()
    with pytest.raises(CheckpointException, match="cannot be saved"):
        run(one_step, Recorder(store, refuse="completed"), "r", 5)
    state = signing.loads(store.load_blob("state:r"))
    assert state["status"] == "running" and state["steps"] == 1
    assert calls == ["work 5"]
    assert run(one_step, DurableBackend(store), "r", 5) == 6  # finishes without running the step again
    assert calls == ["work 5"]


_lock = threading.Lock()


async def make_lock():
    return _lock


@make_durable
async def returns_lock():
    await work(0)
    return await make_lock()


def test_unpicklable_result_is_refused_and_previous_checkpoint_kept():
    store = InMemoryStateStore()
    with pytest.raises(CheckpointException, match="cannot be pickled"):
        run(returns_lock, DurableBackend(store), "l")
    state = signing.loads(store.load_blob("state:l"))
    assert state["status"] == "running" and state["steps"] == 1
    assert state["stack"].top.pc == 1  # after work(0), before make_lock(): that step is not kept


def test_crash_before_the_completion_runs_the_step_again():
    """A crash between the step and the completion's write: as a crash before any step checkpoint."""

    class Crash(BaseException):
        pass

    class Crashing(DurableBackend):
        async def save_state(self, instance_id, state):
            if state["status"] == "completed":
                raise Crash
            await super().save_state(instance_id, state)

    store = InMemoryStateStore()
    with pytest.raises(Crash):
        run(one_step, Crashing(store), "c", 7)
    assert store.load_blob("state:c") is None
    assert run(one_step, DurableBackend(store), "c", 7) == 8
    assert calls == ["work 7", "work 7"]
