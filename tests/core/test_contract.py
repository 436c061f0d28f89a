"""The core's contract with hosts: the saved state's keys, a frame's user locals and layout, the public modules."""

from __future__ import annotations

import asyncio

import pytest

import durable
from durable import DurableBackend, PauseForEventException, SavedState, WaitInfo, make_durable, wait_for_event


@make_durable
async def closure_program(start: int):
    shared = [start, start + 1]

    def total() -> int:
        return sum(shared) + later

    answer = 0
    for step in range(3):  # paused inside the loop: its iterator is a compiler temporary of the frame
        shared.append(step)
        if step == 1:
            answer = await wait_for_event("go", title="Go?")
    later = answer
    return total()


def paused_state(backend: DurableBackend, instance_id: str) -> SavedState:
    with pytest.raises(PauseForEventException):
        asyncio.run(closure_program(5, orchestration_backend=backend, instance_id=instance_id))
    state = backend.load_state_sync(instance_id)
    assert state is not None
    return state


def test_saved_state_has_the_documented_keys():
    state = paused_state(DurableBackend(), "keys")
    assert set(state) <= SavedState.__required_keys__ | SavedState.__optional_keys__
    assert SavedState.__required_keys__ <= set(state)
    assert state["status"] == "paused" and state["steps"] == 1 and state["program"] == closure_program.name
    wait = state["wait"]
    assert wait is not None
    assert set(wait) <= WaitInfo.__required_keys__ | WaitInfo.__optional_keys__
    assert (wait["kind"], wait.get("event"), wait.get("meta")) == ("event", "go", {"title": "Go?"})


def test_user_locals_unwrap_cells_and_hide_compiler_temporaries():
    state = paused_state(DurableBackend(), "locals")
    frame = state["stack"].frames[0]
    assert any(name.startswith("_dur__") for name in frame.locals)  # the loop's iterator, the hidden def
    shown = frame.user_locals()
    assert shown["shared"] == [5, 6, 0, 1] and shown["answer"] == 0 and shown["start"] == 5 and shown["step"] == 1
    assert "later" not in shown  # a cell not assigned yet, like an unassigned local
    assert not any(name.startswith("_dur__") for name in shown)
    assert frame.layout_hash == frame.compiled.layout_hash == frame.fingerprint[1]


def test_set_user_local_writes_inside_the_cell_the_closure_sees():
    backend = DurableBackend()
    state = paused_state(backend, "edit")
    frame = state["stack"].frames[0]
    frame.set_user_local("shared", [100])
    frame.set_user_local("start", 7)
    assert frame.user_locals()["shared"] == [100] and frame.locals["start"] == 7
    for name in ("_dur__L", "missing", "later"):
        with pytest.raises(KeyError):
            frame.set_user_local(name, 1)
    asyncio.run(backend.save_state("edit", state))
    backend.publish_event("edit", "go", 1)
    assert asyncio.run(closure_program(orchestration_backend=backend, instance_id="edit")) == 103


def test_public_names():
    assert durable.declared_program(closure_program.fn) is closure_program
    blob = durable.signing.dumps({"a": 1}, b"k" * 32, b"ctx")
    assert durable.signing.loads(blob, b"k" * 32, b"ctx") == {"a": 1}
    assert set(durable.signing.__all__) == {"coerce_key", "dumps", "loads", "sign_pickled", "verify"}
    assert durable.FunctionCall().layout_hash is None and durable.FunctionCall().user_locals() == {}
