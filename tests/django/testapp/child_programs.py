"""Programs of the child-instance tests (tests/django/test_children.py).

Module-level, so worker subprocesses import them by dotted path. Steps that
matter write a ``SideEffect`` row (a ``db_step``, committed with its
checkpoint): the tests count them to show what ran, exactly once.
"""

from __future__ import annotations

import os
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
def hold(key: str) -> None:
    """A step that waits while ``$DURABLE_TEST_HOLD_DIR/<key>.hold`` exists (no directory: it does not wait)."""
    folder = os.environ.get("DURABLE_TEST_HOLD_DIR")
    if not folder:
        return
    Path(folder, f"{key}.entered").touch()
    deadline = time.monotonic() + 60
    while Path(folder, f"{key}.hold").exists() and time.monotonic() < deadline:
        time.sleep(0.02)


@make_durable
async def square(key: str, n: int) -> int:
    await note(key, f"square {n}")
    return n * n


@make_durable
async def boom(key: str) -> int:
    await note(key, "boom")
    raise ValueError(f"child {key} failed")


@make_durable
async def waits_for_go(key: str) -> str:
    try:
        return await durable.wait_for_event("go")
    finally:
        await note(key, "child-finally")


@make_durable
async def held(key: str, n: int) -> int:
    await hold(key)
    return n + 1


@make_durable
async def parent_of_one(key: str, n: int) -> int:
    child = await durable.start_child(square, key, n)
    return await child


@make_durable
async def parent_catches(key: str) -> str:
    child = await durable.start_child(boom, key, instance_id=f"{key}-boom")
    try:
        await child
    except ValueError as exc:
        await note(key, "caught")
        return f"caught: {exc}"
    return "not raised"


@make_durable
async def parent_leaves(key: str) -> str:
    """Starts a child that waits for an event, then waits for one itself (cancelled while both wait)."""
    await durable.start_child(waits_for_go, key, instance_id=f"{key}-child", on_parent_close="cancel")
    try:
        return await durable.wait_for_event("never")
    finally:
        await note(key, "parent-finally")


@make_durable
async def fan_out(key: str, n: int, program: str = "square") -> list:
    target = {"square": square, "held": held}[program]
    children = []
    for i in range(n):
        children.append(await durable.start_child(target, f"{key}-{i}", i, instance_id=f"{key}/c{i}"))
    return await durable.gather(*children)


@make_durable
async def fan_out_at_once(key: str, n: int) -> list:
    """The fan-out form: every child started in one step (one checkpoint, one transaction)."""
    children = await durable.start_children(square, [(f"{key}-{i}", i) for i in range(n)],
                                            instance_ids=[f"{key}/c{i}" for i in range(n)])
    return await durable.gather(*children)


@make_durable
async def starts_twice(key: str) -> list:
    """The same child id twice: the second start is a no-op (idempotent by id)."""
    a = await durable.start_child(square, key, 3, instance_id=f"{key}/same")
    b = await durable.start_child(square, key, 3, instance_id=f"{key}/same")
    return [await a, await b]


@make_durable
async def steals(key: str, other: str) -> str:
    try:
        await durable.start_child(square, key, 1, instance_id=other)
    except durable.DurableError as exc:
        return f"refused: {exc}"
    return "started"


@make_durable
async def starts_then_works(key: str, n: int) -> list:
    """Starts its children, then runs a step of its own (held by the test) before it gathers them."""
    children = []
    for i in range(n):
        children.append(await durable.start_child(square, f"{key}-{i}", i, instance_id=f"{key}/c{i}"))
    await hold(key)
    return await durable.gather(*children)


@make_durable
async def awaits_go_child(key: str) -> str:
    child = await durable.start_child(waits_for_go, key, instance_id=f"{key}-child")
    try:
        return "child: " + await child
    except durable.InstanceCancelled:
        return "child cancelled"


@make_durable
async def leaves_children(key: str) -> str:
    """Returns at once: its "wait" child keeps it open, its "abandon" child runs on after it."""
    await durable.start_child(waits_for_go, f"{key}-w", instance_id=f"{key}-wait", on_parent_close="wait")
    await durable.start_child(waits_for_go, f"{key}-a", instance_id=f"{key}-abandon", on_parent_close="abandon")
    return "parent done"


@make_durable
async def first_of_two(key: str):
    a = await durable.start_child(waits_for_go, f"{key}-a", instance_id=f"{key}-a")
    b = await durable.start_child(waits_for_go, f"{key}-b", instance_id=f"{key}-b")
    return await durable.first(a, b)
