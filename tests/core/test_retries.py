"""Retry policies of steps (issue 13): attempts, durable backoff timers, timeouts, and retrying failed instances.

The runtime's clock is injected (``program.runtime(backend, id, clock=...)``), so a backoff is checked against
the policy exactly and skipped without sleeping. ``LOG`` is the outside world: each test counts what ran.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

import durable
from durable import (
    CheckpointException,
    DeadlineExceeded,
    DiskStateStore,
    DurableBackend,
    DurableError,
    InMemoryStateStore,
    InstanceCancelled,
    RetryPolicy,
    StepTimeout,
    TimerPause,
    current_attempt,
    make_durable,
)

from .difftools import Clock

ROOT = Path(__file__).resolve().parents[2]
T0 = 1_800_000_000.0

LOG: list = []
COUNTS: Counter = Counter()
PLAN: dict = {"fails": 0, "slow": 0, "broken": None}


@pytest.fixture(autouse=True)
def _clean():
    LOG.clear()
    COUNTS.clear()
    PLAN.update(fails=0, slow=0, broken=None)
    yield
    LOG.clear()


async def finish(program, backend, iid, clock, *args, pauses=None):
    """Run an instance to its end; every retry timer is skipped (its due recorded in ``pauses``)."""
    for _ in range(50):
        try:
            return await program.runtime(backend, iid, clock=clock).run(program, args, {})
        except TimerPause as pause:
            if pauses is not None:
                pauses.append(pause.due - clock.now)
            clock.skip_to(pause.due)
    raise AssertionError("did not finish")


# -- steps -------------------------------------------------------------------------------------------------------

async def _sometimes(tag):
    """Fails (ConnectionError) on its first PLAN["fails"] attempts."""
    n = current_attempt()
    LOG.append((tag, n))
    if n <= PLAN["fails"]:
        raise ConnectionError(f"{tag} down (attempt {n})")
    return f"{tag}-ok"


# Most steps here are declared as ``name = durable.step(_fn, ...)``; the decorator form has its own test
# (test_decorated_step_is_pickled_by_reference_in_its_retry_state), as does corpus.flaky.
sometimes = durable.step(_sometimes, retry=RetryPolicy(max_attempts=5, initial_interval=1.0, backoff=2.0,
                                                       max_interval=60.0, jitter=0.0))


@make_durable
async def uses_sometimes(tag):
    before = current_attempt()
    got = await sometimes(tag)
    return (before, got, current_attempt())


@pytest.mark.parametrize("k", [0, 1, 4])
async def test_step_failing_k_times_returns_its_value(k):
    PLAN["fails"] = k
    pauses: list = []
    got = await finish(uses_sometimes, DurableBackend(InMemoryStateStore()), "k", Clock(T0), "t", pauses=pauses)
    assert got == (1, "t-ok", 1)  # current_attempt() is 1 outside a retried step
    assert LOG == [("t", n) for n in range(1, k + 2)]
    assert pauses == [2.0 ** i for i in range(k)]  # jitter 0: exactly initial * backoff ** (n - 1)


async def test_exhausted_attempts_fail_the_instance_with_the_last_error():
    PLAN["fails"] = 99
    backend = DurableBackend(InMemoryStateStore())
    with pytest.raises(ConnectionError, match=r"attempt 5\)"):
        await finish(uses_sometimes, backend, "ex", Clock(T0), "t")
    assert [n for _, n in LOG] == [1, 2, 3, 4, 5]
    assert (await backend.load_state("ex"))["status"] == "failed"


async def _always_down(tag):
    LOG.append((tag, current_attempt()))
    raise ConnectionError(f"{tag} still down")


always_down = durable.step(_always_down, retry=RetryPolicy(max_attempts=6, initial_interval=1.0, backoff=2.0,
                                                           max_interval=5.0, jitter=0.1))


@make_durable
async def backs_off():
    return await always_down("svc")


async def test_backoff_is_a_durable_timer_that_follows_the_policy():
    clock = Clock(T0)
    backend = DurableBackend(InMemoryStateStore())
    for attempt in range(1, 6):
        with pytest.raises(TimerPause) as p:
            await backs_off.runtime(backend, "b", clock=clock).run(backs_off)
        expected = min(1.0 * 2.0 ** (attempt - 1), 5.0)
        delay = p.value.due - clock.now
        assert expected * 0.9 - 1e-6 <= delay <= expected * 1.1 + 1e-6, (attempt, delay)
        state = await backend.load_state("b")
        assert state["status"] == "paused"
        assert state["wait"]["kind"] == "timer" and state["wait"]["retry"] is True
        assert state["wait"]["due"] == p.value.due
        retry = state["retry"]
        assert retry["attempt"] == attempt + 1 and retry["max_attempts"] == 6
        assert "always_down" in retry["step"]
        assert retry["error"] == "ConnectionError: svc still down"
        func, args, kwargs = retry["call"]
        assert args == ("svc",) and kwargs == {}
        assert len(LOG) == attempt

        # resumed before it is due: the pause is raised again and nothing runs
        steps = state["steps"]
        clock.now = p.value.due - 0.001
        with pytest.raises(TimerPause) as again:
            await backs_off.runtime(backend, "b", clock=clock).run(backs_off)
        assert again.value.due == p.value.due
        assert len(LOG) == attempt and (await backend.load_state("b"))["steps"] == steps
        clock.now = p.value.due
    with pytest.raises(ConnectionError, match="svc still down"):
        await backs_off.runtime(backend, "b", clock=clock).run(backs_off)
    assert [n for _, n in LOG] == [1, 2, 3, 4, 5, 6]


CHILD = textwrap.dedent('''
    import asyncio, json, sys
    from durable import DiskStateStore, DurableBackend, TimerPause
    from tests.core import test_retries as m
    m.PLAN["fails"] = 1
    now = float(sys.argv[2])
    backend = DurableBackend(DiskStateStore(sys.argv[1]), signing_key="k")
    rt = m.uses_sometimes.runtime(backend, "crashy", clock=lambda: now)
    try:
        out = ["result", asyncio.run(rt.run(m.uses_sometimes, ("t",), {}))]
    except TimerPause as p:
        out = ["paused", p.due]
    print(json.dumps({"out": out, "log": m.LOG}))
''')


def test_crash_during_backoff_continues_in_a_fresh_process(tmp_path):
    """The process dies while the retry timer runs; another process continues with attempt 2."""
    PLAN["fails"] = 1
    store = tmp_path / "state"
    backend = DurableBackend(DiskStateStore(store), signing_key="k")
    with pytest.raises(TimerPause) as p:
        asyncio.run(uses_sometimes.runtime(backend, "crashy", clock=Clock(T0)).run(uses_sometimes, ("t",), {}))
    due = p.value.due
    assert due == T0 + 1.0 and LOG == [("t", 1)]
    del backend  # the process "dies": nothing of it is used again

    def child(now):
        out = subprocess.run([sys.executable, "-c", CHILD, str(store), repr(now)], capture_output=True, text=True,
                             cwd=str(ROOT), env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, timeout=120)
        assert out.returncode == 0, out.stderr[-3000:]
        return json.loads(out.stdout.strip().splitlines()[-1])

    assert child(due - 0.5) == {"out": ["paused", due], "log": []}
    assert child(due) == {"out": ["result", [1, "t-ok", 1]], "log": [["t", 2]]}
    assert child(due + 100) == {"out": ["result", [1, "t-ok", 1]], "log": []}


@durable.step(retry=RetryPolicy(max_attempts=3, initial_interval=1.0, jitter=0.0))
async def decorated(tag):
    """The design's decorator form of a step that backs off."""
    n = current_attempt()
    LOG.append((tag, n))
    if n <= PLAN["fails"]:
        raise ConnectionError(f"{tag} down (attempt {n})")
    return f"{tag}-ok"


@make_durable
async def uses_decorated():
    return await decorated("dec")


async def test_decorated_step_is_pickled_by_reference_in_its_retry_state():
    PLAN["fails"] = 1
    got = await finish(uses_decorated, DurableBackend(InMemoryStateStore()), "dec", Clock(T0))
    assert got == "dec-ok"
    assert LOG == [("dec", 1), ("dec", 2)]  # a copy pickled by value would append to a copy of LOG


async def record(what, value=None):
    """A nested durable call: a side effect, checkpointed when it returns."""
    LOG.append((what, value))
    return value


async def _boom(tag):
    n = current_attempt()
    LOG.append((tag, n))
    raise ValueError(f"{tag} boom {n}")


boom = durable.step(_boom, retry=RetryPolicy(max_attempts=3, initial_interval=0.5, backoff=1.0, jitter=0.0))


@make_durable
async def catches_exhausted():
    try:
        await boom("x")
    except ValueError as e:
        await record("compensate", str(e))
        return ("caught", str(e))
    return "not reached"


async def test_exhausted_attempts_raise_the_last_exception_where_try_except_catches_it():
    pauses: list = []
    got = await finish(catches_exhausted, DurableBackend(InMemoryStateStore()), "c", Clock(T0), pauses=pauses)
    assert got == ("caught", "x boom 3")
    assert LOG == [("x", 1), ("x", 2), ("x", 3), ("compensate", "x boom 3")]
    assert pauses == [0.5, 0.5]


class MissingKey(KeyError):
    pass


async def _picky(exc_type):
    LOG.append(("picky", current_attempt()))
    raise exc_type("nope")


picky = durable.step(_picky, retry=RetryPolicy(max_attempts=5, initial_interval=1.0, jitter=0.0,
                                               non_retryable=(KeyError,)))


@make_durable
async def catches_any(exc_type):
    try:
        await picky(exc_type)
    except Exception as e:  # noqa: BLE001 - the test looks at what arrived
        return type(e).__name__
    return "not reached"


@pytest.mark.parametrize("exc_type", [KeyError, MissingKey, DeadlineExceeded, InstanceCancelled])
async def test_non_retryable_and_durable_control_errors_are_raised_at_once(exc_type):
    """``non_retryable`` types (and their subclasses), DeadlineExceeded and InstanceCancelled: one attempt."""
    backend = DurableBackend(InMemoryStateStore())
    got = await catches_any.runtime(backend, "n", clock=Clock(T0)).run(catches_any, (exc_type,), {})
    assert got == exc_type.__name__
    assert LOG == [("picky", 1)]


async def test_a_retryable_error_of_the_same_step_is_retried():
    """The control for the test above: ValueError is not in ``non_retryable``."""
    pauses: list = []
    got = await finish(catches_any, DurableBackend(InMemoryStateStore()), "n", Clock(T0), ValueError, pauses=pauses)
    assert got == "ValueError" and len(LOG) == 5 and len(pauses) == 4


@durable.step(retry=RetryPolicy(max_attempts=3, initial_interval=0.0, jitter=0.0), timeout=0.2)
async def slow(tag):
    n = current_attempt()
    LOG.append((tag, n))
    await asyncio.sleep(30 if n <= PLAN["slow"] else 0)
    return n


@make_durable
async def uses_slow():
    try:
        return await slow("s")
    except StepTimeout as e:
        return ("timed out", isinstance(e, TimeoutError), isinstance(e, DurableError))


@pytest.mark.parametrize("slow_attempts, expected", [(1, 2), (2, 3), (3, ("timed out", True, True))])
async def test_step_timeout_is_raised_and_retried(slow_attempts, expected):
    """An async step that sleeps too long gets StepTimeout (a TimeoutError), retried like any error; a delay
    of 0 retries at once in the same run."""
    PLAN["slow"] = slow_attempts
    started = time.monotonic()
    got = await uses_slow.runtime(DurableBackend(InMemoryStateStore()), "s", clock=Clock(T0)).run(uses_slow)
    assert got == expected
    assert LOG == [("s", n) for n in range(1, min(slow_attempts + 1, 3) + 1)]
    assert time.monotonic() - started < 10


# -- make_durable(retry=...): the default policy of leaf step calls ---------------------------------------------

async def _leaf_body(tag, fails):
    COUNTS[tag] += 1
    if COUNTS[tag] <= fails:
        raise ValueError(f"{tag} failed {COUNTS[tag]}")
    return tag


def leaf(tag, fails):
    """A plain def returning an awaitable: awaited as one (leaf) step."""
    return _leaf_body(tag, fails)


@durable.step(retry=1)
async def own_single(tag, fails):
    return await _leaf_body(tag, fails)


@durable.step(retry=RetryPolicy(max_attempts=6, initial_interval=0.0))
async def own_six(tag, fails):
    return await _leaf_body(tag, fails)


async def nested(tag, fails):
    """A nested durable call: not a leaf step, so the program's default policy does not retry it."""
    return await _leaf_body(tag, fails)


@make_durable(retry=RetryPolicy(max_attempts=3, initial_interval=0.0, jitter=0.0))
async def with_default():
    out = [await leaf("leaf", 2)]
    for call, tag, fails in [(own_single, "own1", 1), (own_six, "own6", 5), (nested, "nested", 1),
                             (leaf, "leaf4", 4)]:
        try:
            out.append(await call(tag, fails))
        except ValueError as e:
            out.append(str(e))
    pending = leaf("coro", 1)  # an awaited coroutine object is not a step call: no default policy
    try:
        await pending
    except ValueError as e:
        out.append(str(e))
    return out


async def test_program_default_policy_applies_to_leaf_calls_and_a_steps_own_policy_wins():
    got = await with_default.runtime(DurableBackend(InMemoryStateStore()), "d", clock=Clock(T0)).run(with_default)
    assert got == ["leaf", "own1 failed 1", "own6", "nested failed 1", "leaf4 failed 3", "coro failed 1"]
    assert COUNTS == {"leaf": 3, "own1": 1, "own6": 6, "nested": 1, "leaf4": 3, "coro": 1}


# -- bad policies -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, field", [
    ({"max_attempts": 0}, "max_attempts"),
    ({"max_attempts": -2}, "max_attempts"),
    ({"initial_interval": -1.0}, "initial_interval"),
    ({"max_interval": -0.5}, "max_interval"),
    ({"backoff": 0.5}, "backoff"),
    ({"non_retryable": (ValueError, "KeyError")}, "non_retryable"),
    ({"non_retryable": (int,)}, "non_retryable"),
])
def test_bad_policies_are_refused_at_declaration(kwargs, field):
    with pytest.raises((ValueError, TypeError)) as e:
        RetryPolicy(**kwargs)
    assert field in str(e.value)


def test_bad_step_options_are_refused_at_declaration():
    async def f():
        return 1

    with pytest.raises((ValueError, TypeError), match="max_attempts"):
        durable.step(f, retry=0)
    with pytest.raises(TypeError):
        durable.step(f, retry="three")
    with pytest.raises((ValueError, TypeError), match="timeout"):
        durable.step(f, timeout=-1)
    with pytest.raises(TypeError):
        make_durable(retry="often")(catches_any.fn)


# -- the discard hook, blocking steps, retrying an instance whose step ran out of attempts -----------------------

class DiscardingBackend(DurableBackend):
    """A backend with the optional hook ``discard_step_writes`` (the Django app rolls back a step's writes)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.discarded: list[str] = []

    def discard_step_writes(self, instance_id):
        self.discarded.append(instance_id)


async def test_every_failed_attempt_discards_the_steps_writes():
    PLAN["fails"] = 2
    backend = DiscardingBackend(InMemoryStateStore())
    assert await finish(uses_sometimes, backend, "h", Clock(T0), "t") == (1, "t-ok", 1)
    assert backend.discarded == ["h", "h"]
    # a leaf step without a policy that raises: discarded once, the error reaches the program
    backend = DiscardingBackend(InMemoryStateStore())
    got = await with_default.runtime(backend, "d", clock=Clock(T0)).run(with_default)
    # leaf, own1, own6, leaf4, coro (a nested durable call is not a step)
    assert got[0] == "leaf" and len(backend.discarded) == 2 + 1 + 5 + 3 + 1


async def _blocking(tag):
    LOG.append(tag)
    time.sleep(0.3)  # blocks the event loop: the timeout cannot interrupt it
    return "result that must be dropped"


blocking = durable.step(_blocking, timeout=0.1)


@make_durable
async def uses_blocking():
    try:
        return await blocking("b")
    except StepTimeout:
        return "timed out"


async def test_a_step_that_blocks_past_its_timeout_gets_step_timeout_when_it_returns():
    backend = DiscardingBackend(InMemoryStateStore())
    assert await uses_blocking(orchestration_backend=backend, instance_id="bl") == "timed out"
    assert LOG == ["b"] and backend.discarded == ["bl"]


@make_durable
async def retries_with_a_lock():
    await boom(threading.Lock())


async def test_a_retry_whose_arguments_cannot_be_saved_is_refused_clearly_and_keeps_the_last_checkpoint():
    backend = DurableBackend(InMemoryStateStore())
    with pytest.raises(CheckpointException, match="retry of .*boom") as e:
        await retries_with_a_lock.runtime(backend, "lk", clock=Clock(T0)).run(retries_with_a_lock)
    assert "picklable" in str(e.value)
    assert await backend.load_state("lk") is None  # no checkpoint had been saved: none is made up


async def test_a_step_called_outside_durable_code_runs_once():
    PLAN["fails"] = 1
    with pytest.raises(ConnectionError):
        await sometimes("plain")
    assert LOG == [("plain", 1)]  # no retries, and current_attempt() is 1 outside a retried step
