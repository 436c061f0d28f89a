"""Hypothesis-generated programs: plain Python vs durable, with a crash (and resume) at every checkpoint.

Each example is written to a real module file in a temp dir (durable code needs its source) and imported.
"""

from __future__ import annotations

import ast
import asyncio
import hashlib
import importlib.util
import logging
import sys
from collections import Counter

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from durable import (
    DiskStateStore,
    DurableBackend,
    DurableRuntime,
    InMemoryStateStore,
    PauseForEventException,
    TimerPause,
    make_durable,
)
from durable.state import current_branch

from . import corpus
from .difftools import Clock, awaited_events, canonical, has_branches, resume_in_subprocess, split_lost
from .progen import EVENT_PAYLOAD, programs

MAX_CRASH_POINTS = 12


@pytest.fixture(scope="module")
def gen_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("generated")
    yield path
    for name in [n for n in sys.modules if n.startswith("durable_gen_")]:
        del sys.modules[name]


def load(src: str, where):
    name = "durable_gen_" + hashlib.sha256(src.encode()).hexdigest()[:16]
    if name in sys.modules:
        return sys.modules[name]
    path = where / f"{name}.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def outcome(coro_fn):
    try:
        return ("ok", asyncio.run(coro_fn()))
    except Exception as exc:  # noqa: BLE001
        return ("err", type(exc).__name__, str(exc))


QUEUED = list(range(100, 160))  # distinct payloads for the queued-events test


def plain(mod, args, queue=None):
    """Plain run; each wait_for_event returns EVENT_PAYLOAD, or the next payload of ``queue``."""
    corpus.reset()
    queue = list(queue) if queue is not None else None

    async def fake_wait(name, timeout=None):
        if name == "never":  # progen.NEVER: waits until cancelled
            await asyncio.get_running_loop().create_future()
        return EVENT_PAYLOAD if queue is None else queue.pop(0)

    real, mod.wait_for_event = mod.wait_for_event, fake_wait
    real_flaky, mod.flaky = mod.flaky, corpus.plain_flaky  # the retry loop written by hand
    try:
        with corpus.plain_events({}):
            out = outcome(lambda: mod.prog(*args))
    finally:
        mod.wait_for_event, mod.flaky = real, real_flaky
    return out, list(corpus.TRACE)


TIMERS_SKIPPED = [0]  # retry backoffs skipped by durable_run (the grammar's coverage test reads it)


def durable_run(program, store, iid, args, crash_at=None, crash_at_step=None, queued=False):
    """Run to completion (publishing "ev" whenever it pauses, unless ``queued``: then all events were published
    up front and a pause is an error); None if it crashed. Also returns (checkpoints seen, trace length at the
    last checkpoint, that length per saved state: the instance's (None) and each parallel branch's)."""
    seen = [0, 0, {}]

    def hook(_iid, _steps):
        seen[0] += 1
        seen[1] = seen[2][current_branch.get()] = len(corpus.TRACE)
        if seen[0] == crash_at:
            raise corpus.Crash("checkpoint")

    async def go():
        clock = Clock()
        for _ in range(500):
            try:
                return await DurableRuntime(DurableBackend(store), iid, on_checkpoint=hook,
                                            clock=clock).run(program, args, {})
            except TimerPause as pause:  # a retry's backoff: skip it
                clock.skip_to(pause.due)
                TIMERS_SKIPPED[0] += 1
            except PauseForEventException as pause:
                backend = DurableBackend(store)
                if "ev" in awaited_events(backend.load_state_sync(iid)["wait"]):
                    assert not queued, pause
                    backend.publish_event(iid, "ev", EVENT_PAYLOAD)
                else:  # branches wait for a backoff timer and for NEVER (cancelled when their group ends)
                    assert pause.due is not None, pause
                    clock.skip_to(pause.due)
                    TIMERS_SKIPPED[0] += 1
        raise AssertionError("did not finish")

    corpus.arm_crash(crash_at_step)
    try:
        return outcome(go), seen
    except corpus.Crash:
        return None, seen
    finally:
        corpus.disarm()


def compile_program(fn):
    return make_durable(fn)


class _Warnings(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def check_program(src: str, args, where, crash_step_frac: float) -> None:
    """Plain vs durable, with crashes; every nested call must run as a durable frame (no 'one step' fallback)."""
    seen = _Warnings()
    logger = logging.getLogger("durable")
    logger.addHandler(seen)
    try:
        _check_program(src, args, where, crash_step_frac)
    finally:
        logger.removeHandler(seen)
    assert not [m for m in seen.messages if "one step" in m], seen.messages


def _check_program(src: str, args, where, crash_step_frac: float) -> None:
    mod = load(src, where)
    expected, expected_trace = plain(mod, args)
    program = compile_program(mod.prog)
    compile_program(mod.sub)  # compiled (and cached) now, so the runtime never meets BUG-12 and runs one natively
    compile_program(mod.helper)
    ctx = f"\n--- program (args={args}) ---\n{src}"

    expected_trace = canonical(expected_trace)  # the same trace when the program has no branches
    corpus.reset()
    got, (n_cp, _, _) = durable_run(program, InMemoryStateStore(), "g", args)
    assert got == expected, ctx
    assert canonical(corpus.TRACE) == expected_trace, ctx
    n_steps = corpus.step_calls()

    # crash right after checkpoint k, resume on the same store: exactly the plain trace
    ks = range(1, n_cp + 1)
    if n_cp > MAX_CRASH_POINTS:
        stride = n_cp / MAX_CRASH_POINTS
        ks = sorted({1, n_cp, *(int(i * stride) + 1 for i in range(MAX_CRASH_POINTS))})
    for k in ks:
        corpus.reset()
        store = InMemoryStateStore()
        first, _ = durable_run(program, store, "g", args, crash_at=k)
        assert first is None, f"no crash at checkpoint {k}{ctx}"
        got, _ = durable_run(program, store, "g", args)
        assert got == expected, f"crash at checkpoint {k}{ctx}"
        assert canonical(corpus.TRACE) == expected_trace, f"crash at checkpoint {k}{ctx}"

    # crash inside one step call: what ran since the last checkpoint (of the branch it ran in) runs again,
    # nothing else
    if n_steps:
        n = 1 + int(crash_step_frac * (n_steps - 1))
        corpus.reset()
        store = InMemoryStateStore()
        first, (_, _, cp_len) = durable_run(program, store, "g", args, crash_at_step=n)
        assert first is None, ctx
        saved, lost = split_lost(corpus.TRACE, corpus.OWNERS, cp_len)
        start = len(corpus.TRACE)
        got, _ = durable_run(program, store, "g", args)
        resumed = list(zip(corpus.OWNERS[start:], corpus.TRACE[start:], strict=True))
        assert got == expected, f"crash in step call {n}{ctx}"
        assert canonical([e for _, e in saved + resumed]) == expected_trace, f"crash in step call {n}{ctx}"
        for owner in {o for o, _ in lost}:
            mine = [e for o, e in lost if o == owner]
            assert [e for o, e in resumed if o == owner][:len(mine)] == mine, f"crash in step call {n}{ctx}"

    # two crashes: after checkpoint k, then (in the resumed run) inside a later step call
    if n_cp >= 2:
        k = 1 + int(crash_step_frac * (n_cp - 1))
        corpus.reset()
        store = InMemoryStateStore()
        first, _ = durable_run(program, store, "g", args, crash_at=k)
        assert first is None, ctx
        trace_k = list(corpus.TRACE)
        second, (_, _, cp_len) = durable_run(program, store, "g", args, crash_at_step=1)
        if second is None:  # a step call was left after checkpoint k
            saved, _ = split_lost(corpus.TRACE, corpus.OWNERS, cp_len, kept=len(trace_k))
            start = len(corpus.TRACE)
            second, _ = durable_run(program, store, "g", args)
            assert canonical([e for _, e in saved] + corpus.TRACE[start:]) == expected_trace, \
                f"crashes at checkpoint {k} + next step{ctx}"
        else:
            assert canonical(corpus.TRACE) == expected_trace, f"crash at checkpoint {k}{ctx}"
        assert second == expected, f"crashes at checkpoint {k} + next step{ctx}"


SETTINGS = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.function_scoped_fixture])
ARGS = st.tuples(st.integers(0, 9), st.integers(0, 9))


@SETTINGS
@given(src=programs(corpus.__name__), args=ARGS, frac=st.floats(0, 1))
def test_generated_programs(src, args, frac, gen_dir):
    check_program(src, args, gen_dir, frac)


@settings(SETTINGS, max_examples=60)
@given(src=programs(corpus.__name__, multi_await=True), args=ARGS, frac=st.floats(0, 1))
def test_generated_programs_with_multi_await_expressions(src, args, frac, gen_dir):
    check_program(src, args, gen_dir, frac)


@settings(SETTINGS, max_examples=40)
@given(src=programs(corpus.__name__, mid_chain=True), args=ARGS, frac=st.floats(0, 1))
def test_generated_programs_with_awaits_inside_chained_comparisons(src, args, frac, gen_dir):
    check_program(src, args, gen_dir, frac)


@settings(SETTINGS, max_examples=100)
@given(src=programs(corpus.__name__, retries=True), args=ARGS, frac=st.floats(0, 1))
def test_generated_programs_with_retried_steps(src, args, frac, gen_dir):
    """``flaky`` steps (retry policy, durable backoff timers) vs the same retry loop written by hand."""
    assume("await flaky(" in src)
    check_program(src, args, gen_dir, frac)


@settings(SETTINGS, max_examples=3)
@given(src=programs(corpus.__name__, retries=True), args=ARGS, frac=st.floats(0, 1))
def test_generated_programs_with_retried_steps_resume_in_fresh_process(src, args, frac, gen_dir, tmp_path_factory):
    assume("await flaky(" in src)
    _resume_in_fresh_process(src, args, frac, gen_dir, tmp_path_factory)


@settings(SETTINGS, max_examples=120)
@given(src=programs(corpus.__name__, branches=True), args=ARGS, frac=st.floats(0, 1))
def test_generated_programs_with_branches(src, args, frac, gen_dir):
    """``gather``/``asyncio.gather``/``first`` of generated calls vs the same calls run natively."""
    assume("durable.gather(" in src or "durable.first(" in src or "asyncio.gather(" in src)
    check_program(src, args, gen_dir, frac)


@settings(SETTINGS, max_examples=60)
@given(src=programs(corpus.__name__, branches=True, retries=True), args=ARGS, frac=st.floats(0, 1))
def test_generated_programs_with_branches_and_retried_steps(src, args, frac, gen_dir):
    assume("durable.gather(" in src or "durable.first(" in src or "asyncio.gather(" in src)
    check_program(src, args, gen_dir, frac)


@settings(SETTINGS, max_examples=3)
@given(src=programs(corpus.__name__, branches=True), args=ARGS, frac=st.floats(0, 1))
def test_generated_programs_with_branches_resume_in_fresh_process(src, args, frac, gen_dir, tmp_path_factory):
    assume("durable.gather(" in src or "durable.first(" in src)
    _resume_in_fresh_process(src, args, frac, gen_dir, tmp_path_factory)


def test_generated_branch_programs_cover_the_group_shapes(gen_dir):
    """The branch grammar is not vacuous: every shape of group is drawn, and runs end in each way."""
    seen = Counter()

    @settings(max_examples=80, deadline=None, derandomize=True, database=None)
    @given(src=programs(corpus.__name__, branches=True), args=ARGS)
    def collect(src, args):
        for kw in ("durable.first(", "asyncio.gather(", "return_exceptions=True", "sub(\"g", "wait_for_event(\"ev\")"):
            seen[kw] += kw in src
        mod = load(src, gen_dir)
        corpus.reset()
        got, _ = durable_run(compile_program(mod.prog), InMemoryStateStore(), "g", args)
        seen[got[0]] += any(branch for branch in map(_branch, corpus.TRACE))

    collect()
    assert min(seen.values()) >= 3 and len(seen) == 7, seen


def _branch(entry):
    return isinstance(entry[0], str) and "|" in entry[0]


def test_generated_retry_programs_back_off_and_exhaust(gen_dir):
    """The retry grammar is not vacuous: many programs pause on backoff timers, some exhaust a step."""
    seen = Counter()

    @settings(max_examples=30, deadline=None, derandomize=True, database=None)
    @given(src=programs(corpus.__name__, retries=True), args=ARGS)
    def collect(src, args):
        mod = load(src, gen_dir)
        corpus.reset()
        TIMERS_SKIPPED[0] = 0
        durable_run(compile_program(mod.prog), InMemoryStateStore(), "g", args)
        seen["programs"] += 1
        seen["backed off"] += TIMERS_SKIPPED[0] > 0
        seen["exhausted"] += any(e[1:] == ("attempt", 3) for e in corpus.TRACE if len(e) == 3)

    collect()
    assert seen["backed off"] >= 10 and seen["exhausted"] >= 3, seen


def test_generator_makes_valid_varied_programs(gen_dir):
    """The generator's output compiles, and covers the grammar's compound statements."""
    seen = set()

    @settings(max_examples=60, deadline=None, derandomize=True, database=None)
    @given(src=programs(corpus.__name__))
    def collect(src):
        compile(src, "<gen>", "exec")
        for kw in ("for ", "while ", "try:", "finally:", "except ValueError", "break", "continue", "return (",
                   "raise ValueError", "await helper", "wait_for_event(\"ev\")", "else:", "snap()", "acc[0] =",
                   "with ctx", "match ", "await sub(", "bump("):
            if kw in src:
                seen.add(kw)

    collect()
    assert len(seen) >= 17, seen


@settings(SETTINGS, max_examples=6)
@given(src=programs(corpus.__name__), args=ARGS, frac=st.floats(0, 1))
def test_generated_programs_resume_in_fresh_process(src, args, frac, gen_dir, tmp_path_factory):
    """Crash somewhere, then finish the instance in a new interpreter from a DiskStateStore."""
    _resume_in_fresh_process(src, args, frac, gen_dir, tmp_path_factory)


def _resume_in_fresh_process(src, args, frac, gen_dir, tmp_path_factory):
    mod = load(src, gen_dir)
    expected, expected_trace = plain(mod, args)
    program = compile_program(mod.prog)
    compile_program(mod.sub)
    ctx = f"\n--- program (args={args}) ---\n{src}"
    corpus.reset()
    _, (n_cp, _, _) = durable_run(program, InMemoryStateStore(), "g", args)
    k = 1 + int(frac * (n_cp - 1))
    store = tmp_path_factory.mktemp("gstore")
    corpus.reset()
    first, _ = durable_run(program, DiskStateStore(store), "g", args, crash_at=k)
    assert first is None, ctx
    before = list(corpus.TRACE)
    got, child_trace = resume_in_subprocess(mod, args, {}, {"ev": EVENT_PAYLOAD}, store, "g", corpus=corpus)
    assert got == repr(expected), f"crash at checkpoint {k}{ctx}"
    if has_branches(expected_trace):
        assert canonical(before + ast.literal_eval(child_trace)) == canonical(expected_trace), ctx
        return
    assert before == expected_trace[:len(before)], ctx
    assert child_trace == repr(expected_trace[len(before):]), f"crash at checkpoint {k}{ctx}"


@settings(SETTINGS, max_examples=40)
@given(src=programs(corpus.__name__), args=ARGS, frac=st.floats(0, 1))
def test_generated_programs_consume_queued_events_once_in_order(src, args, frac, gen_dir):
    """Events published before the start are consumed in order, exactly once, across crashes."""
    assume("wait_for_event(\"ev\")" in src.split("async def sub", 1)[1])
    mod = load(src, gen_dir)
    expected, expected_trace = plain(mod, args, QUEUED)
    program = compile_program(mod.prog)
    compile_program(mod.sub)
    ctx = f"\n--- program (args={args}) ---\n{src}"

    def fresh_store():
        store = InMemoryStateStore()
        backend = DurableBackend(store)
        for payload in QUEUED:
            backend.publish_event("g", "ev", payload)
        return store

    corpus.reset()
    got, (n_cp, _, _) = durable_run(program, fresh_store(), "g", args, queued=True)
    assert (got, corpus.TRACE) == (expected, expected_trace), ctx
    n_steps = corpus.step_calls()
    ks = sorted({1, n_cp, 1 + int(frac * (n_cp - 1))})
    for k in ks:
        corpus.reset()
        store = fresh_store()
        first, _ = durable_run(program, store, "g", args, crash_at=k, queued=True)
        assert first is None, ctx
        got, _ = durable_run(program, store, "g", args, queued=True)
        assert (got, corpus.TRACE) == (expected, expected_trace), f"crash at checkpoint {k}{ctx}"
    corpus.reset()
    store = fresh_store()
    n = 1 + int(frac * max(0, n_steps - 1))
    first, (_, cp_len, _) = durable_run(program, store, "g", args, crash_at_step=n, queued=True)
    if first is None:
        saved, start = corpus.TRACE[:cp_len], len(corpus.TRACE)
        got, _ = durable_run(program, store, "g", args, queued=True)
        assert (got, saved + corpus.TRACE[start:]) == (expected, expected_trace), f"crash in step call {n}{ctx}"
