"""Programs for tests/django/test_retries.py (module level: worker processes import them by dotted path).

Every step body logs each execution to a file under ``log_dir`` (outside the
database: never rolled back), so a test can count how often a body ran apart
from the rows it left. ``DURABLE_TEST_RETRY_CODE`` selects the code a worker
process has: unset, the code that fails; ``fixed``, a fix inside a block (the
same step layout); ``relayout``, a fix that adds a step (another layout).
"""

from __future__ import annotations

import os
from pathlib import Path

import durable
from durable import RetryPolicy, current_attempt, make_durable
from durable_django import db_step

from .testapp.models import SideEffect

#: A module-level switch a test flips (in its own process) to "deploy" the fix of ``needs_fix``.
FIXED = False


def log_run(log_dir: str, name: str) -> None:
    with open(Path(log_dir, name), "a") as fh:
        fh.write(f"{os.getpid()} {current_attempt()}\n")


def runs(log_dir: str, name: str) -> int:
    """How many times the step body ``name`` ran (every attempt, rolled back or not)."""
    path = Path(log_dir, name)
    return len(path.read_text().split("\n")) - 1 if path.exists() else 0


@durable.step(retry=RetryPolicy(max_attempts=5, initial_interval=float(os.environ.get("DURABLE_TEST_BACKOFF", "1")),
                                backoff=1.0, jitter=0.0))
@db_step
def flaky_charge(key: str, log_dir: str, failures: int) -> int:
    """Writes its row, then fails its first ``failures`` attempts: a failed attempt's row is rolled back."""
    log_run(log_dir, f"{key}.charge")
    SideEffect.objects.create(key=key, note=f"attempt {current_attempt()}")
    if current_attempt() <= failures:
        raise ValueError(f"boom {current_attempt()}")
    return current_attempt()


@make_durable
async def charge_order(key: str, log_dir: str, failures: int = 2):
    attempt = await flaky_charge(key, log_dir, failures)
    return {"charged": key, "attempt": attempt}


@durable.step(retry=RetryPolicy(max_attempts=3, initial_interval=0.2, backoff=2.0, jitter=0.0,
                                non_retryable=(KeyError,)))
@db_step
def always_fails(key: str, log_dir: str, error: str = "value") -> None:
    log_run(log_dir, f"{key}.fails")
    SideEffect.objects.create(key=key, note="must be rolled back")
    if error == "key":
        raise KeyError(key)
    raise ValueError(f"card declined (attempt {current_attempt()})")


@db_step
def note(key: str, text: str) -> None:
    SideEffect.objects.create(key=key, note=text[:100])


@make_durable
async def gives_up(key: str, log_dir: str, error: str = "value"):
    try:
        await always_fails(key, log_dir, error)
    except (ValueError, KeyError) as exc:
        await note(f"{key}-gave-up", f"{type(exc).__name__}: {exc}")
        return f"gave up: {type(exc).__name__}: {exc}"
    return "charged"


# -- a failed instance retried after a fix --------------------------------------------------------------------------
@db_step
def record_before(key: str, log_dir: str) -> None:
    """The step before the failure: its row must exist exactly once, however often the instance is retried."""
    log_run(log_dir, f"{key}.before")
    SideEffect.objects.create(key=f"{key}-before")


@db_step
def needs_fix(key: str, log_dir: str, fixed: bool) -> str:
    """Fails until the fix is deployed: this process's ``FIXED``, a worker's new code (``fixed``), or a
    ``<key>-fixed`` row (the data fix)."""
    log_run(log_dir, f"{key}.fix")
    SideEffect.objects.create(key=f"{key}-attempt")  # rolled back with every failure
    if not (fixed or FIXED or SideEffect.objects.filter(key=f"{key}-fixed").exists()):
        raise RuntimeError(f"{key}: not fixed yet")
    return "fixed"


if os.environ.get("DURABLE_TEST_RETRY_CODE") == "fixed":
    @make_durable
    async def fix_me(key: str, log_dir: str):
        await record_before(key, log_dir)
        value = await needs_fix(key, log_dir, True)  # the fix: inside a block, the step layout is the same
        return ["new", value]
elif os.environ.get("DURABLE_TEST_RETRY_CODE") == "relayout":
    @make_durable
    async def fix_me(key: str, log_dir: str):
        await record_before(key, log_dir)
        await note(f"{key}-new-step", "a step the old code did not have")
        value = await needs_fix(key, log_dir, True)
        return ["relayout", value]
else:
    @make_durable
    async def fix_me(key: str, log_dir: str):
        await record_before(key, log_dir)
        value = await needs_fix(key, log_dir, False)
        return ["old", value]


@make_durable
async def wait_then_fail(key: str, log_dir: str):
    """Fails after the event it waited for: the retry takes the same event again."""
    await record_before(key, log_dir)
    payload = await durable.wait_for_event("go")
    value = await needs_fix(key, log_dir, False)
    return [payload, value]


@make_durable
async def task_then_flaky(key: str, log_dir: str):
    """A human task (only ursula may answer), then a step that fails once, in the same transaction."""
    answer = await durable.wait_for_event("ok", user="ursula")
    attempt = await flaky_charge(key, log_dir, 1)
    return [answer, attempt]
