"""Bad wait values are refused where the program gives them; migrations find awaits by what the user wrote."""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from decimal import Decimal

import pytest

import durable
from durable import DurableBackend, InMemoryStateStore, PauseForEventException
from durable.stack import FunctionCall

from .conftest import run

PROGRAMS = '''
import durable
from durable import make_durable


@make_durable
async def nap(seconds):
    try:
        await durable.sleep(seconds)
    except (ValueError, TypeError) as exc:
        return f"refused: {exc}"
    return "slept"


@make_durable
async def nap_uncaught(seconds):
    await durable.sleep(seconds)
    return "slept"


@make_durable
async def wait_uncaught(timeout):
    return await durable.wait_for_event("go", timeout=timeout)


@make_durable
async def wait_caught(timeout):
    try:
        return await durable.wait_for_event("go", timeout=timeout)
    except ValueError as exc:
        return f"refused: {exc}"


@make_durable
async def nap_until(when):
    await durable.sleep_until(when)
    return "woke"
'''

BAD_SECONDS = [math.nan, math.inf, -math.inf, -1, 1e12, 1e300, 10 ** 400, timedelta(days=-1), Decimal("NaN")]


@pytest.mark.parametrize("seconds", BAD_SECONDS, ids=str)
def test_bad_sleep_is_refused_at_the_await_and_can_be_caught(make_module, seconds):
    mod = make_module(PROGRAMS)
    out = run(mod.nap(seconds, orchestration_backend=DurableBackend(), instance_id="i"))
    assert out.startswith("refused: sleep()")
    assert ("finite" in out) or (">= 0" in out) or ("year 9999" in out) or ("too large" in out)


@pytest.mark.parametrize("seconds", [math.nan, 1e12, "5", True], ids=str)
def test_bad_sleep_uncaught_fails_the_instance_with_the_error(make_module, seconds):
    mod = make_module(PROGRAMS)
    backend = DurableBackend(InMemoryStateStore())
    exc_type = TypeError if isinstance(seconds, str | bool) else ValueError
    with pytest.raises(exc_type, match=r"sleep\(\)"):
        run(mod.nap_uncaught(seconds, orchestration_backend=backend, instance_id="i"))
    state = run(backend.load_state("i"))
    assert state["status"] == "failed" and isinstance(state["error"], exc_type)
    with pytest.raises(exc_type):  # a failed instance raises its stored error again and runs nothing
        run(mod.nap_uncaught(0, orchestration_backend=backend, instance_id="i"))


@pytest.mark.parametrize("timeout", [math.nan, math.inf, -5, 1e12], ids=str)
def test_bad_wait_timeout_is_refused_at_the_await(make_module, timeout):
    mod = make_module(PROGRAMS)
    assert run(mod.wait_caught(timeout, orchestration_backend=DurableBackend(), instance_id="c")).startswith(
        "refused: wait_for_event() timeout")
    backend = DurableBackend(InMemoryStateStore())
    with pytest.raises(ValueError, match="timeout"):
        run(mod.wait_uncaught(timeout, orchestration_backend=backend, instance_id="u"))
    assert run(backend.load_state("u"))["status"] == "failed"


def test_good_values_still_work(make_module):
    mod = make_module(PROGRAMS)
    backend = DurableBackend()
    assert run(mod.nap(0, orchestration_backend=backend, instance_id="a")) == "slept"
    assert run(mod.nap(Decimal("0.0"), orchestration_backend=backend, instance_id="a2")) == "slept"
    assert run(mod.nap(timedelta(0), orchestration_backend=backend, instance_id="a3")) == "slept"
    assert durable.sleep(timedelta(minutes=2)).seconds == 120.0
    with pytest.raises(PauseForEventException) as info:
        run(mod.wait_uncaught(3600, orchestration_backend=backend, instance_id="b"))
    assert info.value.due is not None
    assert run(mod.nap_until(datetime(2000, 1, 1), orchestration_backend=backend, instance_id="c")) == "woke"
    assert run(mod.nap_until(0.0, orchestration_backend=backend, instance_id="d")) == "woke"


@pytest.mark.parametrize("when", [math.nan, math.inf, 1e300, -1e300], ids=str)
def test_sleep_until_refuses_times_beyond_a_timestamp(make_module, when):
    mod = make_module(PROGRAMS)
    with pytest.raises(ValueError, match="between the years 1 and 9999"):
        run(mod.nap_until(when, orchestration_backend=DurableBackend(), instance_id="x"))
    with pytest.raises(TypeError, match="datetime or a POSIX time"):
        durable.sleep_until("tomorrow")


def test_a_hand_built_request_with_a_bad_due_time_is_thrown_at_the_await(make_module):
    mod = make_module('''
        from durable import make_durable
        from durable.primitives import TimerRequest

        @make_durable
        async def odd():
            try:
                await TimerRequest(due=float("inf"))
            except ValueError as exc:
                return str(exc)
        ''')
    assert "between the years 1 and 9999" in run(mod.odd(orchestration_backend=DurableBackend(), instance_id="o"))


MIGRATED = '''
from durable import make_durable, wait_for_event, PauseForEventException


async def work(x):
    return x


@make_durable
async def proc(n):
    a = await work(n)
    b = await wait_for_event("go")
    c = await wait_for_event(
        "later",
        timeout=60)
    raise PauseForEventException("done")
    return a + b + c
'''


def _frame(make_module) -> FunctionCall:
    mod = make_module(MIGRATED)
    return FunctionCall.start(mod.proc.fn, (1,), {})


@pytest.mark.parametrize("where, line", [
    ('wait_for_event("go"', 12),            # as written in the file (double quotes)
    ("wait_for_event('go'", 12),            # as resume_points() shows it
    ('b = await wait_for_event("go")', 12),  # the whole line, with the assigned name
    ("await wait_for_event(", 12),          # the first match in code order wins
    ('wait_for_event( "later", timeout=60)', 13),  # an await over several lines: whitespace runs are one space
    ('"later"', 13),
    ('PauseForEventException("done")', 16),
    (12, 12), (13, 13),
])
def test_move_to_matches_what_the_user_wrote(make_module, where, line):
    frame = _frame(make_module)
    frame.move_to(where)
    assert frame.compiled.resume_points[frame.pc][0] == line


def test_move_to_without_a_match_lists_the_resume_points(make_module):
    frame = _frame(make_module)
    with pytest.raises(ValueError) as info:
        frame.move_to('wait_for_event("nope"')
    msg = str(info.value)
    assert "no await matching" in msg and "proc" in msg
    assert "line 11: await work(n)" in msg and "line 12: await wait_for_event('go')" in msg
    with pytest.raises(ValueError, match="matching 99"):
        frame.move_to(99)
    with pytest.raises(TypeError):
        frame.move_to("  ")
