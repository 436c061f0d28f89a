"""The program of the exhaustive crash test over parallel branches and a child (tests/django/test_crash_family.py).

Two branches (each a step, an event wait, a step) run while a child (a step, a durable timer, a step) runs on its
own; then the parent awaits the child and writes a last step. Every step is a ``db_step`` that writes its label and
may SIGKILL its process after the write (``crash_here``, the plan of test_crash_exhaustive); the checkpoint hook
names a checkpoint by its branch: ``checkpoint:<branch or ->:<steps>``.
"""

from __future__ import annotations

import durable
from durable import make_durable
from durable.state import current_branch
from durable_django import db_step

from .durable_programs import crash_here
from .models import SideEffect

#: (instance id, branch or "-", steps) of every checkpoint the recording hook saw.
RECORDED: list[tuple[str, str, int]] = []
FAMILY_LABELS = ("fin", "l1", "l2", "r1", "r2")
KID_LABELS = ("k1", "k2")


def where(steps: int) -> str:
    return f"checkpoint:{current_branch.get() or '-'}:{steps}"


def crash_hook(instance_id: str, steps: int) -> None:
    """``DURABLE["ON_CHECKPOINT"]``: SIGKILL after the planned checkpoint of the instance or of one of its branches."""
    crash_here(instance_id, where(steps))


def record_hook(instance_id: str, steps: int) -> None:
    RECORDED.append((instance_id, current_branch.get() or "-", steps))


@db_step
def family_effect(key: str, label: str) -> str:
    SideEffect.objects.create(key=key, note=label)
    crash_here(key, f"step:{label}")
    return label


async def family_leg(key: str, label: str, event: str) -> list:
    first = await family_effect(key, f"{label}1")
    got = await durable.wait_for_event(event)
    return [first, got, await family_effect(key, f"{label}2")]


@make_durable
async def family_kid(key: str, nap: float) -> list:
    first = await family_effect(key, "k1")
    await durable.sleep(nap)
    return [first, await family_effect(key, "k2")]


@make_durable
async def crash_family(key: str, nap: float) -> dict:
    kid = await durable.start_child(family_kid, f"{key}-kid", nap, instance_id=f"{key}-kid")
    legs = await durable.gather(family_leg(key, "l", "left"), family_leg(key, "r", "right"))
    got = await kid
    return {"legs": legs, "kid": got, "fin": await family_effect(key, "fin")}


def expected(key: str) -> dict:
    return {"legs": [["l1", {"left": key}, "l2"], ["r1", {"right": key}, "r2"]], "kid": ["k1", "k2"], "fin": "fin"}
