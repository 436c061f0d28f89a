"""Programs of the fork tests (tests/django/test_fork.py): eight db_step steps, kept checkpoints.

Module-level, so worker subprocesses import them by dotted path. Each step writes a ``SideEffect`` row
(``key``, note = the step number), so a test counts how often each step ran.
"""

from __future__ import annotations

import durable
from durable import make_durable
from durable_django import db_step

from .models import SideEffect


@db_step
def add_step(key: str, i: int, total: int, factor: int) -> int:
    """Step ``i``: one row per run, and the running total."""
    SideEffect.objects.create(key=key, note=str(i))
    return total + i * factor


async def eight_steps(key: str, factor: int = 1) -> dict:
    """Keeps every checkpoint (``history=True`` below)."""
    total = 0
    for i in range(1, 9):
        total = await add_step(key, i, total, factor)
    return {"key": key, "total": total, "factor": factor}


async def eight_steps_last3(key: str, factor: int = 1) -> dict:
    """Keeps the last three checkpoints."""
    total = 0
    for i in range(1, 9):
        total = await add_step(key, i, total, factor)
    return {"key": key, "total": total, "factor": factor}


async def eight_steps_plain(key: str, factor: int = 1) -> dict:
    """Keeps none (unless ``DURABLE["HISTORY"]`` says so)."""
    total = 0
    for i in range(1, 9):
        total = await add_step(key, i, total, factor)
    return {"key": key, "total": total, "factor": factor}


async def eight_steps_paused(key: str, factor: int = 1) -> dict:
    """Keeps every checkpoint; waits for the event "go" after step 4 (its payload is added to the total)."""
    total = 0
    for i in range(1, 9):
        total = await add_step(key, i, total, factor)
        if i == 4:
            extra = await durable.wait_for_event("go")
            total += extra or 0
    return {"key": key, "total": total, "factor": factor}


async def eight_steps_failing(key: str, fail_at: int) -> dict:
    """Keeps every checkpoint; fails right after step ``fail_at``."""
    total = 0
    for i in range(1, 9):
        total = await add_step(key, i, total, 1)
        if i == fail_at:
            raise RuntimeError(f"failed after step {i}")
    return {"key": key, "total": total}


eight_steps = make_durable(eight_steps, history=True)
eight_steps_failing = make_durable(eight_steps_failing, history=True)
eight_steps_last3 = make_durable(eight_steps_last3, history=3)
eight_steps_plain = make_durable(eight_steps_plain)
eight_steps_paused = make_durable(eight_steps_paused, history=True)
