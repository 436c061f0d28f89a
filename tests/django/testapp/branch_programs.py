"""Programs with parallel branches (tests/django/test_branches.py); module-level, so workers import them by path."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import durable
from durable import make_durable
from durable_django import db_step

from .models import SideEffect


@db_step
def note(key: str, label: str) -> str:
    """One row per call: the tests count them (exactly once)."""
    SideEffect.objects.create(key=key, note=label)
    return label


@db_step
def note_or_hang(key: str, label: str, hang: bool) -> str:
    """As :func:`note`; when ``hang`` and under DURABLE_TEST_HANG_DIR, it then hangs so the test kills the worker
    with the row written and not committed."""
    SideEffect.objects.create(key=key, note=label)
    folder = os.environ.get("DURABLE_TEST_HANG_DIR")
    if hang and folder:
        Path(folder, f"{key}.entered").touch()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            time.sleep(0.05)
    return label


async def approve(key: str, who: str):
    await note(key, f"{who}-asked")
    answer = await durable.wait_for_event(who)
    await note(key, f"{who}-got")
    return answer


@make_durable
async def two_approvals(key: str):
    """Two branches, each waiting for its own event."""
    answers = await durable.gather(approve(key, "manager"), approve(key, "finance"))
    await note(key, "done")
    return answers


async def waits_forever(key: str):
    try:
        await note(key, "waiter-started")
        await durable.wait_for_event("never")
    finally:
        await note(key, "waiter-finally")


async def fails_on_event(key: str):
    await durable.wait_for_event("boom")
    raise ValueError("boom in a branch")


@make_durable
async def failure_cancels_other(key: str):
    try:
        await durable.gather(waits_forever(key), fails_on_event(key))
    except ValueError as exc:
        await note(key, "caught")
        return str(exc)
    return "not raised"


async def counting(key: str, who: str, n: int, hang_at: int):
    for i in range(n):
        await note_or_hang(key, f"{who}-{i}", i == hang_at)
        await asyncio.sleep(0.02)  # a step that yields: the other branch's steps run meanwhile
    return who


@make_durable
async def steps_in_parallel(key: str, n: int, hang_at: int):
    """Two branches of ``n`` database steps each; branch b hangs in step ``hang_at`` (under the hang dir)."""
    done = await durable.gather(counting(key, "a", n, -1), counting(key, "b", n, hang_at))
    await note(key, "end")
    return done


async def timed(key: str, seconds: float):
    await durable.sleep(seconds)
    await note(key, "timer-done")
    return "timer"


@make_durable
async def timer_and_event(key: str, seconds: float):
    """A timer in one branch, an event in the other."""
    return await durable.gather(timed(key, seconds), approve(key, "go"))


@make_durable
async def first_of_two(key: str):
    """The first of two events; the other branch is cancelled (its finally runs)."""
    return await durable.first(approve(key, "left"), waits_forever(key))


async def heavy(key: str, who: str, n: int):
    ballast = who * 20_000  # a large local: in this branch's row only
    for i in range(n):
        await note(key, f"{who}-{i}")
    return len(ballast)


@make_durable
async def heavy_branches(key: str, n: int):
    return await durable.gather(heavy(key, "x", n), heavy(key, "y", n))


async def inner_pair(key: str):
    return await durable.gather(approve(key, "n1"), approve(key, "n2"))


@make_durable
async def nested(key: str):
    """A group in a branch: three event waits at once, two of them nested."""
    return await durable.gather(inner_pair(key), approve(key, "top"))


@make_durable
async def same_event_twice(key: str):
    """Two branches waiting for events of the same name: each takes its own."""
    return await durable.gather(approve(key, "vote"), approve(key, "vote"))


async def heavy_wait(key: str, who: str):
    ballast = who * 20_000
    got = await durable.wait_for_event(who)
    return [len(ballast), got]


@make_durable
async def heavy_waits(key: str):
    """Two branches, each with a 20 KB local, paused on events."""
    return await durable.gather(heavy_wait(key, "x"), heavy_wait(key, "y"))
