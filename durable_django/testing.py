"""Test a process without Celery and without waiting: instances run inline, time is a fake clock.

:class:`DurableTestEnv` runs instances in the test's own process and
database transaction (``RUN_INLINE``; no broker, no worker, no heartbeat
thread), each up to its next pause, through the same code a worker runs
(lease, checkpoint, history, signals), so what a test sees is what production
does. Time is a :class:`~durable.testing.FakeClock` installed with
:func:`durable_django.clock.override`: :meth:`DurableTestEnv.advance` moves it
and runs every timer and event timeout that falls due on the way, in due order.

Use it as a context manager, through :class:`DurableTestMixin` in a Django
``TestCase``, or through the ``durable_env`` pytest fixture
(:mod:`durable_django.pytest_plugin`). In a ``TestCase`` (one transaction
that never commits) the wake-ups Django keeps for the commit are run by the
environment's methods; wrap other code that publishes (a view called with the
test client, ``answer()``) in :meth:`DurableTestEnv.eagerly`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, NamedTuple

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connections, models
from django.test import override_settings

from durable import DurableProgram
from durable.testing import FakeClock, HistoryEntry, history_mismatch

from . import api, cancellation, clock, worker
from .branches import paused_branch_waits
from .models import FINISHED, DurableEvent, DurableHistory, DurableInstance, Status
from .signals import instance_transition
from .waits import to_datetime

__all__ = ["DurableTestEnv", "DurableTestMixin", "FakeClock", "HistoryEntry", "Transition"]

_MISSING: Any = object()
log = logging.getLogger("durable_django")


class Transition(NamedTuple):
    """A transition signal sent while the environment was active."""

    instance_id: str
    kind: str
    status: str


class DurableTestEnv:
    """Run instances inline on a fake clock; inspect and assert what they did.

    ``start``: where the fake clock starts (a POSIX time or a datetime; the real
    time when omitted), or pass your own ``clock``. ``using``: the database
    alias whose commit-time callbacks are run in a ``TestCase``.
    ``max_rounds`` bounds the runs of one :meth:`settle` or :meth:`advance`
    (a program that sleeps in an endless loop fails the test instead of hanging it).
    """

    def __init__(self, *, start: float | datetime | None = None, clock: FakeClock | None = None,
                 using: str = DEFAULT_DB_ALIAS, max_rounds: int = 1000) -> None:
        self.clock = clock if clock is not None else FakeClock(start)
        self.using = using
        self.max_rounds = max_rounds
        self.transitions: list[Transition] = []
        self._stack: contextlib.ExitStack | None = None

    # -- activation ------------------------------------------------------------------------
    def __enter__(self) -> DurableTestEnv:
        if self._stack is not None:
            raise RuntimeError("this DurableTestEnv is already active")
        stack = contextlib.ExitStack()
        durable = {**(getattr(settings, "DURABLE", None) or {}), "RUN_INLINE": True, "HEARTBEAT": False}
        stack.enter_context(override_settings(DURABLE=durable))
        stack.enter_context(clock.override(self.clock))
        instance_transition.connect(self._record, weak=False, dispatch_uid=f"durable-test-env-{id(self)}")
        stack.callback(instance_transition.disconnect, dispatch_uid=f"durable-test-env-{id(self)}")
        self._stack = stack
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            stack.close()

    def _record(self, sender: Any, instance_id: str, kind: str = "", status: str = "", **kwargs: Any) -> None:
        self.transitions.append(Transition(instance_id, kind, status))

    @contextlib.contextmanager
    def eagerly(self) -> Iterator[None]:
        """Run the instances that code inside the block wakes, when the block ends (also in a ``TestCase``).

        Outside a transaction, Django runs commit-time callbacks at once and
        this changes nothing. Inside one (a ``TestCase``), the callbacks
        registered in the block (wake-ups, signals) run at its end, with those
        they register in turn, and leave the list of callbacks kept for the
        commit: an enclosing block does not run them a second time. A block
        left by an exception runs nothing.
        """
        self._check_active()
        conn = connections[self.using]
        if not conn.in_atomic_block:
            yield
            return
        start = len(conn.run_on_commit)
        yield
        while len(conn.run_on_commit) > start:
            batch: list[Any] = conn.run_on_commit[start:]  # Django 4.2+: (savepoint ids, func, robust)
            del conn.run_on_commit[start:]
            for _savepoints, func, robust in batch:
                if not robust:
                    func()
                    continue
                try:
                    func()
                except Exception:  # as at a real commit: a robust callback's error is logged, the others run
                    log.exception("commit-time callback %r failed", func)

    def _check_active(self) -> None:
        if self._stack is None:
            raise RuntimeError("DurableTestEnv is not active: use it as `with DurableTestEnv() as env:`, through "
                               "DurableTestMixin, or through the durable_env pytest fixture")

    # -- running ---------------------------------------------------------------------------
    def start(self, program: DurableProgram[..., Any] | str, *args: Any, instance_id: str | None = None,
              link: models.Model | None = None, **kwargs: Any) -> DurableInstance:
        """``durable_django.start(...)``, then run the instance to its first pause; returns its fresh row."""
        with self.eagerly():
            inst = api.start(program, *args, instance_id=instance_id, link=link, **kwargs)
        return self.instance(inst.instance_id)

    def run(self, instance_id: str) -> DurableInstance:
        """Run the instance now if it can run (its wait is over); else nothing happens."""
        with self.eagerly():
            worker.run_instance(instance_id)
        return self.instance(instance_id)

    def publish(self, instance_id: str, name: str, payload: Any = None, *, actor: Any = None,
                idempotency_key: str | None = None) -> DurableInstance:
        """``durable_django.publish_event(...)``, then continue the instance to its next pause.

        ``actor``: the user who publishes (a human-task wait takes only an answer
        from a user it is assigned to).
        """
        with self.eagerly():
            api.publish_event(instance_id, name, payload, idempotency_key, actor=actor)
        return self.instance(instance_id)

    def cancel(self, instance_id: str, reason: str = "", *, actor: str = "", force: bool = False) -> DurableInstance:
        """``durable_django.cancel(...)``: its cleanup (``except``/``finally``) runs now, to its end or its next
        pause; with ``force`` (or a second time) it ends ``cancelled`` at once."""
        with self.eagerly():
            api.cancel(instance_id, reason, actor=actor, force=force)
        return self.instance(instance_id)

    def settle(self) -> list[str]:
        """Run every instance that can run now (pending, due, or with its awaited event in the inbox) until none
        can; returns the ids run, in order. As the sweep does, a cancellation requested more than
        ``CANCEL_GRACE_SECONDS`` ago (on the fake clock) that has not ended its instance ends it first."""
        self._check_active()
        ran: list[str] = []
        stalled: set[str] = set()  # ran and found nothing to do (its wait not over): not again in this settle
        for _ in range(self.max_rounds):
            with self.eagerly():
                cancellation.force_expired(clock.now())
            ids = [iid for iid in worker.due_instances(clock.now()) if iid not in stalled]
            if not ids:
                return ran
            before = self._steps(ids)
            with self.eagerly():
                for iid in ids:
                    worker.run_instance(iid)
            after = self._steps(ids)
            stalled.update(iid for iid in ids if before.get(iid) == after.get(iid))
            ran.extend(ids)
        raise RuntimeError(f"instances still runnable after {self.max_rounds} rounds; does a program sleep in a "
                           "loop without end?")

    @staticmethod
    def _steps(ids: list[str]) -> dict[str, tuple[Any, ...]]:
        """What a run that did something changes (a run that found its wait not over changes none of it)."""
        rows = DurableInstance.objects.filter(pk__in=ids).values_list("pk", "steps", "status", "wake_at")
        return {pk: (steps, status, wake_at) for pk, steps, status, wake_at in rows}

    def advance(self, seconds: float | timedelta) -> list[str]:
        """Move the fake clock forward by ``seconds`` and run every timer and event timeout due on the way.

        Timers fire in due order, each with the clock at its due time (a
        program that sleeps twice within the interval wakes twice). Returns
        the ids run, in order.
        """
        self._check_active()
        target = self.clock.time() + (seconds.total_seconds() if isinstance(seconds, timedelta) else float(seconds))
        if target < self.clock.time():
            raise ValueError(f"time only moves forward in a test too; got {seconds!r}")
        ran = self.settle()
        passed = to_datetime(self.clock.time())  # timers up to here have had their chance
        for _ in range(self.max_rounds):
            timers = DurableInstance.objects.filter(status=Status.PAUSED, wake_at__gt=passed,
                                                    wake_at__lte=to_datetime(target))
            due = timers.order_by("wake_at").values_list("wake_at", flat=True).first()
            if due is None:
                self.clock.set(target)
                return ran + self.settle()
            self.clock.set(max(due.timestamp(), self.clock.time()))
            ran += self.settle()
            if self.clock.time() < target and timers.filter(wake_at=due).exists():
                # wake_at holds whole microseconds; the due time in the state may lie a fraction of one later
                self.clock.set(min(due.timestamp() + 1e-6, target))
                ran += self.settle()
            passed = due
        raise RuntimeError(f"more than {self.max_rounds} timers fell due in one advance(); does a program sleep "
                           "in a loop without end?")

    # -- inspecting ------------------------------------------------------------------------
    def instance(self, instance_id: str) -> DurableInstance:
        """The instance's row, read now."""
        return api.get_instance(instance_id)

    def status(self, instance_id: str) -> str:
        return self.instance(instance_id).status

    def waiting_for(self, instance_id: str) -> str | None:
        """The event the instance waits for (None when it sleeps on a timer or does not wait; parallel branches:
        see :meth:`assert_waiting`)."""
        inst = self.instance(instance_id)
        return inst.waiting_for or None if inst.status == Status.PAUSED and inst.wait_kind == "event" else None

    def result(self, instance_id: str) -> Any:
        """``durable_django.result(...)``: the result, the stored error raised, or ``LookupError``."""
        return api.result(instance_id)

    def history(self, instance_id: str) -> list[HistoryEntry]:
        """The instance's history rows as ``(kind, detail)`` entries, oldest first."""
        rows = DurableHistory.objects.filter(instance_id=instance_id).order_by("id").values_list("kind", "detail")
        return [HistoryEntry(kind, detail) for kind, detail in rows]

    def pending_events(self, instance_id: str) -> list[tuple[str, Any]]:
        """Events in the inbox not consumed (or rejected) yet, oldest first."""
        rows = DurableEvent.objects.filter(instance_id=instance_id, consumed_at__isnull=True, rejected__isnull=True)
        return list(rows.order_by("id").values_list("name", "payload"))

    # -- assertions ------------------------------------------------------------------------
    def assert_history(self, instance_id: str, expected: Iterable[str | tuple[str, str]]) -> None:
        """Fail unless the history is exactly ``expected``: kinds (``"paused"``) or ``(kind, text)`` pairs whose
        text must occur in the entry's detail."""
        actual = self.history(instance_id)
        problem = history_mismatch(actual, expected)
        if problem is not None:
            shown = "\n".join(f"  {i}: {e}" for i, e in enumerate(actual)) or "  (empty)"
            raise AssertionError(f"history of {instance_id!r}: {problem}\nactual history:\n{shown}")

    def assert_status(self, instance_id: str, status: str) -> DurableInstance:
        inst = self.instance(instance_id)
        if inst.status != status:
            raise AssertionError(f"instance {instance_id!r} should be {status}, but it is {_describe(inst)}")
        return inst

    def assert_waiting(self, instance_id: str, event: str | None = None, *, timer: bool = False) -> DurableInstance:
        """Fail unless the instance is paused on event ``event`` (any event if None), or on a timer."""
        inst = self.instance(instance_id)
        expected = "a timer" if timer else (f"event {event!r}" if event else "an event")
        kind = "timer" if timer else "event"
        # Paused on parallel branches: any paused branch's wait will do.
        waits = paused_branch_waits(instance_id) if inst.wait_kind == "branches" else [(inst.wait_kind,
                                                                                         inst.waiting_for)]
        if inst.status != Status.PAUSED or not any(
                k == kind and (timer or event is None or name == event) for k, name in waits):
            raise AssertionError(f"instance {instance_id!r} should wait for {expected}, but it is {_describe(inst)}")
        return inst

    def assert_completed(self, instance_id: str, result: Any = _MISSING) -> Any:
        """Fail unless the instance completed (with ``result``, when given); returns its result."""
        inst = self.instance(instance_id)
        if inst.status != Status.COMPLETED:
            raise AssertionError(f"instance {instance_id!r} should have completed, but it is {_describe(inst)}")
        value = api.result(instance_id)
        if result is not _MISSING and value != result:
            raise AssertionError(f"instance {instance_id!r} completed with {value!r}, expected {result!r}")
        return value


def _describe(inst: DurableInstance) -> str:
    """Where an instance stands, in words, for assertion messages."""
    text = str(inst.status)
    if inst.status == Status.PAUSED:
        if inst.wait_kind == "timer":
            text += f", sleeping until {inst.wake_at.isoformat() if inst.wake_at else '?'}"
        elif inst.wait_kind == "branches":
            text += f", waiting for {inst.waiting_for}"
        else:
            text += f", waiting for event {inst.waiting_for!r}"
    elif inst.status in FINISHED and inst.error:
        text += f": {inst.error.strip().splitlines()[-1]}"
    elif inst.status == Status.SUSPENDED:
        text += f": {inst.error.strip().splitlines()[-1] if inst.error else ''}"
    return text


class DurableTestMixin:
    """For a Django ``TestCase``: ``self.durable`` is an active :class:`DurableTestEnv` in every test.

    Set ``durable_start`` (a POSIX time or a datetime) to start the fake clock
    at a fixed time. Call ``super().setUp()`` when you override ``setUp``.
    """

    durable_start: float | datetime | None = None
    durable: DurableTestEnv

    def setUp(self) -> None:
        super().setUp()  # type: ignore[misc]
        env = DurableTestEnv(start=self.durable_start)
        self.durable = env.__enter__()
        self.addCleanup(env.__exit__, None, None, None)  # type: ignore[attr-defined]
