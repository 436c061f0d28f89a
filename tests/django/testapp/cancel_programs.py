"""Programs of the cancellation and deadline tests (tests/django/test_cancellation.py).

Module-level, so worker subprocesses import them by dotted path. Every
cleanup step writes a ``SideEffect`` row (a ``db_step``): it commits with its
checkpoint, so the rows show which cleanup ran, exactly once.
"""

from __future__ import annotations

import time
from pathlib import Path

import durable
from durable import make_durable
from durable_django import db_step

from .models import SideEffect


@db_step
def note(key: str, text: str) -> None:
    SideEffect.objects.create(key=key, note=text)


@db_step
def gated(key: str, gate_dir: str) -> None:
    """A step in progress until the test opens its gate (the file ``<key>.go``); it says when it has begun."""
    Path(gate_dir, f"{key}.entered").touch()
    deadline = time.monotonic() + 60
    while not Path(gate_dir, f"{key}.go").exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"the gate of {key} was never opened")
        time.sleep(0.02)
    SideEffect.objects.create(key=key, note="gated step")


async def inner(key: str):
    """A nested durable call with its own cleanup."""
    try:
        await note(key, "inner-start")
        return await durable.wait_for_event("go")
    finally:
        await note(key, "inner-finally")


@make_durable
async def nested_cleanup(key: str):
    try:
        return await inner(key)
    finally:
        await note(key, "outer-finally")


@make_durable
async def slow_cleanup(key: str):
    """A cleanup that pauses: it waits for ``cleanup-done`` before it ends."""
    try:
        await durable.wait_for_event("go")
    finally:
        await note(key, "cleanup-start")
        await durable.wait_for_event("cleanup-done")
        await note(key, "cleanup-end")


@make_durable
async def compensating(key: str):
    """Catches the cancellation and compensates: it completes (it is not cancelled)."""
    await note(key, "reserved")
    try:
        await durable.wait_for_event("confirm")
        return "confirmed"
    except durable.InstanceCancelled:
        await note(key, "released")
        return "compensated"


@make_durable
async def gated_then_more(key: str, gate_dir: str):
    """A step in progress when the cancel comes: the cancellation is raised at the await after it."""
    try:
        await gated(key, gate_dir)
        await note(key, "after the gate")
        return "finished"
    finally:
        await note(key, "finally")


async def inner_gated(key: str, gate_dir: str):
    """A nested durable call whose step is in progress when the cancel comes."""
    try:
        await gated(key, gate_dir)
        await note(key, "inner after the gate")
    finally:
        await note(key, "inner-finally")


@make_durable
async def nested_gated(key: str, gate_dir: str):
    try:
        await inner_gated(key, gate_dir)
        return "finished"
    finally:
        await note(key, "outer-finally")


@make_durable
async def deadline_wait(key: str):
    """Waits far longer than its deadline allows; catches DeadlineExceeded and records it."""
    try:
        return await durable.wait_for_event("never", timeout=3600)
    except durable.DeadlineExceeded:
        await note(key, "deadline")
        return "deadline hit"


@make_durable(deadline=120)
async def deadline_by_default(key: str):
    """The program's own deadline (make_durable(deadline=...)): used when start() gives none."""
    try:
        await durable.sleep(3600)
        return "slept"
    except durable.DeadlineExceeded:
        await note(key, "deadline")
        return "deadline hit"


@make_durable
async def step_then_wait(key: str):
    try:
        await note(key, "step")
        return await durable.wait_for_event("go")
    finally:
        await note(key, "finally")


def cancel_after_first_checkpoint(instance_id: str, steps: int) -> None:
    """``ON_CHECKPOINT`` hook: request the cancel of a ``hooked-`` instance right after its first checkpoint
    (from another connection, as an operator would), before the worker reaches its next checkpoint."""
    import threading

    from django.db import connection

    from durable_django.api import cancel

    def other() -> None:
        try:
            cancel(instance_id, "between two checkpoints")
        finally:
            connection.close()

    if instance_id.startswith("hooked-") and steps == 1:
        t = threading.Thread(target=other)
        t.start()
        t.join()
