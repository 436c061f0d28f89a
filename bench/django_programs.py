"""Durable programs (and one bare Celery task) that the Django benchmark runs.

Module level, so that Celery workers import them again by dotted path. The
per-step benchmark reuses :func:`bench.workloads.many_steps` (the core
benchmark's workload) unchanged.
"""

from __future__ import annotations

import time

from durable import wait_for_event

from . import workloads

_redis_client = None


def redis_client():
    """One Redis client per process, on the benchmark's Redis DB."""
    global _redis_client
    if _redis_client is None:
        import os

        import redis

        _redis_client = redis.Redis.from_url(os.environ.get("DURABLE_BENCH_BROKER", "redis://127.0.0.1:6379/9"))
    return _redis_client


def note_key(kind: str, ident: str) -> str:
    """A Redis key for the benchmark's notes, named after this run (its queue's name, inherited by every
    process of the run) so that its cleanup (every key containing that name) removes them and never
    touches another run's."""
    import os

    return f"bench:{os.environ.get('DURABLE_BENCH_RUN', '-')}:{kind}:{ident}"


async def one_step(x: int) -> int:
    """The throughput workload: one awaited trivial step."""
    return await workloads.step(x, 1)


async def mark(key: str) -> float:
    """A step that records when it runs (``time.time()`` pushed to the Redis list ``key``)."""
    t = time.time()
    redis_client().rpush(key, repr(t))
    return t


async def event_loop(key: str, rounds: int) -> int:
    """Wait for ``"go"``, then run the step ``mark``; ``rounds`` times."""
    n = 0
    for _ in range(rounds):
        await wait_for_event("go")
        await mark(key)
        n += 1
    return n
