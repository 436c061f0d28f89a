"""Programs under flow control for tests/django/test_flow_control.py (imported by dotted path in workers too).

Each step records when it started and ended (a FlowMark row, committed with the step's checkpoint), so the test
can compute how many ran at the same time.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import durable
from durable import make_durable
from durable_django import db_step, limit

from .models import FlowMark

#: The Celery queue of the routed program: one per test session, like the session's default queue.
FLOW_QUEUE = os.environ.get("DURABLE_TEST_QUEUE", "durable-test") + "-flow"


@db_step
def work(tag: str, key: str, seconds: float) -> None:
    start = time.time()
    hang = os.environ.get("DURABLE_TEST_FLOW_HANG_DIR")
    if hang and tag.startswith("hang"):
        Path(hang, f"{tag}.entered").touch()
        time.sleep(120)  # killed by the test
    time.sleep(seconds)
    FlowMark.objects.create(tag=tag, key=key, start=start, end=time.time())


@limit(concurrency=2)
@make_durable
async def two_at_a_time(tag: str, seconds: float = 0.3) -> str:
    await work(tag, "", seconds)
    return tag


@limit(key="customer", per_key=1)
@make_durable
async def one_per_customer(tag: str, customer: str, seconds: float = 0.3) -> str:
    await work(tag, customer, seconds)
    return tag


@limit(rate="3/2s")
@make_durable
async def rate_limited(tag: str) -> str:
    await work(tag, "", 0.0)
    return tag


@make_durable
async def prioritised(tag: str) -> str:
    await work(tag, "", 0.0)
    return tag


@limit(queue=FLOW_QUEUE)
@make_durable
async def routed(tag: str) -> str:
    await work(tag, "", 0.0)
    await durable.sleep(0.2)  # a timer's wake-up goes to the queue too
    return tag


@limit(concurrency=1)
@make_durable
async def exclusive(tag: str) -> str:
    await work(tag, "", 0.1)
    return tag


@limit(concurrency=1, hold="finished")
@make_durable
async def exclusive_until_done(tag: str) -> str:
    await work(tag, "", 0.0)
    await durable.wait_for_event("go")
    return tag

