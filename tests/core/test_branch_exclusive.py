"""Exclusive steps (``durable_exclusive = True``, e.g. the Django app's ``db_step``) in parallel branches.

A host whose steps write in the transaction the next checkpoint commits needs one branch's
checkpoint never to commit another branch's writes: in branches, an exclusive step runs only
while no other branch holds one that is not checkpointed yet. Other steps still overlap.
"""

from __future__ import annotations

import asyncio

from durable import DurableBackend, InMemoryStateStore, gather, make_durable

LOG: list[tuple[str, int]] = []


async def _write(n: int) -> int:
    LOG.append(("start", n))
    await asyncio.sleep(0.005)
    LOG.append(("end", n))
    return n


def write(n: int):
    """A leaf step (a plain def returning an awaitable, as db_step is)."""
    return _write(n)


write.durable_exclusive = True  # type: ignore[attr-defined]


async def fetch(n: int) -> int:
    LOG.append(("fetch", n))
    await asyncio.sleep(0.005)
    LOG.append(("fetched", n))
    return n


async def branch(n: int) -> tuple[int, int, int]:
    a = await write(n)
    b = await fetch(n)
    c = await write(n + 10)
    return a, b, c


@make_durable
async def three_branches():
    return await gather(branch(1), branch(2), branch(3))


def test_exclusive_steps_do_not_overlap_other_steps_do():
    LOG.clear()
    saves: list[str] = []

    class Recording(DurableBackend):
        async def save_branch(self, instance_id, path, state):
            saves.append(path)
            LOG.append(("checkpoint", int(path.split(".")[1])))
            await super().save_branch(instance_id, path, state)

    result = asyncio.run(three_branches(instance_id="x", orchestration_backend=Recording(InMemoryStateStore())))
    assert result == [(1, 1, 11), (2, 2, 12), (3, 3, 13)]
    holder = None  # the branch whose exclusive step is not checkpointed yet
    for kind, n in LOG:
        if kind == "start":
            assert holder is None, f"an exclusive step started while branch {holder}'s was not checkpointed: {LOG}"
            holder = n % 10
        elif kind == "checkpoint" and holder == n + 1:
            holder = None
    inside = None  # a plain step in progress: did another branch's step start meanwhile?
    overlapped = False
    for kind, n in LOG:
        if kind == "fetch":
            inside = n
        elif kind == "fetched":
            inside = None
        elif kind == "start" and inside is not None and n % 10 != inside:
            overlapped = True
    assert overlapped, f"no step of a branch ran while another branch's plain step did: {LOG}"
    assert len(saves) >= 9
