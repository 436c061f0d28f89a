"""The programs the failure-handling benchmark runs.

They live in a real module so the runtime treats them as user code (and a
Django worker can import them again by dotted path). Every loop body is the
same, ``acc = await <step>(acc, i)``, so variants differ only in what the
step is: a nested durable call, a :func:`durable.step` without a policy, the
same step with a :class:`durable.RetryPolicy`, or the program's default
policy. The history variants are separate functions with identical bodies
(a program's options belong to its function, found again by its path).
"""

from __future__ import annotations

from durable import RetryPolicy, make_durable, step

#: A policy that is never used (every attempt succeeds): what it costs to carry one.
POLICY = RetryPolicy(max_attempts=5, initial_interval=0.5, backoff=2.0, max_interval=30.0, jitter=0.1,
                     non_retryable=(ValueError,))


async def add(acc: int, i: int) -> int:
    """The trivial work of one step (a nested durable call when awaited as is)."""
    return acc + i


#: The same work declared as one step, without and with a retry policy.
bare = step(add)
retried = step(add, retry=POLICY)


async def nested_steps(n: int) -> int:
    """``n`` nested durable calls (the core benchmark's step): the reference."""
    acc = 0
    for i in range(n):
        acc = await add(acc, i)
    return acc


async def bare_steps(n: int) -> int:
    """``n`` leaf steps without a retry policy."""
    acc = 0
    for i in range(n):
        acc = await bare(acc, i)
    return acc


async def retried_steps(n: int) -> int:
    """``n`` leaf steps with a retry policy whose first attempt always succeeds."""
    acc = 0
    for i in range(n):
        acc = await retried(acc, i)
    return acc


async def default_policy_steps(n: int) -> int:
    """``n`` leaf steps without a policy of their own, in a program with a default policy."""
    acc = 0
    for i in range(n):
        acc = await bare(acc, i)
    return acc


async def hist_off(n: int) -> int:
    """``n`` leaf steps, no checkpoint history (the default)."""
    acc = 0
    for i in range(n):
        acc = await bare(acc, i)
    return acc


async def hist_10(n: int) -> int:
    """``n`` leaf steps, the last 10 checkpoints kept."""
    acc = 0
    for i in range(n):
        acc = await bare(acc, i)
    return acc


async def hist_all(n: int) -> int:
    """``n`` leaf steps, every checkpoint kept."""
    acc = 0
    for i in range(n):
        acc = await bare(acc, i)
    return acc


def expected(n: int) -> int:
    """What every program here returns for ``n``."""
    return n * (n - 1) // 2


nested_program = make_durable(nested_steps)
bare_program = make_durable(bare_steps)
retried_program = make_durable(retried_steps)
default_policy_program = make_durable(default_policy_steps, retry=POLICY)
hist_off_program = make_durable(hist_off)
hist_10_program = make_durable(hist_10, history=10)
hist_all_program = make_durable(hist_all, history=True)

#: Variant name -> program, per part of the suite.
STEP_VARIANTS = {"nested": nested_program, "bare": bare_program, "retried": retried_program,
                 "default": default_policy_program}
HISTORY_VARIANTS = {"off": hist_off_program, "10": hist_10_program, "all": hist_all_program}
