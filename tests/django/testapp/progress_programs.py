"""Programs of the progress tests (tests/django/test_progress.py): durable.set_status and durable.publish.

Module-level, so worker subprocesses import them by dotted path.
"""

from __future__ import annotations

import durable
from durable import make_durable, wait_for_event
from durable_django import db_step
from durable_django.exceptions import UnknownInstance, ValueTimeout
from durable_django.progress import published_value

from .models import SideEffect


@db_step
def work(key: str, i: int) -> int:
    SideEffect.objects.create(key=key, note=str(i))
    return i


@make_durable
async def reported_job(key: str, steps: int = 3) -> dict:
    """Reports a stage and a percentage at every step, publishes a total, waits for "go", publishes the answer."""
    total = 0
    for i in range(steps):
        durable.set_status({"stage": "working", "percent": 100 * i // steps})
        total += await work(key, i)
    durable.set_status({"stage": "waiting for go", "percent": 90})
    durable.publish("total", total)
    go = await wait_for_event("go")
    durable.set_status({"stage": "done", "percent": 100, "message": f"go from {go}"})
    durable.publish("answer", {"total": total, "go": go})
    return total


@make_durable
async def sometimes_reports(key: str, steps: int) -> int:
    """Reports a value that changes every third step only (the others set the same value again)."""
    for i in range(steps):
        durable.set_status({"block": i - i % 3})
        await work(key, i)
    return steps


#: published_value with a short patience for the tests (the default starts at 1 s and doubles).
QUICK = durable.RetryPolicy(max_attempts=40, initial_interval=0.2, backoff=1.5, max_interval=1.0, jitter=0,
                            retry_on=(ValueTimeout, UnknownInstance))
quick_value = durable.step(retry=QUICK)(published_value)


@make_durable
async def waits_for_another(other: str) -> dict:
    """Another process waiting for a value: retried reads with durable timers in between."""
    durable.set_status({"stage": f"waiting for {other}"})
    answer = await quick_value(other, "answer")
    return {"got": answer}


async def _reports_with_history(key: str, steps: int) -> int:
    for i in range(steps):
        durable.set_status({"step": i})
        await work(key, i)
    return steps


#: Keeps its checkpoints: a fork starts with the status of the checkpoint it is made from.
reports_with_history = make_durable(_reports_with_history, history=True)


@db_step
def work_and_report(key: str, i: int) -> int:
    """A status set inside a db_step (it runs in the connection's thread, in a copy of the program's context)."""
    SideEffect.objects.create(key=key, note=str(i))
    durable.set_status({"stage": "in a db_step", "done": i})
    return i


@make_durable
async def reports_from_a_step(key: str) -> int:
    total = await work_and_report(key, 1)
    total += await work_and_report(key, 2)
    return total
