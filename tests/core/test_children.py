"""Child processes (issue 14): ``durable.start_child`` and ``await child``, in the core (no host hooks).

Without the backend's optional hooks the core runs a child inline (until it ends or pauses) and cancels it
inline; a paused child is resumed by running its program with its id, and its parent by running the parent
again (nothing wakes it: that is the host's ``child_ended``). ``LOG`` is the outside world.
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
    DiskStateStore,
    DurableBackend,
    DurableError,
    InMemoryStateStore,
    InstanceCancelled,
    PauseForEventException,
    make_durable,
    start_child,
    wait_for_event,
)
from durable.children import CHILD_EVENT, ChildHandle

ROOT = Path(__file__).resolve().parents[2]
LOG: list = []
PLAN: dict = {}


class Crash(BaseException):
    """A simulated process death."""


@pytest.fixture(autouse=True)
def _clean():
    LOG.clear()
    PLAN.clear()
    yield
    LOG.clear()
    PLAN.clear()


async def _record(what, value=None):
    LOG.append(what if value is None else (what, value))
    return value


record = durable.step(_record)


def new_backend():
    return DurableBackend(InMemoryStateStore())


def restart(backend):
    return DurableBackend(backend.store)


async def status(backend, iid):
    state = await backend.load_state(iid)
    return None if state is None else state["status"]


# -- children ------------------------------------------------------------------------------------------------------

@make_durable
async def square(x):
    await record(("square", x))
    return x * x


@make_durable
async def failing(message):
    await record(("failing", message))
    raise ValueError(message)


@make_durable
async def waiting(name):
    try:
        got = await wait_for_event(name)
        await record(("child got", got))
        return got
    finally:
        await record(("child cleanup", name))


# -- start and await -----------------------------------------------------------------------------------------------

@make_durable
async def parent_of_square():
    child = await start_child(square, 7)
    await record(("handle", child.instance_id))
    return await child


async def test_start_child_then_await_it_returns_its_result():
    backend = new_backend()
    assert await parent_of_square(orchestration_backend=backend, instance_id="p") == 49
    assert LOG == [("square", 7), ("handle", "p/child-0")]
    child = await backend.load_state("p/child-0")
    assert child["status"] == "completed" and child["result"] == 49 and child["parent"] == ("p", "cancel")
    parent = await backend.load_state("p")
    assert parent["status"] == "completed" and not parent.get("children")


@make_durable
async def parent_of_failing():
    child = await start_child(failing, "no")
    try:
        await child
    except ValueError as e:
        await record(("caught", str(e)))
        return "handled"


async def test_a_failing_childs_exception_is_raised_at_the_await_in_the_parent():
    backend = new_backend()
    assert await parent_of_failing(orchestration_backend=backend, instance_id="pf") == "handled"
    assert LOG == [("failing", "no"), ("caught", "no")]
    assert await status(backend, "pf/child-0") == "failed"


@make_durable
async def parent_of_waiting():
    child = await start_child(waiting, "go", instance_id="kid")
    got = await child
    await record(("parent got", got))
    return ("done", got)


async def test_a_child_paused_on_an_event_pauses_its_parent_until_it_ends():
    backend = new_backend()
    with pytest.raises(PauseForEventException) as p:
        await parent_of_waiting(orchestration_backend=backend, instance_id="pw")
    assert p.value.event == CHILD_EVENT + "kid"
    parent = await backend.load_state("pw")
    assert parent["status"] == "paused"
    assert parent["wait"]["kind"] == "child" and parent["wait"]["child"] == "kid"
    assert (await backend.load_state("kid"))["wait"]["event"] == "go"
    # the parent run again before the child ended: still paused, the child untouched
    with pytest.raises(PauseForEventException):
        await parent_of_waiting(orchestration_backend=restart(backend), instance_id="pw")
    backend.publish_event("kid", "go", "payload")
    assert await waiting(orchestration_backend=restart(backend), instance_id="kid") == "payload"
    assert await parent_of_waiting(orchestration_backend=restart(backend), instance_id="pw") == ("done", "payload")
    assert LOG == [("child got", "payload"), ("child cleanup", "go"), ("parent got", "payload")]


@make_durable
async def awaits_cancelled_child():
    child = await start_child(waiting, "go", instance_id="doomed")
    try:
        return await child
    except InstanceCancelled:
        await record("child was cancelled")
        return "carried on"


async def test_a_cancelled_childs_cancellation_is_raised_at_the_await():
    backend = new_backend()
    with pytest.raises(PauseForEventException):
        await awaits_cancelled_child(orchestration_backend=backend, instance_id="ac")
    with pytest.raises(InstanceCancelled):
        await waiting.cancel("doomed", orchestration_backend=restart(backend))
    assert await awaits_cancelled_child(orchestration_backend=restart(backend), instance_id="ac") == "carried on"
    assert LOG == [("child cleanup", "go"), "child was cancelled"]


@make_durable
async def cancelled_parent():
    child = await start_child(waiting, "go", instance_id="orphan")
    try:
        return await child
    finally:
        await record("parent cleanup")


async def test_cancelling_a_parent_paused_on_a_child_cancels_the_child_too():
    backend = new_backend()
    with pytest.raises(PauseForEventException):
        await cancelled_parent(orchestration_backend=backend, instance_id="cp")
    with pytest.raises(InstanceCancelled):
        await cancelled_parent.cancel("cp", orchestration_backend=restart(backend), reason="stop")
    assert await status(backend, "cp") == "cancelled"
    assert await status(backend, "orphan") == "cancelled"
    assert LOG == ["parent cleanup", ("child cleanup", "go")]


# -- idempotent by id ------------------------------------------------------------------------------------------------

class FailingSaves(DurableBackend):
    """A backend whose save of ``PLAN["die on"]``'s state dies once (the process ends before it is written)."""

    async def save_state(self, instance_id, state):
        if PLAN.get("die on") == instance_id and PLAN.get("armed") and state.get("children"):
            PLAN["armed"] = False
            raise Crash()
        await super().save_state(instance_id, state)


@make_durable
async def starts_then_waits():
    child = await start_child(square, 3)
    await record("started")
    return await child


async def test_a_child_is_not_started_twice_when_the_parent_crashed_before_saving_its_start():
    backend = FailingSaves(InMemoryStateStore())
    PLAN.update({"die on": "ps", "armed": True})
    with pytest.raises(Crash):
        await starts_then_waits(orchestration_backend=backend, instance_id="ps")
    assert LOG == [("square", 3)]
    assert await status(backend, "ps/child-0") == "completed"
    assert await starts_then_waits(orchestration_backend=restart(backend), instance_id="ps") == 9
    assert LOG == [("square", 3), "started"], "the child ran once"


@make_durable
async def adopts(iid):
    try:
        child = await start_child(square, 2, instance_id=iid)
    except DurableError as e:
        return ("refused", str(e))
    return await child


async def test_an_existing_instance_that_is_not_this_parents_child_is_refused():
    backend = new_backend()
    assert await square(5, orchestration_backend=backend, instance_id="stranger") == 25
    got = await adopts("stranger", orchestration_backend=backend, instance_id="pa")
    assert got[0] == "refused" and "stranger" in got[1] and "not a child of 'pa'" in got[1]
    # another parent's child is not this one's either
    assert await adopts("mine", orchestration_backend=backend, instance_id="pa2") == 4
    got = await adopts("mine", orchestration_backend=backend, instance_id="pa3")
    assert got[0] == "refused"
    assert LOG == [("square", 5), ("square", 2)]


# -- several children --------------------------------------------------------------------------------------------------

@make_durable
async def gathers_children():
    a = await start_child(waiting, "a", instance_id="ga")
    b = await start_child(square, 4, instance_id="gb")
    c = await start_child(waiting, "c", instance_id="gc")
    return await durable.gather(a, b, c)


async def test_gather_of_child_handles_is_one_children_wait():
    backend = new_backend()
    with pytest.raises(PauseForEventException):
        await gathers_children(orchestration_backend=backend, instance_id="g")
    state = await backend.load_state("g")
    wait = state["wait"]
    assert wait["kind"] == "children" and wait["children"] == ["ga", "gb", "gc"] and wait["mode"] == "all"
    assert not state.get("group"), "handles only: no branch"
    backend.publish_event("gc", "c", "C")
    assert await waiting(orchestration_backend=restart(backend), instance_id="gc") == "C"
    with pytest.raises(PauseForEventException):
        await gathers_children(orchestration_backend=restart(backend), instance_id="g")
    backend.publish_event("ga", "a", "A")
    assert await waiting(orchestration_backend=restart(backend), instance_id="ga") == "A"
    assert await gathers_children(orchestration_backend=restart(backend), instance_id="g") == ["A", 16, "C"]
    assert not (await backend.load_state("g")).get("children")


@make_durable
async def gathers_failing_children(return_exceptions):
    a = await start_child(waiting, "a", instance_id=f"fa{return_exceptions}")
    b = await start_child(failing, "bad", instance_id=f"fb{return_exceptions}")
    try:
        got = await durable.gather(a, b, return_exceptions=return_exceptions)
    except ValueError as e:
        return ("raised", str(e))
    return [type(x).__name__ if isinstance(x, BaseException) else x for x in got]


async def test_gather_of_children_raises_the_first_failure_or_returns_outcomes_in_place():
    backend = new_backend()
    assert await gathers_failing_children(False, orchestration_backend=backend, instance_id="gf") == ("raised", "bad")
    # the parent ended with the other child live: its on_parent_close ("cancel") applies
    assert await status(backend, "faFalse") == "cancelled"
    with pytest.raises(PauseForEventException):
        await gathers_failing_children(True, orchestration_backend=backend, instance_id="gt")
    backend.publish_event("faTrue", "a", "A")
    await waiting(orchestration_backend=backend, instance_id="faTrue")
    assert await gathers_failing_children(True, orchestration_backend=backend, instance_id="gt") == ["A",
                                                                                                    "ValueError"]


@make_durable
async def first_child():
    a = await start_child(waiting, "a", instance_id="fca")
    b = await start_child(waiting, "b", instance_id="fcb")
    return await durable.first(a, b)


async def test_first_of_child_handles_returns_the_first_to_end():
    backend = new_backend()
    with pytest.raises(PauseForEventException):
        await first_child(orchestration_backend=backend, instance_id="fc")
    wait = (await backend.load_state("fc"))["wait"]
    assert wait["kind"] == "children" and wait["mode"] == "first"
    backend.publish_event("fcb", "b", "B")
    await waiting(orchestration_backend=backend, instance_id="fcb")
    assert await first_child(orchestration_backend=restart(backend), instance_id="fc") == "B"
    # the parent ended: the child it did not await to its end is cancelled (policy "cancel")
    assert await status(backend, "fca") == "cancelled"
    assert ("child cleanup", "a") in LOG


async def start_and_await(x):
    child = await start_child(square, x)
    return (child.instance_id, await child)


@make_durable
async def children_in_branches():
    return await durable.gather(start_and_await(2), start_and_await(3))


async def test_children_started_in_parallel_branches_get_distinct_ids():
    backend = new_backend()
    got = await children_in_branches(orchestration_backend=backend, instance_id="cb")
    assert [v for _, v in got] == [4, 9]
    ids = [i for i, _ in got]
    assert len(set(ids)) == 2, f"two branches' children share an id: {ids}"
    assert sorted(LOG) == [("square", 2), ("square", 3)]


async def awaits_a_waiting_child(name):
    child = await start_child(waiting, name, instance_id=f"bw-{name}")
    return await child


@make_durable
async def branch_waits_for_child():
    return await durable.gather(awaits_a_waiting_child("k"), square.fn(5))


async def test_a_branch_paused_on_its_child_resumes_when_the_child_ended():
    backend = new_backend()
    with pytest.raises(PauseForEventException):
        await branch_waits_for_child(orchestration_backend=backend, instance_id="bw")
    waits = (await backend.load_state("bw"))["wait"]["waits"]
    assert [(w["branch"], w["kind"], w["child"]) for w in waits] == [("0.0", "child", "bw-k")]
    backend.publish_event("bw-k", "k", "K")
    assert await waiting(orchestration_backend=restart(backend), instance_id="bw-k") == "K"
    assert await branch_waits_for_child(orchestration_backend=restart(backend), instance_id="bw") == ["K", 25]
    assert Counter(LOG) == Counter([("square", 5), ("child got", "K"), ("child cleanup", "k")])


@make_durable
async def mixes_handles_and_coroutines():
    child = await start_child(waiting, "m", instance_id="mix-kid")
    return await durable.gather(child, square.fn(3), durable.sleep(0))


async def test_a_handle_gathered_with_other_awaitables_is_a_branch_of_its_own():
    backend = new_backend()
    with pytest.raises(PauseForEventException):
        await mixes_handles_and_coroutines(orchestration_backend=backend, instance_id="mix")
    waits = (await backend.load_state("mix"))["wait"]["waits"]
    assert [(w["branch"], w["kind"], w.get("child")) for w in waits] == [("0.0", "child", "mix-kid")]
    backend.publish_event("mix-kid", "m", "M")
    await waiting(orchestration_backend=restart(backend), instance_id="mix-kid")
    assert await mixes_handles_and_coroutines(orchestration_backend=restart(backend), instance_id="mix") == [
        "M", 9, None]
    assert await status(backend, "mix-kid") == "completed"
    assert LOG == [("square", 3), ("child got", "M"), ("child cleanup", "m")]


async def starts_and_leaves(name, policy):
    child = await start_child(waiting, name, instance_id=f"bl-{name}", on_parent_close=policy)
    return child.instance_id


@make_durable
async def branches_leave_children(policy):
    got = await durable.gather(starts_and_leaves("x", policy), starts_and_leaves("y", policy))
    await record("parent returns")
    return got


async def test_a_child_a_branch_did_not_await_is_closed_when_the_instance_ends():
    backend = new_backend()
    assert await branches_leave_children("cancel", orchestration_backend=backend, instance_id="bl") == ["bl-x",
                                                                                                         "bl-y"]
    assert await status(backend, "bl") == "completed"
    assert [await status(backend, c) for c in ("bl-x", "bl-y")] == ["cancelled", "cancelled"]
    assert sorted(LOG[1:]) == [("child cleanup", "x"), ("child cleanup", "y")]


# -- when the parent ends first -------------------------------------------------------------------------------------

@make_durable
async def leaves_child(policy):
    await start_child(waiting, "go", instance_id=f"left-{policy}", on_parent_close=policy)
    await record(("parent returns", policy))
    return "parent value"


async def test_on_parent_close_cancel_cancels_the_live_child_and_runs_its_finally():
    backend = new_backend()
    assert await leaves_child("cancel", orchestration_backend=backend, instance_id="pc") == "parent value"
    assert await status(backend, "left-cancel") == "cancelled"
    assert LOG == [("parent returns", "cancel"), ("child cleanup", "go")]
    assert await status(backend, "pc") == "completed"


async def test_on_parent_close_abandon_leaves_the_child_paused():
    backend = new_backend()
    assert await leaves_child("abandon", orchestration_backend=backend, instance_id="pb") == "parent value"
    assert await status(backend, "left-abandon") == "paused"
    backend.publish_event("left-abandon", "go", 1)
    assert await waiting(orchestration_backend=backend, instance_id="left-abandon") == 1
    assert LOG == [("parent returns", "abandon"), ("child got", 1), ("child cleanup", "go")]


async def test_on_parent_close_wait_keeps_the_parent_paused_until_the_child_ends():
    backend = new_backend()
    with pytest.raises(PauseForEventException) as p:
        await leaves_child("wait", orchestration_backend=backend, instance_id="pwt")
    assert p.value.event == CHILD_EVENT + "left-wait"
    state = await backend.load_state("pwt")
    assert state["status"] == "paused" and state["closing"] == ("ok", "parent value")
    assert state["wait"]["kind"] == "children" and state["wait"]["children"] == ["left-wait"]
    with pytest.raises(PauseForEventException):
        await leaves_child("wait", orchestration_backend=restart(backend), instance_id="pwt")
    assert LOG == [("parent returns", "wait")], "the parent's code does not run again"
    backend.publish_event("left-wait", "go", 1)
    assert await waiting(orchestration_backend=restart(backend), instance_id="left-wait") == 1
    assert await leaves_child("wait", orchestration_backend=restart(backend), instance_id="pwt") == "parent value"
    state = await backend.load_state("pwt")
    assert state["status"] == "completed" and state["result"] == "parent value" and "closing" not in state


@make_durable
async def awaited_child_is_not_closed():
    child = await start_child(square, 6, on_parent_close="cancel")
    await child
    return "ok"


async def test_a_child_awaited_to_its_end_is_forgotten_by_the_parent():
    backend = new_backend()
    assert await awaited_child_is_not_closed(orchestration_backend=backend, instance_id="af") == "ok"
    assert not (await backend.load_state("af")).get("children")
    assert await status(backend, "af/child-0") == "completed"


CHILD = textwrap.dedent('''
    import asyncio, json, sys
    from durable import DiskStateStore, DurableBackend, PauseForEventException
    from tests.core import test_children as m

    async def main(step):
        backend = DurableBackend(DiskStateStore(sys.argv[1]), signing_key="k")
        if step == "child":
            backend.publish_event("kid", "go", "from another process")
            return await m.waiting(orchestration_backend=backend, instance_id="kid")
        try:
            return await m.parent_of_waiting(orchestration_backend=backend, instance_id="disk")
        except PauseForEventException as p:
            return ["paused", p.event]

    print(json.dumps({"out": asyncio.run(main(sys.argv[2])), "log": m.LOG}))
''')


def test_a_child_and_its_parent_resume_in_fresh_processes(tmp_path):
    store = tmp_path / "state"
    backend = DurableBackend(DiskStateStore(store), signing_key="k")
    with pytest.raises(PauseForEventException):
        asyncio.run(parent_of_waiting(orchestration_backend=backend, instance_id="disk"))
    del backend

    def run(step):
        out = subprocess.run([sys.executable, "-c", CHILD, str(store), step], capture_output=True, text=True,
                             cwd=str(ROOT), env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, timeout=120)
        assert out.returncode == 0, out.stderr[-3000:]
        return json.loads(out.stdout.strip().splitlines()[-1])

    assert run("parent") == {"out": ["paused", CHILD_EVENT + "kid"], "log": []}
    assert run("child") == {"out": "from another process",
                            "log": [["child got", "from another process"], ["child cleanup", "go"]]}
    assert run("parent") == {"out": ["done", "from another process"],
                             "log": [["parent got", "from another process"]]}
    assert run("parent") == {"out": ["done", "from another process"], "log": []}


# -- bad arguments ---------------------------------------------------------------------------------------------------

async def not_a_program():
    return 1


@make_durable
async def bad_start(kind):
    try:
        if kind == "program":
            await start_child(not_a_program)
        elif kind == "policy":
            await start_child(square, 1, on_parent_close="later")
        elif kind == "id":
            await start_child(square, 1, instance_id="")
        elif kind == "long id":
            await start_child(square, 1, instance_id="x" * 300)
        elif kind == "own id":
            await start_child(square, 1, instance_id="bad-own id")
    except (TypeError, ValueError) as e:
        return (type(e).__name__, str(e))
    return "accepted"


@pytest.mark.parametrize("kind, error, words", [
    ("program", "TypeError", "durable program"),
    ("policy", "ValueError", "on_parent_close"),
    ("id", "ValueError", "instance_id"),
    ("long id", "ValueError", "at most 255"),
    ("own id", "ValueError", "its parent's instance_id"),
])
async def test_bad_arguments_are_clear_errors_the_parent_can_catch(kind, error, words):
    backend = new_backend()
    got = await bad_start(kind, orchestration_backend=backend, instance_id=f"bad-{kind}")
    assert got[0] == error and words in got[1], got
    assert LOG == []


async def test_start_child_and_a_handle_outside_durable_code_are_refused():
    with pytest.raises(RuntimeError, match="directly inside a durable function"):
        await start_child(square, 1)
    with pytest.raises(RuntimeError, match="must be written in the durable function"):
        await ChildHandle("x", square)
    with pytest.raises(TypeError):
        start_child(not_a_program)
