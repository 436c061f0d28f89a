"""Programs used by the tests (autodiscovered by durable_django's ready()).

Module-level, so worker subprocesses import them by dotted path.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from django.db import IntegrityError

import durable
from durable import make_durable
from durable_django import db_step, register
from durable_django.bindings import bind

from .models import Order, SideEffect


@db_step
def write_effect(key: str, note: str = "") -> int:
    """Writes a row; under DURABLE_TEST_HANG_DIR it then hangs so the test can kill the worker mid-step."""
    SideEffect.objects.create(key=key, note=note)
    hang = os.environ.get("DURABLE_TEST_HANG_DIR")
    if hang:
        Path(hang, f"{key}.entered").touch()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            time.sleep(0.05)
    return SideEffect.objects.filter(key=key).count()


@db_step
def slow_effect(key: str, seconds: float, log_dir: str) -> None:
    """Writes a row and takes a while; logs each execution outside the database (never rolled back)."""
    with open(Path(log_dir, f"{key}.runs"), "a") as fh:
        fh.write(f"{os.getpid()}\n")
    SideEffect.objects.create(key=key)
    time.sleep(seconds)


@make_durable
async def approval(order_id: int):
    await write_effect(f"approval-{order_id}", "asked")
    decision = await durable.wait_for_event("approved")
    return {"order": order_id, "decision": decision}


@make_durable
async def two_events(key: str):
    first = await durable.wait_for_event("first")
    second = await durable.wait_for_event("second")
    return [first, second]


@make_durable
async def sleeper(seconds: float):
    started = time.time()
    await durable.sleep(seconds)
    return time.time() - started


@make_durable
async def wait_with_timeout(seconds: float):
    try:
        return await durable.wait_for_event("reply", timeout=seconds)
    except durable.EventTimeout:
        return "timed out"


@make_durable
async def effect_then_finish(key: str):
    count = await write_effect(key, "step")
    await asyncio.sleep(0)
    return count


@make_durable
async def slow_then_finish(key: str, seconds: float, log_dir: str):
    await slow_effect(key, seconds, log_dir)
    return "done"


@make_durable
async def effect_then_wait(key: str):
    await write_effect(key)
    payload = await durable.wait_for_event("go")
    return payload


@make_durable
async def failing(message: str):
    await asyncio.sleep(0)
    raise ValueError(message)


@make_durable
async def order_process(order_id: int):
    await durable.wait_for_event("approved")
    order = await Order.objects.aget(pk=order_id)
    order.total += 1
    await order.asave()
    return "shipped"


async def plain_async(x: int):
    """Not declared durable: refused by default, runs only when DURABLE['PROGRAMS'] lists it."""
    await asyncio.sleep(0)
    return x * 2


async def _double(x: int):
    await asyncio.sleep(0)
    return x * 2


#: The assignment form of make_durable: stored under the path of ``_double``, accepted as declared.
double = make_durable(_double)


async def registered_triple(x: int):
    """Declared with durable_django.register() instead of make_durable."""
    await asyncio.sleep(0)
    return x * 3


register(registered_triple)


bind(Order, "approved", when=lambda order, **kw: order.status == "approved",
     payload=lambda order, **kw: {"order": order.pk})


@db_step
def cancel_self_then_write(instance_id: str, key: str) -> None:
    """Force-cancel our own instance from another connection, then write: the checkpoint must refuse and roll back."""
    import threading

    from django.db import connection

    from durable_django.api import cancel

    def other():
        try:
            cancel(instance_id, "from another connection", force=True)
        finally:
            connection.close()

    t = threading.Thread(target=other)
    t.start()
    t.join()
    SideEffect.objects.create(key=key)


@make_durable
async def cancelled_mid_step(instance_id: str, key: str):
    await cancel_self_then_write(instance_id, key)
    return "not reached"


@db_step
def start_child(child_id: str) -> None:
    from durable_django.api import start

    start(double, 5, instance_id=child_id)


@make_durable
async def parent(child_id: str):
    await start_child(child_id)
    return "parent done"


@db_step
def sleep_then_write(key: str, seconds: float) -> None:
    time.sleep(seconds)  # e.g. a slow remote call; longer than LEASE_SECONDS
    SideEffect.objects.create(key=key)


@make_durable
async def long_step(key: str, seconds: float):
    await sleep_then_write(key, seconds)
    return "done"


# -- crash testing (tests/django/test_crash_exhaustive.py) ----------------------------------------------------------
# A process with about ten checkpoints: db_step side effects, an event published before its wait, a short durable
# timer and an event published while no worker runs. DURABLE_TEST_CRASH_PLAN (JSON {instance id: "checkpoint:N" or
# "step:LABEL"}) makes the process SIGKILL itself once per instance (a marker file in DURABLE_TEST_CRASH_DIR says
# it already did): right after checkpoint N commits, or inside the step LABEL after its write, before its checkpoint.

CRASH_LABELS = ("a", "b", "c", "d", "e")


def _crash_plan() -> dict:
    import json

    return json.loads(os.environ.get("DURABLE_TEST_CRASH_PLAN") or "{}")


def crash_here(instance_id: str, where: str) -> None:
    """SIGKILL this process if the plan says ``where`` for ``instance_id`` and it has not crashed there yet."""
    if _crash_plan().get(instance_id) != where:
        return
    import signal

    try:
        fd = os.open(Path(os.environ["DURABLE_TEST_CRASH_DIR"], f"{instance_id}.crashed"),
                     os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:  # crashed there once already: this is the recovery
        return
    os.write(fd, where.encode())
    os.close(fd)
    os.kill(os.getpid(), signal.SIGKILL)


def crash_hook(instance_id: str, steps: int) -> None:
    """``DURABLE["ON_CHECKPOINT"]`` of the crash tests: called by the worker right after a checkpoint commits."""
    crash_here(instance_id, f"checkpoint:{steps}")


@db_step
def crash_effect(key: str, label: str) -> int:
    """Write the side effect ``label``; may crash after the write (uncommitted); returns the rows of ``key``."""
    SideEffect.objects.create(key=key, note=label)
    crash_here(key, f"step:{label}")
    return SideEffect.objects.filter(key=key).count()


@make_durable
async def crash_course(key: str, nap: float):
    seen = [await crash_effect(key, "a")]
    early = await durable.wait_for_event("early")  # published before the process gets here
    for label in ("b", "c"):
        seen.append(await crash_effect(key, label))
    await durable.sleep(nap)
    seen.append(await crash_effect(key, "d"))
    late = await durable.wait_for_event("late")  # published while no worker runs
    seen.append(await crash_effect(key, "e"))
    return {"seen": seen, "early": early, "late": late}


def _steal_lease(key: str) -> None:
    """Another worker takes the lease of ``key`` (from another thread, so on another connection)."""
    import threading

    from django.db import connections

    from durable_django.models import DurableInstance

    def steal():
        try:
            DurableInstance.objects.filter(pk=key).update(lease_owner="thief")
        finally:
            connections.close_all()

    t = threading.Thread(target=steal)
    t.start()
    t.join()


@db_step
def write_then_lose_lease(key: str) -> None:
    """A step that writes on the run's connection, then loses its lease before its checkpoint."""
    SideEffect.objects.create(key=key, note="before the lease was lost")
    _steal_lease(key)


async def lose_lease(key: str) -> None:
    """A step without database work that loses its lease (its checkpoint is a single autocommit UPDATE)."""
    _steal_lease(key)


@make_durable
async def lease_lost_mid_step(key: str, write: bool):
    if write:
        await write_then_lose_lease(key)
    else:
        await lose_lease(key)
    await durable.wait_for_event("never")


@make_durable
async def lease_lost_at_completion(key: str):
    """Waits for ``go``; then the step that loses the lease is followed by a bare return, so the
    checkpoint that fails is the completion's, with the consumed event and two history entries."""
    await durable.wait_for_event("go")
    return await lose_lease(key)


def _tripped(path: str) -> str:
    Path(path).touch()
    return path


class Tripwire:
    """Unpickling it creates the file ``path`` (in whichever process unpickles it): proof that a blob was
    unpickled, or, when the file stays absent, that it never was."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (_tripped, (self.path,))


#: instance ids whose session ``kill_own_session_once`` already terminated (once per process)
_SESSIONS_KILLED: set[str] = set()


@db_step
def kill_own_session_once(key: str) -> int:
    """Writes a row, then, the first time in this process, has PostgreSQL terminate its own session
    (what a database restart does to a worker mid-step): the statement fails with an OperationalError."""
    from django.db import connection

    SideEffect.objects.create(key=key, note="connection")
    if key not in _SESSIONS_KILLED:
        _SESSIONS_KILLED.add(key)
        with connection.cursor() as cur:
            cur.execute("SELECT pg_terminate_backend(pg_backend_pid())")
    return SideEffect.objects.filter(key=key).count()


@make_durable
async def connection_lost_mid_step(key: str):
    first = await write_effect(key)
    second = await kill_own_session_once(key)
    return [first, second]


# -- bad values and failures outside the program (tests/django/test_worker_failures.py) --------------------------
@make_durable
async def bad_sleep(seconds):
    await asyncio.sleep(0)
    await durable.sleep(seconds)
    return "slept"


@make_durable
async def bad_timeout(timeout):
    return await durable.wait_for_event("never", timeout=timeout)


@make_durable
async def echo_arg(value):
    await asyncio.sleep(0)
    return repr(value)


@make_durable
async def steps_then_wait(key: str):
    await write_effect(key, "first")
    return await durable.wait_for_event("go")


# ``relayout``: a worker started with DURABLE_TEST_NEW_LAYOUT=1 has a new version of it (another step layout) and,
# with DURABLE_TEST_MIGRATE_TO, a migration that moves paused frames to the await that text names. ``resigned``
# gains a required argument there (instances started before that deploy cannot be bound to it).
if os.environ.get("DURABLE_TEST_NEW_LAYOUT"):
    @make_durable
    async def resigned(key: str, required: str):
        await asyncio.sleep(0)
        return [key, required]

    @make_durable
    async def relayout(key: str):
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        go = await durable.wait_for_event("go")
        return ["new", go]

    if os.environ.get("DURABLE_TEST_MIGRATE_TO"):
        from durable_django import register_migration

        @register_migration(relayout)
        def _move(frame) -> bool:
            frame.move_to(os.environ["DURABLE_TEST_MIGRATE_TO"])
            return True
else:
    @make_durable
    async def resigned(key: str):
        await asyncio.sleep(0)
        return [key]

    @make_durable
    async def relayout(key: str):
        await asyncio.sleep(0)
        go = await durable.wait_for_event("go")
        return ["old", go]


@db_step
def write_then_fail(key: str) -> None:
    """Writes a row, then a second one with the same unique key: the database refuses it."""
    SideEffect.objects.create(key=f"{key}-first")
    order = Order.objects.create(status="first")
    Order.objects.create(pk=order.pk)


@make_durable
async def catches_a_failed_step(key: str):
    try:
        await write_then_fail(key)
    except IntegrityError:
        caught = True
    await write_effect(f"{key}-after")
    return caught


@make_durable
async def fails_in_a_step(key: str):
    await write_then_fail(key)


@make_durable
async def fails_in_async_orm(order_id: int):
    await Order.objects.acreate(pk=order_id)  # the row exists: the database refuses it


SAGA_LABELS = ("s1", "s2", "comp", "fin")


class FlakyError(Exception):
    """What a retried step raises on its first attempts."""


class PermanentError(Exception):
    """What a step raises that no retry fixes (its policy lists it as non-retryable)."""


SAGA_RETRY = durable.RetryPolicy(max_attempts=3, initial_interval=0.2, jitter=0, non_retryable=(PermanentError,))


@durable.step(retry=SAGA_RETRY)
@db_step
def flaky_effect(key: str, label: str) -> int:
    """Write ``label``, then fail on the first two attempts (the write is rolled back each time)."""
    SideEffect.objects.create(key=key, note=label)
    if durable.current_attempt() < 3:
        raise FlakyError(f"attempt {durable.current_attempt()} of {label}")
    crash_here(key, f"step:{label}")
    return SideEffect.objects.filter(key=key).count()


@durable.step(retry=SAGA_RETRY)
@db_step
def doomed_effect(key: str, label: str) -> int:
    """Write ``label``, then fail for good: the write never commits."""
    SideEffect.objects.create(key=key, note=label)
    raise PermanentError(label)


@make_durable
async def crash_saga(key: str, nap: float):
    """A retried step (two failed attempts, each followed by a durable backoff), a step that fails for good, and
    its compensation in ``except`` and ``finally``: every checkpoint of it is a crash point of the crash tests."""
    seen = [await crash_effect(key, "s1")]
    seen.append(await flaky_effect(key, "s2"))
    try:
        await doomed_effect(key, "s3")
        seen.append(-1)
    except PermanentError:
        seen.append(await crash_effect(key, "comp"))
    finally:
        seen.append(await crash_effect(key, "fin"))
    return {"seen": seen}
