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

Programs with parallel branches (``gather``/``first``): traces are compared up to the interleaving of
independent branches (``difftools.canonical``; the identity for a program without branches), every entry
exactly once. Each branch checkpoints under its own key with its own step counter, so "the resumed run's
checkpoints continue the numbering" holds per key (the instance's and each branch's), and a crash inside a
step loses, per branch, what that branch ran since its own last checkpoint.
"""

from __future__ import annotations

import ast
import copy

import pytest

from durable import CompileError, DurableBackend, DurableRuntime, InMemoryStateStore, make_durable
from durable.state import current_branch

from . import corpus
from .difftools import (
    Clock,
    awaited_events,
    canonical,
    disk_backend_factory,
    drive,
    has_branches,
    memory_backend_factory,
    new_id,
    numbering,
    outcome_of,
    resume_in_subprocess,
    run_skipping_timers,
    split_lost,
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
    """One durable attempt: outcome and the checkpoints it made (in order: the saved state's key, i.e. the
    branch path or None for the instance, and that state's step number)."""

    def __init__(self):
        self.checkpoints = 0
        self.cp_trace_len = 0
        #: state key -> trace length at that state's last checkpoint
        self.cp_len: dict = {}
        self.steps: list[tuple] = []

    def hook(self, crash_at=None):
        def on_checkpoint(_iid, steps):
            key = current_branch.get()
            self.checkpoints += 1
            self.steps.append((key, steps))
            self.cp_trace_len = self.cp_len[key] = len(corpus.TRACE)
            if crash_at is not None and self.checkpoints == crash_at:
                raise corpus.Crash(f"checkpoint {steps}")
        return on_checkpoint


def run_durable(case, backend_factory, iid, crash_at_checkpoint=None, crash_at_step=None, clock=None):
    """Run (part of) an instance. Returns (outcome or None if it crashed, Run)."""
    program = program_for(case.fn)
    r = Run()
    args, kwargs = copy.deepcopy((case.args, case.kwargs))
    corpus.arm_crash(crash_at_step)
    try:
        out = outcome_of(lambda: drive(program, backend_factory(), iid, args, kwargs, case.events,
                                       on_checkpoint=r.hook(crash_at_checkpoint), fresh_backend=backend_factory,
                                       clock=clock))
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
        assert canonical(corpus.TRACE) == canonical(expected_trace)
        assert backend.pending_events("early") == []
        return

    if mode == "straight":
        corpus.reset()
        backend_factory = memory_backend_factory()
        iid = new_id()
        out, r = run_durable(case, backend_factory, iid)
        assert out == expected
        assert canonical(corpus.TRACE) == canonical(expected_trace)
        assert r.checkpoints >= 1
        # the finished instance answers from its stored state and runs nothing
        n = len(corpus.TRACE)
        again = outcome_of(lambda: drive(program_for(case.fn), backend_factory(), iid, case.args, case.kwargs, {}))
        assert again == expected
        assert len(corpus.TRACE) == n
        return

    # how many checkpoints and step calls does a clean run make?
    corpus.reset()
    _, clean = run_durable(case, memory_backend_factory(), new_id())
    n_checkpoints = clean.checkpoints
    clean_counts = {key: len(ns) for key, ns in numbering(clean.steps).items()}
    branches = set(clean_counts) != {None}
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
            assert (k, canonical(corpus.TRACE)) == (k, canonical(expected_trace))
            # the resumed run redoes no step: each state's checkpoints continue its numbering (without branches:
            # the instance's alone, to the same total, 1..n_checkpoints). A branch may save fewer than in a clean
            # run: one cancelled when the resumed run finds its group decided does not pause first.
            got = numbering(r.steps + r2.steps)
            assert (k, got) == (k, {key: list(range(1, len(ns) + 1)) for key, ns in got.items()})
            assert (k, set(got)) == (k, set(clean_counts))
            if not branches:
                assert (k, got) == (k, {None: list(range(1, n_checkpoints + 1))})

    elif mode == "crash_mid_step":
        for n in range(1, n_steps + 1):
            corpus.reset()
            factory = memory_backend_factory()
            iid = new_id()
            out, r = run_durable(case, factory, iid, crash_at_step=n)
            assert out is None, f"no crash at step call {n}"
            saved, lost = split_lost(corpus.TRACE, corpus.OWNERS, r.cp_len)
            start = len(corpus.TRACE)
            out, _ = run_durable(case, factory, iid)
            resumed = list(zip(corpus.OWNERS[start:], corpus.TRACE[start:], strict=True))
            assert (n, out) == (n, expected)
            assert (n, canonical([e for _, e in saved + resumed])) == (n, canonical(expected_trace))
            # the resumed run starts (each branch: its own part) by repeating what was lost
            for owner in {o for o, _ in lost}:
                mine = [e for o, e in lost if o == owner]
                again = [e for o, e in resumed if o == owner]
                assert (n, owner, again[:len(mine)]) == (n, owner, mine)

    elif mode == "disk_every_checkpoint":
        corpus.reset()
        factory = disk_backend_factory(tmp_path / "store")
        iid = new_id()
        clock = Clock()
        rounds = 0
        while True:
            rounds += 1
            # each round saves one checkpoint (a paused branch may save its pause again in every round)
            assert rounds <= (2 if branches else 1) * n_checkpoints + 5
            out, r = run_durable(case, factory, iid, crash_at_checkpoint=1, clock=clock)
            if out is not None:
                break
            publish_awaited(factory(), iid, case.events, clock)
        assert out == expected
        assert canonical(corpus.TRACE) == canonical(expected_trace)


def publish_awaited(backend, iid, events, clock):
    """After a crash at a pause's checkpoint (drive never saw the pause): publish what the instance waits for,
    as the outside world would, and let time pass to its due time. An instance whose branches are all paused
    saves its pause again each time it is resumed, so without this it would crash at that checkpoint forever."""
    state = backend.load_state_sync(iid)
    if state is None or state["status"] != "paused":
        return
    if state["wait"].get("due") is not None and not awaited_events(state["wait"]):  # timers only (as drive)
        clock.skip_to(state["wait"]["due"])
    pending = [name for name, _ in backend.pending_events(iid)]
    for name in awaited_events(state.get("wait")):
        if name in pending:
            pending.remove(name)
        elif name in events:
            backend.publish_event(iid, name, events[name])


SUBPROCESS_CASES = ["closure_sees_reassignment", "events_in_loop_and_finally", "methods", "nested_call_pauses",
                    "lambdas_and_comprehensions", "try_all_clauses_raise", "exceptions_cross_frames",
                    "retried_steps_in_a_saga", "retried_step_exhausted_compensated",
                    "gather_one_fails_others_cancelled", "nested_gathers", "branch_waits_for_event_others_go_on",
                    "retried_step_in_a_branch",
                    "first_wins_after_an_event", "methods_and_closures_as_branches"]


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
    if has_branches(expected_trace):
        assert canonical(before + ast.literal_eval(child_trace)) == canonical(expected_trace)
    else:
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
