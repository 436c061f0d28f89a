"""Differential tests: every corpus program, run durably, must behave like plain Python.

Modes (each compares result-or-error and the side-effect trace with the plain run):

* ``straight``: one backend in memory, events published whenever the instance pauses; calling a finished
  instance again returns the stored result / re-raises the stored error and runs nothing.
* ``crash_at_checkpoint``: for every k, the process "dies" right after the k-th checkpoint is written
  (``on_checkpoint`` raises); a fresh runtime and backend on the same store finish the run. Nothing ran after
  the checkpoint, so the trace must equal plain Python's exactly (every completed step once, in order).
* ``crash_mid_step``: for every n, the n-th ``step`` call dies before recording anything. The side effects
  made since the last checkpoint run again: the trace is (trace at the last checkpoint) + (the resumed run's
  trace), which must equal plain Python's, and the resumed run must start by repeating what was lost.
* ``events_early`` (programs that wait for events): all events are published before the first run, so it never
  pauses, and every event is consumed.
* ``disk_every_checkpoint``: a DiskStateStore, and a new backend object after every single checkpoint (every
  step goes through pickle and disk).
* ``subprocess``: for a few programs, crash half-way and finish in a fresh interpreter from the disk store.
"""

from __future__ import annotations

import copy

import pytest

from durable import CompileError, DurableBackend, DurableRuntime, InMemoryStateStore, make_durable

from . import corpus
from .difftools import (
    disk_backend_factory,
    drive,
    memory_backend_factory,
    new_id,
    outcome_of,
    resume_in_subprocess,
    run_skipping_timers,
)

MODES = ("straight", "crash_at_checkpoint", "crash_mid_step", "disk_every_checkpoint")
# case id -> reason, or (case id, mode) -> reason: known compiler bugs (none open)
XFAIL: dict = {}


_programs: dict = {}


def program_for(fn):
    if fn not in _programs:
        _programs[fn] = make_durable(fn)
    return _programs[fn]


def plain(case):
    corpus.reset()
    with corpus.plain_events(case.events):
        args, kwargs = copy.deepcopy((case.args, case.kwargs))
        out = outcome_of(lambda: case.fn(*args, **kwargs))
    return out, list(corpus.TRACE)


class Run:
    """One durable attempt: outcome and the number of checkpoints / step calls it made."""

    def __init__(self):
        self.checkpoints = 0
        self.cp_trace_len = 0
        self.steps: list[int] = []

    def hook(self, crash_at=None):
        def on_checkpoint(_iid, steps):
            self.checkpoints += 1
            self.steps.append(steps)
            self.cp_trace_len = len(corpus.TRACE)
            if crash_at is not None and self.checkpoints == crash_at:
                raise corpus.Crash(f"checkpoint {steps}")
        return on_checkpoint


def run_durable(case, backend_factory, iid, crash_at_checkpoint=None, crash_at_step=None):
    """Run (part of) an instance. Returns (outcome or None if it crashed, Run)."""
    program = program_for(case.fn)
    r = Run()
    args, kwargs = copy.deepcopy((case.args, case.kwargs))
    corpus.arm_crash(crash_at_step)
    try:
        out = outcome_of(lambda: drive(program, backend_factory(), iid, args, kwargs, case.events,
                                       on_checkpoint=r.hook(crash_at_checkpoint), fresh_backend=backend_factory))
    except corpus.Crash:
        out = None
    finally:
        corpus.disarm()
    return out, r


def params(modes=MODES):
    out = []
    for c in corpus.CASES:
        for mode in modes + (("events_early",) if c.events else ()):
            reason = XFAIL.get((c.id, mode)) or XFAIL.get(c.id)
            marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
            out.append(pytest.param(c, mode, id=f"{c.id}-{mode}", marks=marks))
    return out


def test_corpus_is_big_enough():
    assert len(corpus.CASES) >= 40
    assert len({c.id for c in corpus.CASES}) == len(corpus.CASES)
    assert len({c.fn for c in corpus.CASES}) >= 40


@pytest.mark.parametrize("case,mode", params())
def test_differential(case, mode, tmp_path):
    expected, expected_trace = plain(case)
    assert expected_trace, "every corpus program leaves a trace"

    if mode == "events_early":
        # every event is already in the inbox: the instance never pauses
        corpus.reset()
        backend = DurableBackend(InMemoryStateStore())
        for name, payload in case.events.items():
            backend.publish_event("early", name, payload)
        args, kwargs = copy.deepcopy((case.args, case.kwargs))
        out = outcome_of(lambda: run_skipping_timers(program_for(case.fn), backend, "early", args, kwargs))
        assert out == expected
        assert corpus.TRACE == expected_trace
        assert backend.pending_events("early") == []
        return

    if mode == "straight":
        corpus.reset()
        backend_factory = memory_backend_factory()
        iid = new_id()
        out, r = run_durable(case, backend_factory, iid)
        assert out == expected
        assert corpus.TRACE == expected_trace
        assert r.checkpoints >= 1
        # the finished instance answers from its stored state and runs nothing
        again = outcome_of(lambda: drive(program_for(case.fn), backend_factory(), iid, case.args, case.kwargs, {}))
        assert again == expected
        assert corpus.TRACE == expected_trace
        return

    # how many checkpoints and step calls does a clean run make?
    corpus.reset()
    _, clean = run_durable(case, memory_backend_factory(), new_id())
    n_checkpoints = clean.checkpoints
    n_steps = corpus.step_calls()
    assert n_checkpoints >= 1 and n_steps >= 1

    if mode == "crash_at_checkpoint":
        for k in range(1, n_checkpoints + 1):
            corpus.reset()
            factory = memory_backend_factory()
            iid = new_id()
            out, r = run_durable(case, factory, iid, crash_at_checkpoint=k)
            assert out is None, f"no crash at checkpoint {k}"
            out, r2 = run_durable(case, factory, iid)
            assert (k, out) == (k, expected)
            assert (k, corpus.TRACE) == (k, expected_trace)
            # the resumed run redoes no step: its checkpoints continue the numbering, to the same total
            assert (k, r.steps + r2.steps) == (k, list(range(1, n_checkpoints + 1)))

    elif mode == "crash_mid_step":
        for n in range(1, n_steps + 1):
            corpus.reset()
            factory = memory_backend_factory()
            iid = new_id()
            out, r = run_durable(case, factory, iid, crash_at_step=n)
            assert out is None, f"no crash at step call {n}"
            saved = corpus.TRACE[:r.cp_trace_len]
            lost = corpus.TRACE[r.cp_trace_len:]
            start = len(corpus.TRACE)
            out, _ = run_durable(case, factory, iid)
            resumed = corpus.TRACE[start:]
            assert (n, out) == (n, expected)
            assert (n, saved + resumed) == (n, expected_trace)
            assert (n, resumed[:len(lost)]) == (n, lost)

    elif mode == "disk_every_checkpoint":
        corpus.reset()
        factory = disk_backend_factory(tmp_path / "store")
        iid = new_id()
        rounds = 0
        while True:
            rounds += 1
            assert rounds <= n_checkpoints + 5
            out, r = run_durable(case, factory, iid, crash_at_checkpoint=1)
            if out is not None:
                break
        assert out == expected
        assert corpus.TRACE == expected_trace


SUBPROCESS_CASES = ["closure_sees_reassignment", "events_in_loop_and_finally", "methods", "nested_call_pauses",
                    "lambdas_and_comprehensions", "try_all_clauses_raise", "exceptions_cross_frames",
                    "retried_steps_in_a_saga", "retried_step_exhausted_compensated"]


@pytest.mark.parametrize("case_id", SUBPROCESS_CASES)
def test_resume_in_fresh_process(case_id, tmp_path):
    case = next(c for c in corpus.CASES if c.id == case_id)
    if case_id in XFAIL:
        pytest.xfail(XFAIL[case_id])
    expected, expected_trace = plain(case)
    corpus.reset()
    _, clean = run_durable(case, memory_backend_factory(), new_id())
    k = max(1, clean.checkpoints // 2)
    corpus.reset()
    factory = disk_backend_factory(tmp_path / "store")
    iid = new_id()
    out, _ = run_durable(case, factory, iid, crash_at_checkpoint=k)
    assert out is None
    before = list(corpus.TRACE)
    got, child_trace = resume_in_subprocess(corpus, case.args, case.kwargs, case.events, tmp_path / "store", iid)
    assert got == repr(expected)
    assert child_trace == repr(expected_trace[len(before):])
    assert before == expected_trace[:len(before)]


@pytest.mark.parametrize("name", sorted(corpus.REFUSED_SOURCES))
def test_unsupported_constructs_are_refused(name, make_module):
    mod = make_module("async def g(*a):\n    return a\n\n" + corpus.REFUSED_SOURCES[name])
    with pytest.raises(CompileError):
        make_durable(mod.f)


def test_failed_instance_reraises_stored_error_without_running():
    case = next(c for c in corpus.CASES if c.id == "uncaught_after_pauses")
    corpus.reset()
    factory = memory_backend_factory()
    iid = new_id()
    out, _ = run_durable(case, factory, iid)
    assert out == ("err", "RuntimeError", "bad x=5")
    n = len(corpus.TRACE)
    for _ in range(2):
        assert run_durable(case, factory, iid)[0] == out
    assert len(corpus.TRACE) == n


def test_runtime_run_api_matches_program_call():
    """``DurableRuntime.run`` and calling the program are two doors to the same instance."""
    import asyncio

    case = next(c for c in corpus.CASES if c.id == "straight_line")
    backend = DurableBackend(InMemoryStateStore())
    corpus.reset()
    r1 = asyncio.run(DurableRuntime(backend, "rt").run(program_for(case.fn), case.args, {}))
    r2 = asyncio.run(program_for(case.fn)(*case.args, orchestration_backend=backend, instance_id="rt"))
    assert r1 == r2 == plain(case)[0][1]


TWIN = '''\
async def g():
    return {tag!r}


async def f():
    return await g()
'''


def test_same_code_in_two_modules_keeps_its_own_globals(make_module):
    """Two modules with the same text (apart from a constant elsewhere) must each call their own ``g``."""
    import asyncio

    mod_a = make_module(TWIN.format(tag="A"))
    mod_b = make_module(TWIN.format(tag="B"))
    assert mod_a.f.__code__ == mod_b.f.__code__  # the premise: code equality ignores the module
    backend = DurableBackend(InMemoryStateStore())
    got_a = asyncio.run(make_durable(mod_a.f)(orchestration_backend=backend, instance_id="a"))
    got_b = asyncio.run(make_durable(mod_b.f)(orchestration_backend=backend, instance_id="b"))
    assert (got_a, got_b) == ("A", "B")
