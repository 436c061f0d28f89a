"""durable.set_status() / durable.publish(): saved with the next checkpoint, no write of their own."""

import asyncio
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import durable
from durable import DurableBackend, DurableError, InMemoryStateStore, PauseForEventException, make_durable
from durable.progress import configure, limits

ROOT = Path(__file__).resolve().parents[2]


def run(coro):
    return asyncio.run(coro)


class Recording(DurableBackend):
    """Records what every save_state call saw (status, progress, published), and counts the calls."""

    def __init__(self):
        super().__init__(InMemoryStateStore())
        self.saved: list[tuple] = []

    async def save_state(self, instance_id, state):
        self.saved.append((state["steps"], state["status"], state.get("progress"), dict(state.get("published") or {})))
        await super().save_state(instance_id, state)


async def noop(x=None):
    return x


@make_durable
async def staged(n):
    for i in range(n):
        durable.set_status({"stage": "work", "percent": 100 * i // n})
        await noop(i)
    durable.set_status({"stage": "done", "percent": 100})
    durable.publish("answer", 42)
    return "ok"


@make_durable
async def unreported(n):
    for i in range(n):
        await noop(i)
    return "ok"


def test_status_saved_with_the_next_checkpoint_and_no_extra_save():
    rec = Recording()
    assert run(staged(4, orchestration_backend=rec, instance_id="s1")) == "ok"
    plain = Recording()
    run(unreported(4, orchestration_backend=plain, instance_id="u1"))
    assert len(rec.saved) == len(plain.saved)  # set_status/publish add no save_state call
    # each step's checkpoint carries the status set before that step; the completion carries the last one
    assert [s[2] for s in rec.saved] == [{"stage": "work", "percent": p} for p in (0, 25, 50, 75)] + [
        {"stage": "done", "percent": 100}]
    assert rec.saved[-1][1] == "completed" and rec.saved[-1][3] == {"answer": 42}
    assert all(s[3] == {} for s in rec.saved[:-1])  # published with the completion, not before


@make_durable
async def reports_then_waits():
    durable.set_status({"stage": "waiting for approval"})
    durable.publish("ticket", "T-1")
    approved = await durable.wait_for_event("approve")
    before = durable.get_status()
    durable.set_status({"stage": "approved", "by": approved, "before": before["stage"]})
    await noop()
    return durable.published("ticket")


def test_status_saved_with_a_pause_and_kept_on_resume():
    rec = Recording()
    with pytest.raises(PauseForEventException):
        run(reports_then_waits(orchestration_backend=rec, instance_id="w1"))
    assert rec.saved[-1][1:] == ("paused", {"stage": "waiting for approval"}, {"ticket": "T-1"})
    rec.publish_event("w1", "approve", "ann")
    assert run(reports_then_waits(orchestration_backend=rec, instance_id="w1")) == "T-1"
    assert rec.saved[-1][2] == {"stage": "approved", "by": "ann", "before": "waiting for approval"}
    state = run(rec.load_state("w1"))
    assert state["progress"]["by"] == "ann" and state["published"] == {"ticket": "T-1"}


def test_value_is_copied_and_unchanged_value_keeps_its_object():
    seen = []

    @make_durable
    async def prog():
        status = {"percent": 1}
        durable.set_status(status)
        status["percent"] = 99  # not reported: the runtime kept a copy
        await noop()
        state = durable.progress.current_runtime.get().state
        first = state["progress"]
        durable.set_status({"percent": 1})  # the same value: the same object (hosts skip the write)
        seen.append(state["progress"] is first and durable.get_status() is not first)
        del state, first
        durable.set_status({"percent": True})  # JSON-different though == says equal
        seen.append(durable.get_status())
        await noop()
        mine = durable.get_status()  # a copy: changing it changes nothing until it is set again
        mine["percent"] = 50
        seen.append(durable.get_status())
        durable.set_status(mine)
        await noop()

    rec = Recording()
    run(prog(orchestration_backend=rec, instance_id="c1"))
    assert rec.saved[0][2] == {"percent": 1}
    assert seen == [True, {"percent": True}, {"percent": True}]
    assert rec.saved[-1][2] == {"percent": 50}


def test_outside_a_run_is_refused():
    with pytest.raises(DurableError, match="outside a durable run"):
        durable.set_status({"x": 1})
    with pytest.raises(DurableError, match="outside a durable run"):
        durable.publish("k", 1)


def test_not_reset_after_a_run():
    run(staged(1, orchestration_backend=Recording(), instance_id="r1"))
    with pytest.raises(DurableError, match="outside a durable run"):
        durable.set_status(1)


@pytest.mark.parametrize("value, error, match", [
    ({"when": object()}, TypeError, "JSON-compatible"),
    (float("nan"), TypeError, "JSON-compatible"),
    ({1j: 2}, TypeError, "JSON-compatible"),
    ("x" * 5000, ValueError, "more than the limit of 4096"),
])
def test_bad_values_refused_where_set(value, error, match):
    caught = []

    @make_durable
    async def prog():
        try:
            durable.set_status(value)
        except Exception as exc:
            caught.append(exc)
        durable.set_status("fine")
        await noop()

    rec = Recording()
    run(prog(orchestration_backend=rec, instance_id="b1"))
    assert len(caught) == 1 and isinstance(caught[0], error) and match in str(caught[0])
    assert rec.saved[0][2] == "fine"


def test_bad_publish_refused_and_limits_configurable():
    errors = []

    @make_durable
    async def prog():
        for key, value in (("", 1), (5, 1), ("k" * 201, 1), ("big", "y" * 100)):
            try:
                durable.publish(key, value)
            except ValueError as exc:
                errors.append(str(exc))
        durable.publish("a", 1)
        try:
            durable.publish("b", 2)
        except ValueError as exc:
            errors.append(str(exc))
        await noop()

    old = (limits.max_bytes, limits.max_keys)
    configure(max_bytes=50, max_keys=1)
    try:
        rec = Recording()
        run(prog(orchestration_backend=rec, instance_id="p1"))
    finally:
        configure(max_bytes=old[0], max_keys=old[1])
    assert len(errors) == 5
    assert "more than the limit of 50" in errors[3] and "published 1 keys" in errors[4]
    assert rec.saved[-1][3] == {"a": 1}
    with pytest.raises(ValueError):
        configure(max_bytes=0)


@make_durable
async def in_a_step_and_a_nested_call():
    async def nested():
        durable.set_status("nested")
        await noop()
        return 1

    await nested()
    a = durable.get_status()
    await asyncio.gather(asyncio.sleep(0))  # a plain (non-durable) await: a step
    return a


def test_nested_durable_call_reports_for_its_instance():
    rec = Recording()
    assert run(in_a_step_and_a_nested_call(orchestration_backend=rec, instance_id="n1")) == "nested"
    assert rec.saved[0][2] == "nested"


RESUMED = textwrap.dedent('''
    import asyncio, sys
    import durable
    from durable import DiskStateStore, DurableBackend, PauseForEventException, make_durable, wait_for_event

    @make_durable
    async def job():
        durable.set_status({"stage": "half", "percent": 50})
        await wait_for_event("go")
        return durable.get_status()

    backend = DurableBackend(DiskStateStore(sys.argv[1]), signing_key="s3cret")
    if sys.argv[2] == "publish":
        backend.publish_event("job-1", "go")
    else:
        try:
            print("result", asyncio.run(job(orchestration_backend=backend, instance_id="job-1")))
        except PauseForEventException as e:
            print("paused", asyncio.run(backend.load_state("job-1"))["progress"])
''')


def test_status_survives_a_resume_in_a_fresh_process(tmp_path):
    mod = tmp_path / "progprog.py"
    mod.write_text(RESUMED)

    def go(*args):
        out = subprocess.run([sys.executable, str(mod), str(tmp_path / "state"), *args], capture_output=True,
                             text=True, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, timeout=60)
        assert out.returncode == 0, out.stderr
        return out.stdout.strip()

    assert go("run") == "paused {'stage': 'half', 'percent': 50}"
    go("publish")
    assert go("run") == "result {'stage': 'half', 'percent': 50}"
