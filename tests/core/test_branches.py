"""Parallel branches (issue 14): ``durable.gather`` / ``durable.first`` / ``asyncio.gather`` in durable code.

Each awaitable runs as a branch with its own call stack and checkpoints (durable/branches.py). ``record`` and
the other ``durable.step`` functions are leaf steps; ``LOG`` is the outside world, which survives a simulated
crash (``Crash``, a BaseException raised from ``on_checkpoint`` or a step). A fresh runtime and backend object
per resume stands for a restart.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import pytest

import durable
from durable import (
    DeadlineExceeded,
    DiskStateStore,
    DurableBackend,
    InMemoryStateStore,
    InstanceCancelled,
    PauseForEventException,
    RetryPolicy,
    TimerPause,
    current_attempt,
    make_durable,
    sleep,
    wait_for_event,
)
from durable.state import branch_key, current_branch

from .difftools import Clock

ROOT = Path(__file__).resolve().parents[2]
T0 = 1_800_000_000.0
LOG: list = []
SHARED: dict = {}
PLAN: dict = {}


class Crash(BaseException):
    """A simulated process death."""


@pytest.fixture(autouse=True)
def _clean():
    LOG.clear()
    SHARED.clear()
    PLAN.clear()
    yield
    LOG.clear()
    SHARED.clear()
    PLAN.clear()


async def _record(what, value=None):
    LOG.append(what if value is None else (what, value))
    return value


record = durable.step(_record)


def new_backend(store=None):
    return DurableBackend(store if store is not None else InMemoryStateStore())


def restart(backend):
    """A new backend object on the same store: what a restarted process has."""
    return DurableBackend(backend.store)


def branch_keys(store, iid):
    return sorted(k for k in store.keys() if k.startswith(store.state_key(branch_key(iid, ""))))


async def pause_of(program, backend, iid, *args, clock=None, pause=PauseForEventException):
    with pytest.raises(pause) as p:
        await program.runtime(backend, iid, clock=clock or Clock(T0)).run(program, args, {})
    return p.value


# -- results and real concurrency -------------------------------------------------------------------------------

async def double(x):
    await record(("double", x))
    return 2 * x


@make_durable
async def doubles(n):
    return await durable.gather(*[double(i) for i in range(n)])


async def test_results_come_in_the_order_of_the_awaitables():
    backend = new_backend()
    assert await doubles(5, orchestration_backend=backend, instance_id="d") == [0, 2, 4, 6, 8]
    assert sorted(LOG) == [("double", i) for i in range(5)]
    assert (await backend.load_state("d"))["status"] == "completed"


async def _meet(me, other):
    """Say ``me`` arrived, then wait (with a deadline) until ``other`` did: deadlocks if run one after the other."""
    SHARED.setdefault(me, asyncio.Event()).set()
    await asyncio.wait_for(SHARED.setdefault(other, asyncio.Event()).wait(), 5)
    LOG.append(("met", me))
    return me


meet = durable.step(_meet)


async def meets(me, other):
    got = await meet(me, other)
    await record(("after", me))
    return got


@make_durable
async def rendezvous():
    return await durable.gather(meets("a", "b"), meets("b", "a"))


async def test_steps_of_different_branches_run_concurrently():
    assert await rendezvous(orchestration_backend=new_backend(), instance_id="r") == ["a", "b"]
    assert Counter(LOG) == Counter([("met", "a"), ("met", "b"), ("after", "a"), ("after", "b")])


async def _tick(tag, i):
    await asyncio.sleep(0)  # lets the other branches' steps interleave
    LOG.append((tag, i))
    SHARED[tag] = (tag, i)
    return i


tick = durable.step(_tick)


async def counts(tag, n):
    total = 0
    for i in range(n):
        total += await tick(tag, i)
    return (tag, total)


@make_durable
async def three_counters():
    got = await durable.gather(counts("a", 4), counts("b", 4), counts("c", 4))
    await record("after")
    return got


async def test_each_completed_branch_step_is_checkpointed_and_not_run_again_after_a_crash():
    backend = new_backend()
    saved = set()
    tags = {"0.0": "a", "0.1": "b", "0.2": "c"}

    def crash_after_six(_iid, _steps):
        branch = current_branch.get()
        if branch is not None and branch in tags and tags[branch] in SHARED:
            saved.add(SHARED[tags[branch]])  # the step this branch's checkpoint just saved
        if len(saved) >= 4 and not PLAN.get("crashed"):
            PLAN["crashed"] = True
            raise Crash()

    with pytest.raises(Crash):
        await three_counters.runtime(backend, "c", on_checkpoint=crash_after_six).run(three_counters)
    before = list(LOG)
    assert len(saved) >= 4 and set(before) >= saved  # (the other branches' steps may go on a moment)
    state = await backend.load_state("c")
    assert state["status"] == "running" and state["group"]["branches"] == ["0.0", "0.1", "0.2"]
    LOG.clear()
    got = await three_counters.runtime(restart(backend), "c").run(three_counters)
    assert got == [("a", 6), ("b", 6), ("c", 6)]
    assert not saved & set(LOG), "a checkpointed step ran again"
    assert set(before) | set(LOG) == {(t, i) for t in "abc" for i in range(4)} | {"after"}


async def test_a_crash_right_after_the_group_is_recorded_starts_every_branch_from_its_call():
    backend = new_backend()

    def die(_iid, steps):
        if current_branch.get() is None and steps == 1:
            raise Crash()

    with pytest.raises(Crash):
        await three_counters.runtime(backend, "g0", on_checkpoint=die).run(three_counters)
    assert LOG == []
    assert (await backend.load_state("g0"))["group"]["branches"] == ["0.0", "0.1", "0.2"]
    got = await three_counters.runtime(restart(backend), "g0").run(three_counters)
    assert got == [("a", 6), ("b", 6), ("c", 6)]
    assert Counter(LOG) == Counter([(t, i) for t in "abc" for i in range(4)] + ["after"])


# -- pausing branches ---------------------------------------------------------------------------------------------

async def quick(tag):
    await record(tag)
    return tag


async def waits(name):
    got = await wait_for_event(name)
    await record(("got", name, got))
    return got


@make_durable
async def one_waits():
    return await durable.gather(quick("q"), waits("go"), quick("r"))


async def test_a_branch_pauses_on_an_event_while_the_others_finish():
    backend = new_backend()
    p = await pause_of(one_waits, backend, "w")
    assert p.event == "go"
    assert sorted(LOG) == ["q", "r"]
    state = await backend.load_state("w")
    assert state["status"] == "paused"
    wait = state["wait"]
    assert wait["kind"] == "branches" and wait["due"] is None
    assert [(w["branch"], w["kind"], w["event"]) for w in wait["waits"]] == [("0.1", "event", "go")]
    # nothing new: still paused, nothing runs again
    await pause_of(one_waits, restart(backend), "w")
    backend.publish_event("w", "go", 42)
    assert await one_waits(orchestration_backend=restart(backend), instance_id="w") == ["q", 42, "r"]
    assert sorted(LOG, key=str) == sorted(["q", "r", ("got", "go", 42)], key=str)


async def naps(seconds):
    await sleep(seconds)
    await record(("woke", seconds))
    return seconds


async def waits_with_timeout(name, timeout):
    try:
        return await wait_for_event(name, timeout=timeout)
    except durable.EventTimeout:
        return "timed out"


@make_durable
async def mixed_waits():
    return await durable.gather(naps(100), waits_with_timeout("x", 50), naps(300), quick("q"))


async def test_the_branches_wait_lists_every_paused_branch_and_is_due_at_the_earliest():
    clock = Clock(T0)
    backend = new_backend()
    p = await pause_of(mixed_waits, backend, "m", clock=clock)
    assert p.due == T0 + 50
    wait = (await backend.load_state("m"))["wait"]
    assert wait["kind"] == "branches" and wait["due"] == T0 + 50
    assert [(w["branch"], w["kind"], w["due"]) for w in wait["waits"]] == [
        ("0.0", "timer", T0 + 100), ("0.1", "event", T0 + 50), ("0.2", "timer", T0 + 300)]
    clock.now = T0 + 50
    p = await pause_of(mixed_waits, restart(backend), "m", clock=clock, pause=TimerPause)
    assert p.due == T0 + 100
    wait = (await backend.load_state("m"))["wait"]
    assert [w["branch"] for w in wait["waits"]] == ["0.0", "0.2"]
    clock.now = T0 + 100
    p = await pause_of(mixed_waits, restart(backend), "m", clock=clock, pause=TimerPause)
    assert p.due == T0 + 300
    clock.now = T0 + 300
    got = await mixed_waits.runtime(restart(backend), "m", clock=clock).run(mixed_waits)
    assert got == [100, "timed out", 300, "q"]
    assert LOG == ["q", ("woke", 100), ("woke", 300)]


@make_durable
async def two_events():
    a, b = await durable.gather(waits("a"), waits("b"))
    await record("both")
    return a + b


async def test_two_branches_waiting_on_different_events():
    backend = new_backend()
    await pause_of(two_events, backend, "e")
    backend.publish_event("e", "b", 2)
    await pause_of(two_events, restart(backend), "e")
    waits_ = (await backend.load_state("e"))["wait"]["waits"]
    assert [(w["branch"], w["event"]) for w in waits_] == [("0.0", "a")]
    backend.publish_event("e", "a", 1)
    assert await two_events(orchestration_backend=restart(backend), instance_id="e") == 3
    assert LOG == [("got", "b", 2), ("got", "a", 1), "both"]


async def big(n, event):
    blob = "x" * n  # a large local: in the branch's state while it lives
    await wait_for_event(event)
    return len(blob)


@make_durable
async def big_branches():
    sizes = await durable.gather(big(100_000, "go"), big(100_000, "go2"), quick("q"))
    await wait_for_event("end")
    return sizes


async def test_the_saved_state_holds_only_live_branches():
    store = InMemoryStateStore()
    backend = new_backend(store)
    await pause_of(big_branches, backend, "s")
    assert branch_keys(store, "s") == [store.state_key(branch_key("s", p)) for p in ("0.0", "0.1", "0.2")]
    own = len(store.load_blob(store.state_key("s")))
    assert own < 20_000, "the instance's own state holds no branch's state"
    assert len(store.load_blob(store.state_key(branch_key("s", "0.0")))) > 100_000
    backend.publish_event("s", "go")
    await pause_of(big_branches, restart(backend), "s")
    assert len(branch_keys(store, "s")) == 3  # the group goes on: ended branches keep their outcome
    backend.publish_event("s", "go2")
    p = await pause_of(big_branches, restart(backend), "s")
    assert p.event == "end"
    assert branch_keys(store, "s") == [], "the group ended: its branches' states are deleted"
    assert len(store.load_blob(store.state_key("s"))) < 20_000
    backend.publish_event("s", "end")
    assert await big_branches(orchestration_backend=restart(backend), instance_id="s") == [100_000, 100_000, "q"]
    assert branch_keys(store, "s") == []


@make_durable
async def gathers_in_a_loop(n):
    out = []
    for i in range(n):
        out.append(await durable.gather(waits(f"e{i}"), quick(f"q{i}")))
    return out


async def test_groups_in_a_loop_number_their_branches_and_leave_no_state_behind():
    store = InMemoryStateStore()
    backend = new_backend(store)
    for i in range(3):
        await pause_of(gathers_in_a_loop, restart(backend), "loop", 3)
        assert [w["branch"] for w in (await backend.load_state("loop"))["wait"]["waits"]] == [f"{i}.0"]
        assert branch_keys(store, "loop") == [store.state_key(branch_key("loop", f"{i}.{j}")) for j in (0, 1)]
        backend.publish_event("loop", f"e{i}", i)
    got = await gathers_in_a_loop(3, orchestration_backend=restart(backend), instance_id="loop")
    assert got == [[0, "q0"], [1, "q1"], [2, "q2"]]
    assert branch_keys(store, "loop") == []
    assert Counter(LOG) == Counter([f"q{i}" for i in range(3)] + [("got", f"e{i}", i) for i in range(3)])


@make_durable
async def waits_then_squares(x):
    await wait_for_event("go")
    await record(("square", x))
    return x * x


@make_durable
async def gathers_programs():
    return await durable.gather(waits_then_squares(5), waits_then_squares.fn(6))


async def test_a_program_called_in_gather_is_a_nested_durable_call_like_awaiting_it():
    backend = new_backend()
    await pause_of(gathers_programs, backend, "gp")
    waits_ = (await backend.load_state("gp"))["wait"]["waits"]
    assert [(w["branch"], w["event"]) for w in waits_] == [("0.0", "go"), ("0.1", "go")]
    assert sorted(backend.store.keys()) == ["state:gp", "state:gp/branch:0.0", "state:gp/branch:0.1"]
    backend.publish_event("gp", "go")
    backend.publish_event("gp", "go")
    assert await gathers_programs(orchestration_backend=restart(backend), instance_id="gp") == [25, 36]
    assert sorted(LOG) == [("square", 5), ("square", 6)]


# -- failures -----------------------------------------------------------------------------------------------------

async def _hold(name):
    """A step that waits (with a deadline) until ``name`` is set."""
    await asyncio.wait_for(SHARED.setdefault(name, asyncio.Event()).wait(), 5)
    LOG.append(("released", name))


hold = durable.step(_hold)


async def _release(name):
    SHARED.setdefault(name, asyncio.Event()).set()


release = durable.step(_release)


async def running_then_cancelled():
    try:
        await hold("go")
        await record("never: running branch went on")
    finally:
        await record("running cleanup")


async def paused_then_cancelled():
    try:
        await wait_for_event("never")
    finally:
        await record("paused cleanup")
        await record("paused cleanup 2")


async def fails(message):
    await release("go")
    raise ValueError(message)


@make_durable
async def one_fails():
    try:
        await durable.gather(paused_then_cancelled(), running_then_cancelled(), fails("boom"))
    except ValueError as e:
        await record(("caught", str(e)))
        return "handled"
    return "not raised"


async def test_first_failure_is_raised_after_the_others_are_cancelled_and_cleaned_up():
    backend = new_backend()
    assert await one_fails(orchestration_backend=backend, instance_id="f") == "handled"
    # the running branch may finish its held step and reach its next await before the failure decides the group
    assert Counter(e for e in LOG if e != "never: running branch went on") == \
        Counter([("released", "go"), "running cleanup", "paused cleanup", "paused cleanup 2",
                                    ("caught", "boom")])
    assert LOG[-1] == ("caught", "boom")
    assert LOG.index(("released", "go")) < LOG.index("running cleanup")
    state = await backend.load_state("f")
    assert state["status"] == "completed"
    assert branch_keys(backend.store, "f") == []


async def ok(x):
    await record(("ok", x))
    return x


async def bad(message):
    await record(("bad", message))
    raise KeyError(message)


@make_durable
async def outcomes_in_place():
    got = await durable.gather(ok(1), bad("k"), ok(3), return_exceptions=True)
    return [type(x).__name__ if isinstance(x, BaseException) else x for x in got]


async def test_return_exceptions_returns_every_outcome_in_place():
    assert await outcomes_in_place(orchestration_backend=new_backend(), instance_id="x") == [1, "KeyError", 3]
    assert Counter(LOG) == Counter([("ok", 1), ("bad", "k"), ("ok", 3)])


@make_durable
async def cancelled_in_place():
    got = await durable.gather(waits("a"), waits("b"), return_exceptions=True)
    return [type(x).__name__ if isinstance(x, BaseException) else x for x in got]


async def test_return_exceptions_with_an_instance_cancel_keeps_cancelled_outcomes():
    backend = new_backend()
    await pause_of(cancelled_in_place, backend, "ci")
    with pytest.raises(InstanceCancelled):
        await cancelled_in_place.cancel("ci", orchestration_backend=restart(backend))
    assert (await backend.load_state("ci"))["status"] == "cancelled"


async def slow_winner():
    try:
        await wait_for_event("slow")
        return "slow"
    finally:
        await record("slow cleanup")


@make_durable
async def race():
    return await durable.first(slow_winner(), quick("fast"), slow_winner())


async def test_first_returns_the_first_to_end_and_cancels_the_rest():
    backend = new_backend()
    assert await race(orchestration_backend=backend, instance_id="r") == "fast"
    assert Counter(LOG) == Counter(["fast", "slow cleanup", "slow cleanup"])
    assert branch_keys(backend.store, "r") == []


@make_durable
async def race_after_pause():
    try:
        return await durable.first(waits("a"), waits("b"))
    finally:
        await record("parent cleanup")


async def test_first_decided_by_a_branch_that_resumes_later():
    backend = new_backend()
    await pause_of(race_after_pause, backend, "rp")
    backend.publish_event("rp", "b", "B")
    assert await race_after_pause(orchestration_backend=restart(backend), instance_id="rp") == "B"
    assert LOG == [("got", "b", "B"), "parent cleanup"]
    backend.publish_event("rp", "a", "A")  # too late: nothing waits for it
    assert await race_after_pause(orchestration_backend=restart(backend), instance_id="rp") == "B"


@make_durable
async def race_fails():
    try:
        await durable.first(bad("first"), slow_winner())
    except KeyError as e:
        return ("caught", e.args[0])


async def test_first_raises_when_the_first_to_end_fails():
    assert await race_fails(orchestration_backend=new_backend(), instance_id="rf") == ("caught", "first")
    assert Counter(LOG) == Counter([("bad", "first"), "slow cleanup"])


async def cleanup_pauses():
    try:
        await wait_for_event("work")
    finally:
        await record("cleanup start")
        await wait_for_event("cleanup done")
        await record("cleanup end")


async def fails_later():
    await wait_for_event("fail now")
    raise ValueError("late failure")


@make_durable
async def waits_for_cleanup():
    try:
        await durable.gather(cleanup_pauses(), fails_later())
    except ValueError as e:
        await record(("caught", str(e)))
        return "done"


async def test_a_cancelled_branch_whose_cleanup_pauses_holds_the_group_until_it_ends():
    backend = new_backend()
    await pause_of(waits_for_cleanup, backend, "cw")
    backend.publish_event("cw", "fail now")
    p = await pause_of(waits_for_cleanup, restart(backend), "cw")
    assert p.event == "cleanup done"
    assert LOG == ["cleanup start"]
    state = await backend.load_state("cw")
    assert state["group"]["decided"] == "0.1"
    assert [(w["branch"], w["event"]) for w in state["wait"]["waits"]] == [("0.0", "cleanup done")]
    backend.publish_event("cw", "cleanup done")
    assert await waits_for_cleanup(orchestration_backend=restart(backend), instance_id="cw") == "done"
    assert LOG == ["cleanup start", "cleanup end", ("caught", "late failure")]


async def _cleanup_step(tag):
    if PLAN.pop("crash cleanup", None):
        raise Crash()
    LOG.append(("cleanup", tag))


cleanup_step = durable.step(_cleanup_step)


async def cancelled_with_crashing_cleanup(tag):
    try:
        await wait_for_event("never")
    finally:
        await cleanup_step(tag)


@make_durable
async def race_with_crash():
    return await durable.first(cancelled_with_crashing_cleanup("x"), quick("fast"))


async def test_a_crash_while_the_losers_clean_up_resumes_their_cleanup_and_keeps_the_winner():
    backend = new_backend()
    PLAN["crash cleanup"] = True
    with pytest.raises(Crash):
        await race_with_crash(orchestration_backend=backend, instance_id="rc")
    assert LOG == ["fast"]
    state = await backend.load_state("rc")
    assert state["group"]["decided"] == "0.1", "which branch decided was saved before the others were cancelled"
    assert await race_with_crash(orchestration_backend=restart(backend), instance_id="rc") == "fast"
    assert LOG == ["fast", ("cleanup", "x")]


async def asks(tag):
    return await wait_for_event(f"approve-{tag}", title=f"Approve {tag}", role="manager")


@make_durable
async def approvals():
    return await durable.gather(asks("a"), asks("b"))


async def test_human_task_metadata_of_each_paused_branch_is_in_the_branches_wait():
    backend = new_backend()
    await pause_of(approvals, backend, "ap")
    waits_ = (await backend.load_state("ap"))["wait"]["waits"]
    assert [(w["branch"], w["event"], w["meta"]) for w in waits_] == [
        ("0.0", "approve-a", {"title": "Approve a", "role": "manager"}),
        ("0.1", "approve-b", {"title": "Approve b", "role": "manager"})]
    backend.publish_event("ap", "approve-b", "yes b")
    backend.publish_event("ap", "approve-a", "yes a")
    assert await approvals(orchestration_backend=restart(backend), instance_id="ap") == ["yes a", "yes b"]


async def inner_pair(tag):
    return await durable.gather(quick(tag + "1"), waits(tag))


@make_durable
async def nested():
    return await durable.gather(inner_pair("x"), inner_pair("y"), quick("z"))


async def test_nested_gather_pauses_with_nested_waits_and_resumes():
    backend = new_backend()
    await pause_of(nested, backend, "n")
    wait = (await backend.load_state("n"))["wait"]
    assert wait["kind"] == "branches"
    assert [(w["branch"], w["kind"]) for w in wait["waits"]] == [("0.0", "branches"), ("0.1", "branches")]
    assert [(w["branch"], w["event"]) for w in wait["waits"][0]["waits"]] == [("0.0/0.1", "x")]
    assert [(w["branch"], w["event"]) for w in wait["waits"][1]["waits"]] == [("0.1/0.1", "y")]
    backend.publish_event("n", "y", "Y")
    await pause_of(nested, restart(backend), "n")
    backend.publish_event("n", "x", "X")
    got = await nested(orchestration_backend=restart(backend), instance_id="n")
    assert got == [["x1", "X"], ["y1", "Y"], "z"]
    assert Counter(LOG) == Counter(["x1", "y1", "z", ("got", "y", "Y"), ("got", "x", "X")])
    assert branch_keys(backend.store, "n") == []


async def inner_fails():
    try:
        await durable.gather(paused_then_cancelled(), bad("inner"))
    finally:
        await record("inner parent cleanup")


@make_durable
async def nested_failure():
    try:
        await durable.gather(inner_fails(), slow_winner())
    except KeyError as e:
        return ("caught", e.args[0])


async def test_a_failure_in_a_nested_group_cancels_outward_after_every_cleanup():
    backend = new_backend()
    assert await nested_failure(orchestration_backend=backend, instance_id="nf") == ("caught", "inner")
    assert Counter(LOG) == Counter([("bad", "inner"), "paused cleanup", "paused cleanup 2", "inner parent cleanup",
                                    "slow cleanup"])
    assert branch_keys(backend.store, "nf") == []


@make_durable
async def with_asyncio_gather():
    first_ = await asyncio.gather(quick("a"), waits("go"))
    second = await asyncio.gather(ok(1), bad("k"), return_exceptions=True)
    return first_, [type(x).__name__ if isinstance(x, BaseException) else x for x in second]


async def test_asyncio_gather_in_durable_code_is_a_durable_gather():
    backend = new_backend()
    await pause_of(with_asyncio_gather, backend, "ag")
    assert (await backend.load_state("ag"))["wait"]["kind"] == "branches"
    backend.publish_event("ag", "go", "G")
    got = await with_asyncio_gather(orchestration_backend=restart(backend), instance_id="ag")
    assert got == (["a", "G"], [1, "KeyError"])


def as_task(coro):
    """A plain function that starts a task (the compiler refuses create_task only in durable code)."""
    return asyncio.ensure_future(coro)


@make_durable
async def gathers_a_task():
    try:
        await durable.gather(as_task(asyncio.sleep(0, "t")))
    except TypeError as e:
        return str(e)


@make_durable
async def gathers_nothing():
    got = await durable.gather()
    also = await asyncio.gather()
    return got, also


async def test_a_task_is_refused_and_gather_of_nothing_is_an_empty_list():
    msg = await gathers_a_task(orchestration_backend=new_backend(), instance_id="t")
    assert "task or future" in msg and "cannot be a durable branch" in msg
    assert await gathers_nothing(orchestration_backend=new_backend(), instance_id="z") == ([], [])


async def _fails_once(tag):
    LOG.append(tag)
    if PLAN.get("fail") == tag:
        del PLAN["fail"]
        raise ConnectionError(f"{tag} down")
    return tag


fails_once = durable.step(_fails_once)


async def two_steps(tag):
    await record((tag, 0))
    return await fails_once(tag)


@make_durable
async def retried_after_branch_failure():
    return await durable.gather(two_steps("a"), two_steps("b"), slow_winner())


async def test_retrying_an_instance_a_branch_failure_ended_continues_that_branch():
    backend = new_backend()
    PLAN["fail"] = "b"
    # branch a completes; b fails at its second step; the paused branch is cancelled
    with pytest.raises(ConnectionError):
        await retried_after_branch_failure(orchestration_backend=backend, instance_id="rt")
    assert LOG == [("a", 0), "a", ("b", 0), "b", "slow cleanup"]
    assert (await backend.load_state("rt"))["status"] == "failed"
    LOG.clear()
    with pytest.raises(PauseForEventException):  # the cancelled branch starts over: it waits again
        await retried_after_branch_failure.retry("rt", orchestration_backend=restart(backend))
    assert LOG == ["b"], "a kept its result, b went on from its last checkpoint"
    backend.publish_event("rt", "slow")
    got = await retried_after_branch_failure(orchestration_backend=restart(backend), instance_id="rt")
    assert got == ["a", "b", "slow"]
    assert LOG == ["b", "slow cleanup"]
    assert branch_keys(backend.store, "rt") == []


# -- cancelling and deadlines ---------------------------------------------------------------------------------------

async def _cancel_me():
    SHARED["runtime"].request_cancel("from a branch")
    LOG.append("asked")


cancel_me = durable.step(_cancel_me)


async def asks_cancel():
    try:
        await cancel_me()
        await record("never: after the cancel")
    finally:
        await record("asker cleanup")


async def held_in_step():
    try:
        await hold("late")  # released by the test's canceller below
        await record("never: held went on")
    finally:
        await record("held cleanup")


@make_durable
async def cancelled_while_running():
    try:
        await durable.gather(asks_cancel(), paused_then_cancelled())
        await record("never: after the gather")
    finally:
        await record("parent cleanup")


async def test_request_cancel_while_branches_run_runs_every_finally_then_cancels_the_parent():
    backend = new_backend()
    SHARED["runtime"] = rt = cancelled_while_running.runtime(backend, "cr")
    with pytest.raises(InstanceCancelled, match="from a branch"):
        await rt.run(cancelled_while_running)
    assert Counter(LOG) == Counter(["asked", "asker cleanup", "paused cleanup", "paused cleanup 2",
                                    "parent cleanup"])
    assert LOG[-1] == "parent cleanup"
    assert (await backend.load_state("cr"))["status"] == "cancelled"
    assert branch_keys(backend.store, "cr") == []


@make_durable
async def cancelled_from_outside():
    try:
        await durable.gather(held_in_step(), paused_then_cancelled(), quick("q"))
    finally:
        await record("parent cleanup")


async def test_request_cancel_from_outside_reaches_a_branch_in_a_step():
    backend = new_backend()
    rt = cancelled_from_outside.runtime(backend, "co")

    async def canceller():
        while "q" not in LOG:  # the group runs: its other branches ended or paused
            await asyncio.sleep(0.001)
        rt.request_cancel("operator")
        await _release("late")

    task = asyncio.ensure_future(canceller())
    with pytest.raises(InstanceCancelled, match="operator"):
        await asyncio.wait_for(rt.run(cancelled_from_outside), 10)
    await task
    assert Counter(LOG) == Counter(["q", ("released", "late"), "held cleanup", "paused cleanup",
                                    "paused cleanup 2", "parent cleanup"])
    assert LOG[-1] == "parent cleanup"


@make_durable
async def all_paused():
    try:
        await durable.gather(paused_then_cancelled(), slow_winner(), cleanup_pauses())
    finally:
        await record("parent cleanup")


async def test_cancel_while_branches_are_paused_runs_their_cleanup_then_the_parents():
    backend = new_backend()
    await pause_of(all_paused, backend, "cp")
    with pytest.raises(PauseForEventException) as p:  # one cleanup waits for an event
        await all_paused.cancel("cp", orchestration_backend=restart(backend), reason="stop")
    assert p.value.event == "cleanup done"
    assert Counter(LOG) == Counter(["paused cleanup", "paused cleanup 2", "slow cleanup", "cleanup start"])
    backend.publish_event("cp", "cleanup done")
    with pytest.raises(InstanceCancelled, match="stop"):
        await all_paused(orchestration_backend=restart(backend), instance_id="cp")
    assert LOG[-2:] == ["cleanup end", "parent cleanup"]
    assert (await backend.load_state("cp"))["status"] == "cancelled"
    assert branch_keys(backend.store, "cp") == []


async def test_a_second_cancel_while_branches_clean_up_forces_the_end():
    store = InMemoryStateStore()
    backend = new_backend(store)
    await pause_of(all_paused, backend, "sc")
    with pytest.raises(PauseForEventException):
        await all_paused.cancel("sc", orchestration_backend=restart(backend), reason="stop")
    assert (await backend.load_state("sc"))["cancel"] == "stop"
    backend.publish_event("sc", "cleanup done")  # even with its event there, the forced instance runs nothing
    with pytest.raises(InstanceCancelled, match="now"):
        await all_paused.cancel("sc", orchestration_backend=restart(backend), reason="now")
    assert "cleanup end" not in LOG and "parent cleanup" not in LOG
    assert (await backend.load_state("sc"))["status"] == "cancelled"
    assert branch_keys(store, "sc") == []


async def test_force_cancel_deletes_the_branch_states():
    store = InMemoryStateStore()
    backend = new_backend(store)
    await pause_of(all_paused, backend, "fc")
    assert len(branch_keys(store, "fc")) == 3
    with pytest.raises(InstanceCancelled):
        await all_paused.cancel("fc", orchestration_backend=restart(backend), force=True)
    assert LOG == []
    assert branch_keys(store, "fc") == []
    assert (await backend.load_state("fc"))["status"] == "cancelled"


async def long_nap(tag, seconds):
    try:
        await sleep(seconds)
        return tag
    except DeadlineExceeded:
        await record(("late", tag))
        raise


@make_durable(deadline=60.0)
async def branches_past_deadline():
    try:
        return await durable.gather(long_nap("a", 3600), long_nap("b", 7200), waits("never"))
    except DeadlineExceeded:
        await record("parent late")
        return "timed out"


async def test_deadline_reaches_the_parent_through_paused_branches():
    clock = Clock(T0)
    backend = new_backend()
    p = await pause_of(branches_past_deadline, backend, "dl", clock=clock)
    assert p.due == T0 + 60
    wait = (await backend.load_state("dl"))["wait"]
    assert wait["due"] == T0 + 60 and all(w["due"] == T0 + 60 for w in wait["waits"])
    clock.now = T0 + 59
    await pause_of(branches_past_deadline, restart(backend), "dl", clock=clock)
    assert LOG == []
    clock.now = T0 + 60
    got = await branches_past_deadline.runtime(restart(backend), "dl", clock=clock).run(branches_past_deadline)
    assert got == "timed out"
    assert LOG[-1] == "parent late"
    assert ("late", "a") in LOG and ("late", "b") in LOG


async def _advance(seconds):
    SHARED["clock"].now += seconds
    LOG.append(("advance", seconds))


advance = durable.step(_advance)


async def runs_past_deadline():
    try:
        await advance(5)
        await advance(20)  # the deadline passes during this step: raised at the next await
        await record("never: past the deadline")
    finally:
        await record("runner cleanup")


@make_durable(deadline=10.0)
async def deadline_while_running():
    try:
        await durable.gather(runs_past_deadline(), paused_then_cancelled())
    except DeadlineExceeded:
        await record("parent late")
        return "timed out"


async def test_deadline_passing_while_a_branch_runs_reaches_the_parent_after_every_cleanup():
    SHARED["clock"] = clock = Clock(T0)
    backend = new_backend()
    got = await deadline_while_running.runtime(backend, "dr", clock=clock).run(deadline_while_running)
    assert got == "timed out"
    assert Counter(LOG) == Counter([("advance", 5), ("advance", 20), "runner cleanup", "paused cleanup",
                                    "paused cleanup 2", "parent late"])
    assert LOG[-1] == "parent late"


# -- retries in a branch ----------------------------------------------------------------------------------------------

async def _flaky(tag):
    LOG.append((tag, current_attempt()))
    if current_attempt() < 3:
        raise ConnectionError("down")
    return tag


flaky = durable.step(_flaky, retry=RetryPolicy(max_attempts=5, initial_interval=10.0, backoff=2.0, jitter=0.0))


async def retried(tag):
    got = await flaky(tag)
    await record(("retried", tag))
    return got


@make_durable
async def retry_in_branch():
    return await durable.gather(retried("r"), waits("go"), quick("q"))


async def test_a_step_backing_off_pauses_only_its_branch():
    clock = Clock(T0)
    backend = new_backend()
    p = await pause_of(retry_in_branch, backend, "rb", clock=clock)
    assert p.due == T0 + 10
    wait = (await backend.load_state("rb"))["wait"]
    timer = wait["waits"][0]
    assert (timer["branch"], timer["kind"], timer.get("retry"), timer["due"]) == ("0.0", "timer", True, T0 + 10)
    assert LOG == [("r", 1), "q"]
    clock.now = T0 + 10
    p = await pause_of(retry_in_branch, restart(backend), "rb", clock=clock)
    assert p.due == T0 + 30
    backend.publish_event("rb", "go", "G")
    clock.now = T0 + 30
    got = await retry_in_branch.runtime(restart(backend), "rb", clock=clock).run(retry_in_branch)
    assert got == ["r", "G", "q"]
    assert LOG == [("r", 1), "q", ("r", 2), ("r", 3), ("retried", "r"), ("got", "go", "G")] or \
        LOG == [("r", 1), "q", ("r", 2), ("got", "go", "G"), ("r", 3), ("retried", "r")]


# -- events taken by a branch ----------------------------------------------------------------------------------------

async def _after_event(tag):
    if PLAN.get("crash") == tag:
        PLAN.pop("crash")
        raise Crash()
    LOG.append(("after", tag))


after_event = durable.step(_after_event)


async def takes(tag):
    got = await wait_for_event("go")
    await after_event(tag)
    return got


@make_durable
async def two_takers():
    return await durable.gather(takes("a"), takes("b"))


async def _both_paused(backend, iid):
    await pause_of(two_takers, backend, iid)
    backend.publish_event(iid, "go", 1)


async def test_a_crash_before_the_branch_checkpoint_does_not_lose_the_event():
    backend = new_backend()
    await _both_paused(backend, "ev")
    PLAN["crash"] = "a"
    with pytest.raises(Crash):
        await two_takers(orchestration_backend=restart(backend), instance_id="ev")
    backend = restart(backend)
    assert backend.pending_events("ev") == [("go", 1)], "the event was taken, not yet recorded: still there"
    await pause_of(two_takers, backend, "ev")
    assert LOG == [("after", "a")]
    assert restart(backend).pending_events("ev") == []
    backend.publish_event("ev", "go", 2)
    assert await two_takers(orchestration_backend=restart(backend), instance_id="ev") == [1, 2]
    assert LOG == [("after", "a"), ("after", "b")]


async def test_a_crash_after_the_branch_checkpoint_does_not_deliver_the_event_twice():
    backend = new_backend()
    await _both_paused(backend, "ev2")

    def die(_iid, _steps):
        if current_branch.get() == "0.0" and ("after", "a") in LOG:
            raise Crash()

    with pytest.raises(Crash):
        await two_takers.runtime(restart(backend), "ev2", on_checkpoint=die).run(two_takers)
    backend = restart(backend)
    assert backend.pending_events("ev2") == [], "branch 0.0's checkpoint recorded the event it took"
    p = await pause_of(two_takers, backend, "ev2")
    assert p.event == "go"
    waits_ = (await backend.load_state("ev2"))["wait"]["waits"]
    assert [w["branch"] for w in waits_] == ["0.1"], "the other branch did not get the same event"
    assert LOG == [("after", "a")]
    backend.publish_event("ev2", "go", 2)
    assert await two_takers(orchestration_backend=restart(backend), instance_id="ev2") == [1, 2]
    assert LOG == [("after", "a"), ("after", "b")]


async def takes_and_holds():
    got = await wait_for_event("go")
    await hold("h")  # the event is taken, not yet recorded: this branch has not saved since
    return got


async def _crash_now():
    if PLAN.pop("crash", None):
        raise Crash()  # the other branch is still in its step: it dies with the process
    await _release("h")


crash_now = durable.step(_crash_now)


async def saves_then_crashes():
    await wait_for_event("start")
    await record("b1")  # this branch's checkpoint: it records "start", not the other branch's "go"
    await crash_now()
    return "b"


@make_durable
async def taker_and_saver():
    return await durable.gather(takes_and_holds(), saves_then_crashes())


async def test_another_branchs_checkpoint_does_not_record_an_event_this_branch_took():
    backend = new_backend()
    await pause_of(taker_and_saver, backend, "ev3")
    backend.publish_event("ev3", "go", 1)
    backend.publish_event("ev3", "start", 2)
    PLAN["crash"] = True
    with pytest.raises(Crash):
        await taker_and_saver(orchestration_backend=restart(backend), instance_id="ev3")
    assert LOG == ["b1"]
    assert restart(backend).pending_events("ev3") == [("go", 1)], "lost with the crash, or kept twice"
    assert await taker_and_saver(orchestration_backend=restart(backend), instance_id="ev3") == [1, "b"]
    assert LOG == ["b1", ("released", "h")]
    assert restart(backend).pending_events("ev3") == []


# -- a fresh process ------------------------------------------------------------------------------------------------

CHILD = textwrap.dedent('''
    import asyncio, json, sys
    from durable import DiskStateStore, DurableBackend, PauseForEventException
    from tests.core import test_branches as m
    backend = DurableBackend(DiskStateStore(sys.argv[1]), signing_key="k")
    for name, payload in json.loads(sys.argv[2]):
        backend.publish_event("disk", name, payload)
    try:
        out = ["result", asyncio.run(m.two_events(orchestration_backend=backend, instance_id="disk"))]
    except PauseForEventException as p:
        out = ["paused", p.event]
    print(json.dumps({"out": out, "log": m.LOG}))
''')


def test_paused_branches_resume_in_a_fresh_process(tmp_path):
    store = tmp_path / "state"
    backend = DurableBackend(DiskStateStore(store), signing_key="k")
    with pytest.raises(PauseForEventException):
        asyncio.run(two_events(orchestration_backend=backend, instance_id="disk"))
    del backend

    def child(events):
        out = subprocess.run([sys.executable, "-c", CHILD, str(store), json.dumps(events)], capture_output=True,
                             text=True, cwd=str(ROOT), env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
                             timeout=120)
        assert out.returncode == 0, out.stderr[-3000:]
        return json.loads(out.stdout.strip().splitlines()[-1])

    assert child([["a", 1]]) == {"out": ["paused", "b"], "log": [["got", "a", 1]]}
    assert child([["b", 2]]) == {"out": ["result", 3], "log": [["got", "b", 2], "both"]}
    assert child([]) == {"out": ["result", 3], "log": []}
    assert not [p for p in store.rglob("*") if "branch" in p.name]


# -- the native run: the same calls outside durable code ----------------------------------------------------------

async def test_outside_durable_code_gather_and_first_run_with_asyncio():
    async def value(x):
        await asyncio.sleep(0)
        return x

    async def boom():
        raise ValueError("x")

    async def slow():
        try:
            await asyncio.sleep(10)
        finally:
            LOG.append("slow cancelled")

    assert await durable.gather(value(1), value(2)) == [1, 2]
    with pytest.raises(ValueError):
        await durable.gather(slow(), boom())
    assert LOG == ["slow cancelled"]
    assert await durable.first(slow(), value("v")) == "v"
    assert LOG == ["slow cancelled", "slow cancelled"]
    with pytest.raises(ValueError, match="at least one"):
        durable.first()
    with pytest.raises(TypeError):
        await durable.gather(1)


async def pair(x):
    return await durable.gather(double(x), double(x + 1))


@make_durable
async def nested_no_waits():
    got = await durable.gather(pair(1), pair(3), return_exceptions=True)
    try:
        await asyncio.gather(pair(5), bad("n"))
    except KeyError as e:
        got.append(e.args[0])
    return got


@pytest.mark.parametrize("program, args", [(doubles, (4,)), (outcomes_in_place, ()), (rendezvous, ()),
                                           (nested_no_waits, ())])
async def test_durable_outcome_equals_the_native_run(program, args):
    native = await program.fn(*args)
    native_log = Counter(LOG)
    SHARED.clear()
    LOG.clear()
    assert await program(*args, orchestration_backend=new_backend(), instance_id="n") == native
    assert Counter(LOG) == native_log
