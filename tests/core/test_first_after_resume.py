"""Regression: ``first()`` resumed with two paused branches, one of which ends: the other is cancelled.

Both branches' tasks may end in the same round of ``asyncio.wait`` (one
completes, the other pauses again). The branch that pauses was still counted
as running when the completed one decided the group, so it was asked to
cancel at a next await it never reached, and the instance paused on it for
ever instead of returning.
"""

from __future__ import annotations

import asyncio

import pytest

import durable
from durable import DurableBackend, PauseForEventException, make_durable

cleaned: list[str] = []


async def answer(name: str):
    return await durable.wait_for_event(name)


async def forever():
    try:
        await durable.wait_for_event("never")
    finally:
        cleaned.append("finally")


@make_durable
async def first_of_two():
    return await durable.first(answer("left"), forever())


def test_first_resumed_cancels_the_branch_that_paused_again():
    backend = DurableBackend()

    async def scenario():
        with pytest.raises(PauseForEventException):
            await first_of_two(instance_id="i", orchestration_backend=backend)
        backend.publish_event("i", "left", "L")
        return await first_of_two(instance_id="i", orchestration_backend=backend)

    cleaned.clear()
    assert asyncio.run(scenario()) == "L"
    assert cleaned == ["finally"]
