"""Unit-test durable programs without waiting: an in-memory backend, a fake clock, history assertions.

A durable program pauses for events and timers that take hours in real life.
:class:`DurableTestEnv` runs instances on an in-memory :class:`~durable.DurableBackend`
(state still goes through the real pickling and signing, so a local that cannot
be checkpointed fails the test as it would fail in production) with a
:class:`FakeClock`: :meth:`DurableTestEnv.advance` moves time forward and runs
every timer (and event timeout) that falls due on the way, in due order, at
once. Each operation runs the instance to its next pause and returns a
:class:`Snapshot` of where it stands; :meth:`DurableTestEnv.assert_history`
checks the transitions it went through. Every method has an ``a``-prefixed
async twin for tests that already run in an event loop.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple, TypeVar

from .backend import DurableBackend, OrchestrationBackend
from .exceptions import InstanceCancelled, PauseForEventException
from .program import DurableProgram
from .state import CANCELLED, COMPLETED, FAILED, PAUSED, RUNNING, SavedState, describe_waits, leaf_waits

__all__ = ["DurableTestEnv", "FakeClock", "HistoryEntry", "Snapshot", "describe_wait", "history_mismatch"]

T = TypeVar("T")
_MISSING: Any = object()


def _seconds(value: float | timedelta) -> float:
    seconds = value.total_seconds() if isinstance(value, timedelta) else float(value)
    if seconds < 0:
        raise ValueError(f"time only moves forward in a test too; got {value!r}")
    return seconds


def as_posix(when: float | datetime) -> float:
    if isinstance(when, datetime):
        return (when if when.tzinfo is not None else when.replace(tzinfo=UTC)).timestamp()
    return float(when)


class FakeClock:
    """A clock that stands still until a test moves it: POSIX seconds, callable like ``time.time``.

    Pass it where a clock is expected (``DurableRuntime(clock=...)``,
    ``durable_django.clock.override(...)``); ``start`` is a POSIX time or a
    datetime (naive means UTC), the current whole second when omitted (whole
    seconds keep sums of durations exact: a timer of 120 s started at ``t`` is
    due at exactly ``t + 119 + 1``).
    """

    def __init__(self, start: float | datetime | None = None) -> None:
        self._now = float(int(time.time())) if start is None else as_posix(start)

    def __call__(self) -> float:
        return self._now

    def time(self) -> float:
        """Now, in POSIX seconds."""
        return self._now

    def now(self) -> datetime:
        """Now, as an aware UTC datetime."""
        return datetime.fromtimestamp(self._now, tz=UTC)

    def advance(self, seconds: float | timedelta) -> float:
        """Move forward by ``seconds`` (a number or a timedelta, not negative); returns the new time."""
        self._now += _seconds(seconds)
        return self._now

    def set(self, when: float | datetime) -> float:
        """Jump to ``when``; never backwards (a timer already fired cannot un-fire)."""
        target = as_posix(when)
        if target < self._now:
            raise ValueError(f"the fake clock is at {self.now().isoformat()}; it cannot go back to {when!r}")
        self._now = target
        return self._now

    def __repr__(self) -> str:
        return f"<FakeClock {self.now().isoformat()}>"


class HistoryEntry(NamedTuple):
    """One transition of an instance: ``kind`` (the Django app's history kinds) and a ``detail`` text."""

    kind: str
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.kind} ({self.detail})" if self.detail else self.kind


@dataclass(frozen=True)
class Snapshot:
    """Where an instance stands after an operation of :class:`DurableTestEnv`."""

    instance_id: str
    #: ``paused``, ``completed``, ``failed``, ``cancelled`` (or ``running`` if a checkpoint could not be saved).
    status: str
    #: ``"event"``, ``"timer"``, ``"child"``, ``"children"``, ``"branches"`` or None when it does not wait.
    wait_kind: str | None = None
    #: The event it waits for (event waits only).
    waiting_for: str | None = None
    #: POSIX time when its timer fires or its event wait times out.
    due: float | None = None
    result: Any = None
    error: BaseException | None = None
    #: Every live wait (parallel branches each have theirs, with their ``branch``), see :func:`leaf_waits`.
    waits: tuple[Mapping[str, Any], ...] = ()

    @property
    def paused(self) -> bool:
        return self.status == PAUSED

    @property
    def completed(self) -> bool:
        return self.status == COMPLETED

    @property
    def failed(self) -> bool:
        return self.status == FAILED


def describe_wait(wait: Mapping[str, Any] | None) -> str:
    """A wait in words, as the history records it: ``event 'approve'``, ``timer until <iso time>``; each wait of
    parallel branches with its branch (see :func:`durable.state.describe_waits`)."""
    return describe_waits(wait)  # type: ignore[arg-type]


def history_mismatch(actual: list[HistoryEntry], expected: Iterable[str | tuple[str, str]]) -> str | None:
    """Why ``actual`` does not match ``expected`` (None when it does).

    Each expected item is a kind (``"paused"``) or a ``(kind, text)`` pair
    whose text must occur in the entry's detail (``("paused", "event 'approve'")``).
    """
    wanted = list(expected)
    for i, item in enumerate(wanted):
        kind, text = (item, "") if isinstance(item, str) else item
        if i >= len(actual):
            return f"entry {i}: expected {_show(kind, text)}, but the history ends after {len(actual)} entries"
        got = actual[i]
        if got.kind != kind or text not in got.detail:
            return f"entry {i}: expected {_show(kind, text)}, got {str(got)!r}"
    if len(actual) > len(wanted):
        extra = len(actual) - len(wanted)
        return f"{extra} more entries than expected, from entry {len(wanted)}: {str(actual[len(wanted)])!r}"
    return None


def _show(kind: str, text: str) -> str:
    return repr(kind) if not text else f"{kind!r} with detail containing {text!r}"


def _format_history(entries: list[HistoryEntry]) -> str:
    return "\n".join(f"  {i}: {e}" for i, e in enumerate(entries)) or "  (empty)"


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to its end from sync code (each call on a fresh event loop)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    coro.close()
    raise RuntimeError("DurableTestEnv's sync methods cannot run inside an event loop; await the a-prefixed "
                       "twin instead (astart, apublish, aadvance, arun, acancel)")


class DurableTestEnv:
    """Run durable instances in a test: start, publish, advance time, inspect, assert.

    ``backend`` defaults to a fresh in-memory :class:`~durable.DurableBackend`;
    ``clock`` to a :class:`FakeClock` at ``start`` (the real time when omitted).
    Instances run only when a method of the environment runs them, always up
    to their next pause (or their end), so a test reads top to bottom as the
    story of the process.
    """

    def __init__(self, *, backend: OrchestrationBackend | None = None, clock: FakeClock | None = None,
                 start: float | datetime | None = None, max_rounds: int = 1000) -> None:
        self.backend = backend if backend is not None else DurableBackend()
        self.clock = clock if clock is not None else FakeClock(start)
        self.max_rounds = max_rounds
        self._programs: dict[str, DurableProgram[..., Any]] = {}
        self._history: dict[str, list[HistoryEntry]] = {}
        self._last: dict[str, Snapshot] = {}

    # -- running ------------------------------------------------------------------------
    async def astart(self, program: DurableProgram[..., Any] | Callable[..., Any], *args: Any,
                     instance_id: str | None = None, **kwargs: Any) -> Snapshot:
        """Start an instance of ``program`` (a ``make_durable`` program or an ``async def``) and run it to its
        first pause."""
        if not isinstance(program, DurableProgram):
            program = DurableProgram(program, declare=False)
        iid = instance_id or uuid.uuid4().hex
        if iid in self._programs:
            raise ValueError(f"instance {iid!r} was already started in this environment")
        self._programs[iid] = program
        self._history[iid] = [HistoryEntry("started")]
        return await self._run(iid, args, kwargs)

    async def arun(self, instance_id: str) -> Snapshot:
        """Continue the instance if what it waits for has happened; else it stays paused (nothing runs)."""
        self._program(instance_id)
        return await self._run(instance_id, (), {})

    async def apublish(self, instance_id: str, name: str, payload: Any = None) -> Snapshot:
        """Publish event ``name`` to the instance, then continue it (to its next pause)."""
        self._program(instance_id)
        self.backend.publish_event(instance_id, name, payload)
        self._history[instance_id].append(HistoryEntry("event_published", name))
        return await self._run(instance_id, (), {})

    async def aadvance(self, seconds: float | timedelta) -> list[Snapshot]:
        """Move the clock forward by ``seconds``, running every timer and event timeout due on the way.

        Timers fire in the order they fall due, each with the clock set to its
        due time (so a program that sleeps twice within the interval wakes
        twice). Returns the snapshots of the runs, in order.
        """
        target = self.clock.time() + _seconds(seconds)
        runs: list[Snapshot] = []
        for _ in range(self.max_rounds):
            due = [(snap.due, iid) for iid, snap in self._last.items()
                   if snap.paused and snap.due is not None and snap.due <= target]
            if not due:
                self.clock.set(target)
                return runs
            when, iid = min(due)
            self.clock.set(max(when, self.clock.time()))
            runs.append(await self._run(iid, (), {}))
        raise RuntimeError(f"more than {self.max_rounds} timers fired in one advance(); does a program sleep in a "
                           "loop without end?")

    async def acancel(self, instance_id: str) -> Snapshot:
        """Cancel the instance: it never runs again (as a host cancels it: its saved status becomes cancelled)."""
        self._program(instance_id)
        state = await self.backend.load_state(instance_id)
        if state is None or state["status"] in (COMPLETED, FAILED, CANCELLED):
            raise ValueError(f"instance {instance_id!r} cannot be cancelled: it is "
                             f"{'unknown' if state is None else state['status']}")
        state["status"] = CANCELLED
        await self.backend.save_state(instance_id, state)
        self._history[instance_id].append(HistoryEntry("cancelled"))
        snap = self._last[instance_id] = Snapshot(instance_id, CANCELLED)
        return snap

    async def _run(self, iid: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Snapshot:
        program = self._programs[iid]
        before = self._last.get(iid)
        saves = [0]

        def saved(_iid: str, _step: int) -> None:
            saves[0] += 1

        runtime = program.runtime(self.backend, iid, clock=self.clock, on_checkpoint=saved)
        history = self._history[iid]
        error: BaseException | None = None
        result: Any = None
        status = COMPLETED
        try:
            result = await runtime.run(program, args, kwargs)
        except InstanceCancelled:
            status = CANCELLED
        except PauseForEventException:
            status = PAUSED
        except Exception as exc:  # the program's own error, stored as the instance's failure
            error, status = exc, FAILED
        state: SavedState | None = runtime.state
        if status == FAILED and (state is None or state["status"] != FAILED):
            status = RUNNING  # an error of the machinery (a checkpoint refused): the last checkpoint stands
        wait = state.get("wait") if state is not None and status == PAUSED else None
        moved = saves[0] > 0  # a run that only found its wait not over saves nothing
        if before is not None and before.paused and moved:
            history.append(HistoryEntry("resumed"))
        if status == PAUSED and moved:
            history.append(HistoryEntry("paused", describe_wait(wait)))
        elif status == COMPLETED and moved:
            history.append(HistoryEntry("completed"))
        elif status == FAILED and moved:
            history.append(HistoryEntry("failed", f"{type(error).__name__}: {error}"))
        snap = Snapshot(iid, status, wait_kind=wait["kind"] if wait else None,
                        waiting_for=wait.get("event") if wait else None, due=wait.get("due") if wait else None,
                        result=result, error=error, waits=tuple(leaf_waits(wait)))
        self._last[iid] = snap
        for child, info in ((state.get("children") if state is not None else None) or {}).items():
            await self._adopt(child, info["program"])
        parent = state.get("parent") if state is not None else None
        if parent and status in (COMPLETED, FAILED, CANCELLED) and parent[0] in self._programs:
            await self._run(parent[0], (), {})  # as a host wakes the parent of a child that ended
        if status == RUNNING and error is not None:
            raise error
        return snap

    async def _adopt(self, child: str, program: DurableProgram[..., Any]) -> None:
        """A child the program started (run by the core in the same backend): the env publishes to it and runs
        its timers."""
        if child in self._programs:
            return
        self._programs[child] = program
        self._history.setdefault(child, [HistoryEntry("started")])
        state = await self.backend.load_state(child)
        if state is not None:
            wait = state.get("wait") if state["status"] == PAUSED else None
            self._last[child] = Snapshot(child, state["status"], wait_kind=wait["kind"] if wait else None,
                                         waiting_for=wait.get("event") if wait else None,
                                         due=wait.get("due") if wait else None, result=state.get("result"),
                                         waits=tuple(leaf_waits(wait)))

    def _program(self, instance_id: str) -> DurableProgram[..., Any]:
        program = self._programs.get(instance_id)
        if program is None:
            known = ", ".join(sorted(self._programs)) or "none"
            raise KeyError(f"no instance {instance_id!r} was started in this environment (started: {known})")
        return program

    # -- sync twins ---------------------------------------------------------------------
    def start(self, program: DurableProgram[..., Any] | Callable[..., Any], *args: Any, instance_id: str | None = None,
              **kwargs: Any) -> Snapshot:
        """:meth:`astart` from sync code."""
        return run_sync(self.astart(program, *args, instance_id=instance_id, **kwargs))

    def run(self, instance_id: str) -> Snapshot:
        """:meth:`arun` from sync code."""
        return run_sync(self.arun(instance_id))

    def publish(self, instance_id: str, name: str, payload: Any = None) -> Snapshot:
        """:meth:`apublish` from sync code."""
        return run_sync(self.apublish(instance_id, name, payload))

    def advance(self, seconds: float | timedelta) -> list[Snapshot]:
        """:meth:`aadvance` from sync code."""
        return run_sync(self.aadvance(seconds))

    def cancel(self, instance_id: str) -> Snapshot:
        """:meth:`acancel` from sync code."""
        return run_sync(self.acancel(instance_id))

    # -- inspecting ---------------------------------------------------------------------
    def snapshot(self, instance_id: str) -> Snapshot:
        """Where the instance stood after the last operation."""
        self._program(instance_id)
        return self._last[instance_id]

    def status(self, instance_id: str) -> str:
        return self.snapshot(instance_id).status

    def waiting_for(self, instance_id: str) -> str | None:
        """The event the instance waits for (None when it sleeps on a timer or does not wait)."""
        return self.snapshot(instance_id).waiting_for

    def result(self, instance_id: str) -> Any:
        """The result of a completed instance; raises the error of a failed one; ``LookupError`` otherwise."""
        snap = self.snapshot(instance_id)
        if snap.failed and snap.error is not None:
            raise snap.error
        if not snap.completed:
            raise LookupError(f"instance {instance_id!r} has not completed (it is {snap.status})")
        return snap.result

    def history(self, instance_id: str) -> list[HistoryEntry]:
        """The transitions the instance went through, oldest first."""
        self._program(instance_id)
        return list(self._history[instance_id])

    def pending_events(self, instance_id: str) -> list[tuple[str, Any]]:
        """Events published to the instance and not consumed yet (the stock backend only)."""
        pending = getattr(self.backend, "pending_events", None)
        if pending is None:
            raise TypeError(f"{type(self.backend).__name__} cannot list pending events")
        events: list[tuple[str, Any]] = pending(instance_id)
        return events

    # -- assertions ---------------------------------------------------------------------
    def assert_history(self, instance_id: str, expected: Iterable[str | tuple[str, str]]) -> None:
        """Fail unless the history is exactly ``expected`` (see :func:`history_mismatch` for the items)."""
        actual = self.history(instance_id)
        problem = history_mismatch(actual, expected)
        if problem is not None:
            raise AssertionError(f"history of {instance_id!r}: {problem}\nactual history:\n{_format_history(actual)}")

    def assert_waiting(self, instance_id: str, event: str | None = None, *, timer: bool = False) -> Snapshot:
        """Fail unless the instance is paused on event ``event`` (any event if None), or on a timer."""
        snap = self.snapshot(instance_id)
        expected = "a timer" if timer else (f"event {event!r}" if event else "an event")
        problem = None
        if not snap.paused:
            problem = f"it is {snap.status}" + (f" ({type(snap.error).__name__}: {snap.error})" if snap.error else "")
        elif timer and not any(w.get("kind") == "timer" for w in snap.waits):
            problem = f"it waits for {describe_wait(_wait_of(snap))}"
        elif not timer and not any(w.get("kind") == "event" and event in (None, w.get("event")) for w in snap.waits):
            problem = f"it waits for {describe_wait(_wait_of(snap))}"
        if problem:
            raise AssertionError(f"instance {instance_id!r} should wait for {expected}, but {problem}")
        return snap

    def assert_completed(self, instance_id: str, result: Any = _MISSING) -> Any:
        """Fail unless the instance completed (with ``result``, when given); returns its result."""
        snap = self.snapshot(instance_id)
        if not snap.completed:
            extra = f": {type(snap.error).__name__}: {snap.error}" if snap.error else ""
            wait = f", waiting for {describe_wait(_wait_of(snap))}" if snap.paused else ""
            raise AssertionError(
                f"instance {instance_id!r} should have completed, but it is {snap.status}{wait}{extra}")
        if result is not _MISSING and snap.result != result:
            raise AssertionError(f"instance {instance_id!r} completed with {snap.result!r}, expected {result!r}")
        return snap.result


def _wait_of(snap: Snapshot) -> dict[str, Any] | None:
    if not snap.paused:
        return None
    if snap.wait_kind == "branches":
        return {"kind": "branches", "due": snap.due, "waits": list(snap.waits)}
    wait: dict[str, Any] = {"kind": snap.wait_kind, "due": snap.due}
    if snap.waiting_for is not None:
        wait["event"] = snap.waiting_for
    return wait
