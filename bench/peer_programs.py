"""Programs of this project that the peer benchmark runs (core and durable_django).

They live in a module of their own so that durable_django can import them
back by dotted path. The per-step and resume programs are the core
benchmark's (:mod:`bench.workloads`); :func:`event_loop` and its step
:func:`mark` measure event-to-resume latency.
"""

from __future__ import annotations

import time

from durable import wait_for_event

#: When :func:`mark` ran, by its argument (this process only).
MARKS: dict[int, float] = {}


async def mark(v: int) -> int:
    """Note when the step after a received event runs."""
    MARKS[v] = time.perf_counter()
    return v


async def event_loop(rounds: int) -> int:
    """``rounds`` times: wait for the event ``go``, then run the step :func:`mark` with its payload."""
    total = 0
    for _ in range(rounds):
        v = await wait_for_event("go")
        total += await mark(v)
    return total
