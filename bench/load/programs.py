"""The programs of the load suite (module level: workers import them by dotted path)."""

from __future__ import annotations

from durable import sleep, wait_for_event
from durable_django.steps import db_step

EFFECT_TABLE = "bench_load_effect"
EVENT = "go"


@db_step
def record_effect(key: str, payload: dict) -> None:
    """The exactly-once side effect: one row, written in the transaction of the checkpoint that follows."""
    from django.db import connection

    with connection.cursor() as cur:
        cur.execute(f"INSERT INTO {EFFECT_TABLE} (instance_key, target, at) VALUES (%s, %s, clock_timestamp())",
                    [key, (payload or {}).get("target")])


async def wait_then_record(key: str) -> str:
    """What the 100,000 instances run: wait for ``"go"``, record it in the database, complete."""
    payload = await wait_for_event(EVENT)
    await record_effect(key, payload)
    return key


async def sleep_then_record(key: str) -> str:
    """A timer wait (some instances wait for one; the sweep's due timers)."""
    await sleep(3600)
    await record_effect(key, {"target": key})
    return key


@db_step
def make_payload(key: str) -> dict:
    """A step that only computes something (its checkpoint is the one a dead worker leaves behind)."""
    return {"target": key}


async def prepare_then_record(key: str) -> str:
    """Two steps; the sweep's "expired lease" instances stopped between them (their worker died)."""
    payload = await make_payload(key)
    await record_effect(key, payload)
    return key


class StopHere(BaseException):
    """Raised by :func:`stop_after_first_step`: the run ends as if its worker died (no exception handler of the
    executor runs, the lease stays taken), right after the checkpoint of the first step."""


def stop_after_first_step(instance_id: str, steps: int) -> None:
    """``DURABLE['ON_CHECKPOINT']`` while building the "running" template: the worker "dies" after step 1."""
    if instance_id == "load-template-running":
        raise StopHere(instance_id)

