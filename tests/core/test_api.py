"""The seed's public API and the pause/resume contract of a program."""

import asyncio
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import durable
from durable import (
    DurableBackend,
    EventTimeout,
    InMemoryStateStore,
    PauseForEventException,
    TimerPause,
    make_durable,
    sleep,
    sleep_until,
    wait_for_event,
)

ROOT = Path(__file__).resolve().parents[2]
calls: list = []


def run(coro):
    return asyncio.run(coro)


def test_seed_names_exist():
    for name in ["DurableRuntime", "DurableProgram", "CallStack", "FunctionCall", "CodeBlock", "OrchestrationBackend",
                 "DurableBackend", "StateStore", "InMemoryStateStore", "DiskStateStore", "DurableAstTransformer",
                 "make_durable", "PauseForEventException", "CheckpointException", "wait_for_event", "sleep"]:
        assert hasattr(durable, name), name


def test_seed_quick_start_runs_unchanged(tmp_path):
    """The seed README's Quick Start, verbatim, prints what the README says."""
    script = textwrap.dedent('''
        import asyncio
        from durable import DurableBackend, InMemoryStateStore, PauseForEventException, make_durable

        # Define your async function
        async def greet(name: str):
            print("waiting for permission to greet")
            raise PauseForEventException("allow")
            return f"hello {name}"

        # Make it durable
        durable_greet = make_durable(greet)

        async def main():
            backend = DurableBackend(InMemoryStateStore())

            async def run_once():
                # Triggers runtime execution; will pause on PauseForEventException
                try:
                    return await durable_greet("Ada", orchestration_backend=backend, instance_id="greet-1")
                except PauseForEventException as e:
                    print(f"paused for event {e.event}")

            await run_once()                 # pauses and persists state
            backend.publish_event("greet-1", "allow")  # deliver event
            result = await durable_greet("Ada", orchestration_backend=backend, instance_id="greet-1")
            print(result)                    # "hello Ada"

        asyncio.run(main())
    ''')
    path = tmp_path / "quickstart.py"
    path.write_text(script)
    out = subprocess.run([sys.executable, str(path)], capture_output=True, text=True, cwd=ROOT,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["waiting for permission to greet", "paused for event allow", "hello Ada"]


async def effect(tag):
    calls.append(tag)
    return tag


@make_durable
async def approval(amount):
    await effect("submitted")
    decision = await wait_for_event("decision")
    await effect(("decided", decision))
    return {"amount": amount, "decision": decision}


def test_resume_without_event_runs_nothing():
    calls.clear()
    b = DurableBackend()
    for _ in range(3):
        with pytest.raises(PauseForEventException) as e:
            run(approval(10, orchestration_backend=b, instance_id="i"))
        assert e.value.event == "decision"
        assert type(e.value) is PauseForEventException
    assert calls == ["submitted"]
    b.publish_event("i", "decision", "yes")
    assert run(approval(10, orchestration_backend=b, instance_id="i")) == {"amount": 10, "decision": "yes"}
    assert calls == ["submitted", ("decided", "yes")]


def test_completed_returns_stored_result_and_runs_nothing():
    calls.clear()
    b = DurableBackend()
    b.publish_event("c", "decision", "no")
    first = run(approval(5, orchestration_backend=b, instance_id="c"))
    n = len(calls)
    again = run(approval(999, orchestration_backend=b, instance_id="c"))
    assert again == first == {"amount": 5, "decision": "no"}
    assert len(calls) == n


@make_durable
async def failing(x):
    await effect("before")
    raise KeyError(x)


def test_failed_reraises_stored_error_and_runs_nothing():
    calls.clear()
    b = DurableBackend()
    with pytest.raises(KeyError):
        run(failing("k", orchestration_backend=b, instance_id="f"))
    with pytest.raises(KeyError) as e:
        run(failing("k", orchestration_backend=b, instance_id="f"))
    assert e.value.args == ("k",)
    assert calls == ["before"]


@make_durable
async def two_events():
    a = await wait_for_event("a")
    b = await wait_for_event("b")
    c = await wait_for_event("a")
    return a, b, c


def test_events_published_early_are_kept_and_consumed_once():
    b = DurableBackend()
    b.publish_event("e", "b", 2)
    b.publish_event("e", "a", 1)
    b.publish_event("e", "a", 3)
    assert run(two_events(orchestration_backend=b, instance_id="e")) == (1, 2, 3)
    assert b.pending_events("e") == []


def test_an_event_is_consumed_once():
    b = DurableBackend()
    b.publish_event("o", "a", 1)
    b.publish_event("o", "b", 2)
    with pytest.raises(PauseForEventException) as e:
        run(two_events(orchestration_backend=b, instance_id="o"))
    assert e.value.event == "a"
    b.publish_event("o", "a", 5)
    assert run(two_events(orchestration_backend=b, instance_id="o")) == (1, 2, 5)


@make_durable
async def inner_pauser(tag):
    got = await wait_for_event(tag)
    return got * 2


@make_durable
async def outer_caller():
    x = await inner_pauser("one")
    raise_here = x + 1
    y = await inner_pauser("two")
    return raise_here, y


def test_nested_durable_call_pauses_and_resumes():
    b = DurableBackend()
    with pytest.raises(PauseForEventException):
        run(outer_caller(orchestration_backend=b, instance_id="n"))
    b.publish_event("n", "one", 10)
    with pytest.raises(PauseForEventException) as e:
        run(outer_caller(orchestration_backend=b, instance_id="n"))
    assert e.value.event == "two"
    b.publish_event("n", "two", 1)
    assert run(outer_caller(orchestration_backend=b, instance_id="n")) == (21, 2)


class Clock:
    def __init__(self):
        self.t = 1_000_000.0

    def __call__(self):
        return self.t


@make_durable
async def napper():
    await effect("sleep")
    await sleep(60)
    await effect("woke")
    try:
        await wait_for_event("reply", timeout=30)
    except EventTimeout:
        await effect("timeout")
    await sleep_until(2_000_000.0)
    return "done"


def test_durable_timers_with_injected_clock():
    calls.clear()
    b = DurableBackend()
    clock = Clock()
    rt = lambda: napper.runtime(b, "t", clock=clock)  # noqa: E731
    with pytest.raises(TimerPause) as e:
        run(rt().run(napper))
    assert e.value.due == clock.t + 60
    assert isinstance(e.value, PauseForEventException)
    clock.t += 59
    with pytest.raises(TimerPause):
        run(rt().run(napper))
    assert calls == ["sleep"]
    clock.t += 1
    with pytest.raises(PauseForEventException) as e:
        run(rt().run(napper))
    assert e.value.event == "reply" and e.value.due == clock.t + 30
    clock.t += 31
    with pytest.raises(TimerPause) as e:
        run(rt().run(napper))
    assert e.value.due == 2_000_000.0
    assert calls == ["sleep", "woke", "timeout"]
    clock.t = 2_000_000.0
    assert run(rt().run(napper)) == "done"


def test_real_short_sleep_resumes_after_deadline():
    b = DurableBackend()

    async def go():
        while True:
            try:
                return await sleeper(orchestration_backend=b, instance_id="s")
            except TimerPause as p:
                await asyncio.sleep(max(0.0, p.due - __import__("time").time()))

    assert run(go()) == "rested"


@make_durable
async def sleeper():
    await sleep(0.05)
    return "rested"


def test_instance_ids_are_independent():
    b = DurableBackend(InMemoryStateStore())
    for i in range(3):
        with pytest.raises(PauseForEventException):
            run(approval(i, orchestration_backend=b, instance_id=f"x{i}"))
    b.publish_event("x1", "decision", "ok")
    assert run(approval(1, orchestration_backend=b, instance_id="x1"))["decision"] == "ok"
    with pytest.raises(PauseForEventException):
        run(approval(0, orchestration_backend=b, instance_id="x0"))


def test_publish_event_validates_input():
    b = DurableBackend()
    with pytest.raises(ValueError):
        b.publish_event("", "a")
    with pytest.raises(ValueError):
        b.publish_event("i", "")
    with pytest.raises(TypeError):
        b.publish_event("i", "a", lambda: 1)
    assert b.pending_events("i") == []


def test_publish_event_works_from_async_code():
    b = DurableBackend()

    async def main():
        with pytest.raises(PauseForEventException):
            await approval(1, orchestration_backend=b, instance_id="as")
        b.publish_event("as", "decision", "async")
        return await approval(1, orchestration_backend=b, instance_id="as")

    assert run(main())["decision"] == "async"


def test_wait_primitives_refuse_outside_durable_code():
    async def plain():
        await wait_for_event("x")

    with pytest.raises(RuntimeError, match="inside a durable function"):
        run(plain())


def test_decorator_and_call_forms():
    async def f(a, b=2, *rest, k=3, **kw):
        await effect(None)
        return a, b, rest, k, kw

    prog = make_durable(f)
    assert run(prog(1, orchestration_backend=DurableBackend())) == (1, 2, (), 3, {})
    assert run(prog(1, 5, 6, k=7, z=8, orchestration_backend=DurableBackend())) == (1, 5, (6,), 7, {"z": 8})
    named = make_durable(name="custom")(f)
    assert named.name == "custom"


@make_durable
async def assigned():
    return await wait_for_event("approve", timeout=60, assignee="group:finance", form="myapp.forms.Decision")


def test_wait_metadata_is_saved_with_the_wait():
    from durable import signing

    b = DurableBackend()
    with pytest.raises(PauseForEventException):
        run(assigned(orchestration_backend=b, instance_id="m"))
    state = signing.loads(b.store.load_blob("state:m"))
    assert state["wait"]["meta"] == {"assignee": "group:finance", "form": "myapp.forms.Decision"}
    b.publish_event("m", "approve", {"ok": True})
    assert run(assigned(orchestration_backend=b, instance_id="m")) == {"ok": True}
