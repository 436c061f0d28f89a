"""Programs of the flow-control benchmark (:mod:`bench.flowcontrol`): the same one-step program twice, one
of them under a concurrency limit (given by the benchmark's ``DURABLE["LIMITS"]``)."""

from __future__ import annotations

from . import workloads


async def free_step(x: int) -> int:
    return await workloads.step(x, 1)


async def limited_step(x: int) -> int:
    return await workloads.step(x, 1)
