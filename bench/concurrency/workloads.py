"""The programs the concurrency benchmark runs.

They live in a real module so the runtime treats them as user code (and a
Celery worker imports them again by dotted path). :func:`fan` is part 1 and 2:
``n - 1`` branches paused on events and one branch that runs ``k`` steps;
:func:`add` notes when each of its runs starts (:data:`STAMPS`), so the gaps
between consecutive notes are the runner's per-step cost (the step, its
checkpoint and the runtime's loop), with the same clock on every backend.
:func:`fan_out` and :func:`work` are part 3: children against independent
instances doing the same work.
"""

from __future__ import annotations

import time

import durable
from durable import make_durable, wait_for_event

#: perf_counter() at the start of every run of :func:`add` in this process (cleared by the benchmark).
STAMPS: list[float] = []


async def add(acc: int, i: int) -> int:
    """One step of the runner branch (a nested durable call: one checkpoint each)."""
    STAMPS.append(time.perf_counter())
    return acc + i


async def hold(name: str) -> int:
    """A branch that stays paused until the event ``name`` arrives."""
    value: int = await wait_for_event(name)
    return value


async def runner(k: int) -> int:
    """The measured branch: ``k`` steps."""
    acc = 0
    for i in range(k):
        acc = await add(acc, i)
    return acc


async def fan(n: int, k: int) -> int:
    """``n`` branches: ``n - 1`` paused on the events ``e0``... and the runner (last, so the others have
    started and paused before its first step). Returns the runner's sum plus the events' payloads."""
    results = await durable.gather(*[hold(event_name(i)) for i in range(n - 1)], runner(k))
    return sum(results)


async def runner_then_wait(k: int) -> int:
    """The runner, then a wait for ``"stop"``: paused with its ``k`` steps behind it (state sizes against k)."""
    acc = await runner(k)
    stop: int = await wait_for_event("stop")
    return acc + stop


async def fan_paused(n: int, k: int) -> int:
    """:func:`fan` whose runner pauses after its steps (so every branch's state is kept and can be measured)."""
    results = await durable.gather(*[hold(event_name(i)) for i in range(n - 1)], runner_then_wait(k))
    return sum(results)


async def solo(k: int) -> int:
    """The runner as an instance of its own (no group): the reference checkpoint."""
    return await runner(k)


def event_name(i: int) -> str:
    """The event branch ``i`` of :func:`fan` waits for."""
    return f"e{i}"


def expected(n: int, k: int) -> int:
    """What :func:`fan` returns once every event ``e{i}`` was published with payload ``i``."""
    return k * (k - 1) // 2 + (n - 1) * (n - 2) // 2


# -- part 3: children against independent instances ------------------------------------------------
async def unit(x: int) -> int:
    """The work of one child: a trivial step."""
    return x + 1


async def work(x: int, steps: int) -> int:
    """What each child (and each independent instance) runs: ``steps`` checkpointed steps."""
    acc = x
    for _ in range(steps):
        acc = await unit(acc)
    return acc


async def fan_out(n: int, steps: int) -> int:
    """Start ``n`` children running :func:`work` in one step (``start_children``), then wait for all of them
    (one ``"children"`` wait)."""
    handles = await durable.start_children(work_program, [(i, steps) for i in range(n)])
    results = await durable.gather(*handles)
    return sum(results)


def fan_out_expected(n: int, steps: int) -> int:
    """What :func:`fan_out` (and the sum of the independent instances' results) comes to."""
    return n * (n - 1) // 2 + n * steps


fan_program = make_durable(fan)
fan_paused_program = make_durable(fan_paused)
solo_program = make_durable(solo)
work_program = make_durable(work)
fan_out_program = make_durable(fan_out)
