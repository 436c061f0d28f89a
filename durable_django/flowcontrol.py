"""Flow control: concurrency limits (per program and per key), rate limits, priorities and queues.

Declared on a program, in code or in settings (settings win, so operations can
tune a limit without a deploy)::

    durable_django.limit(expense_process, concurrency=5, key="employee_id", per_key=1,
                         rate="100/m", priority=5, queue="expenses")
    DURABLE = {"LIMITS": {"expenses.processes.expense_process": {"concurrency": 5}}}

How it holds across workers and machines: a worker that has claimed an
instance's lease takes a slot of each of its limits (:mod:`durable_django.db.slots`)
before it runs anything. A slot counts as held while its holder runs under a
live lease (``hold="running"``, the default: a process paused for days waiting
for a person holds no slot), or, with ``hold="finished"``, until the holder
finishes. A killed worker's slot frees when its lease expires. An instance
that gets no slot (or whose rate is spent) gives its lease back at once and
waits in the database (``flow_waiting`` names the limit), without holding a
worker; the worker that frees a slot wakes the next waiting instance of that
limit, highest priority first, and the sweep is the safety net.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from django.core.signals import setting_changed
from django.db.models import Case, F, Value, When
from django.utils.module_loading import import_string

from . import children, clock, leases, programs, wakeups
from .conf import durable_settings
from .db import ops
from .db import slots as sql
from .exceptions import InvalidInput
from .leases import _Claimed
from .models import FINISHED, DurableInstance, Status

log = logging.getLogger("durable_django")

#: The outcome of a run that waits for a slot or for its rate (it gave its lease back).
WAITING = "waiting"
#: ``flow_waiting`` of an instance that waits for its rate limit's next window (its ``wake_at`` says when).
RATE_PREFIX = "rate:"
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_RATE = re.compile(r"(?P<count>\d+)\s*/\s*(?P<number>\d+(?:\.\d+)?)?(?P<unit>[smhd])")

T = TypeVar("T")


def parse_rate(value: str | tuple[int, float] | None) -> tuple[int, float] | None:
    """``"10/m"``, ``"5/30s"`` or ``(10, 60.0)`` as (count, period in seconds); None stays None."""
    if value is None:
        return None
    if isinstance(value, str):
        match = _RATE.fullmatch(value.strip())
        if match is None:
            raise ValueError(f"a rate is 'N/s', 'N/m', 'N/h', 'N/d' or 'N/30s', got {value!r}")
        value = (int(match["count"]), float(match["number"] or 1) * _UNITS[match["unit"]])
    count, seconds = value
    if isinstance(count, bool) or not isinstance(count, int) or count < 1 or not 0 < float(seconds) < math.inf:
        raise ValueError(f"a rate needs a count >= 1 and a positive period, got {value!r}")
    return count, float(seconds)


def _positive(name: str, value: Any) -> int | None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"{name} must be an int >= 1 or None, got {value!r}")
    return value


@dataclass(frozen=True)
class Limits:
    """The flow control of one program (see :func:`limit` for the meaning of each option)."""

    concurrency: int | None = None
    key: Callable[..., Any] | str | None = None
    per_key: int | None = None
    rate: tuple[int, float] | None = None
    per_key_rate: tuple[int, float] | None = None
    priority: int = 0
    queue: str | None = None
    hold: str = sql.RUNNING

    def __post_init__(self) -> None:
        _positive("concurrency", self.concurrency)
        _positive("per_key", self.per_key)
        if self.hold not in (sql.RUNNING, sql.FINISHED):
            raise ValueError(f"hold must be 'running' or 'finished', got {self.hold!r}")
        if (self.per_key or self.per_key_rate) and self.key is None:
            raise ValueError("per_key and per_key_rate need key= (an argument name or a function of the arguments)")
        if isinstance(self.priority, bool) or not isinstance(self.priority, int) or not -32768 <= self.priority < 32768:
            raise ValueError(f"priority must be an int in [-32768, 32767], got {self.priority!r}")
        if self.queue is not None and (not isinstance(self.queue, str) or not self.queue):
            raise ValueError(f"queue must be a non-empty str or None, got {self.queue!r}")

    @property
    def gates(self) -> bool:
        """Does a run need the database's say-so (a slot or a rate token)?"""
        return bool(self.concurrency or self.per_key or self.rate or self.per_key_rate)

    @classmethod
    def build(cls, options: dict[str, Any]) -> Limits:
        opts = dict(options)
        for name in ("rate", "per_key_rate"):
            opts[name] = parse_rate(opts.get(name))
        key = opts.get("key")
        if isinstance(key, str) and "." in key:  # a dotted path to a function (settings); else an argument name
            opts["key"] = import_string(key)
        return cls(**opts)


#: program path -> Limits declared in code with limit()
_declared: dict[str, Limits] = {}
#: program paths whose module was imported to look for a declaration
_looked_up: set[str] = set()
_from_settings: dict[str, Limits] | None = None


def limit(program: Any = None, /, *, concurrency: int | None = None, key: Callable[..., Any] | str | None = None,
          per_key: int | None = None, rate: str | tuple[int, float] | None = None,
          per_key_rate: str | tuple[int, float] | None = None, priority: int = 0, queue: str | None = None,
          hold: str = sql.RUNNING) -> Any:
    """Declare the flow control of ``program`` (a program or its dotted path); returns it. Usable as a decorator.

    ``concurrency``: at most this many of its instances run at once. ``key``: an argument name or a function
    of the start arguments (``lambda customer_id, **_: customer_id``) giving each instance a key, and
    ``per_key``: at most this many running per key. ``rate`` / ``per_key_rate``: at most N instances *start*
    per period (``"10/m"``), per program / per key. ``priority``: higher is claimed first where a worker picks
    among many (default for its starts; ``start(..., priority=)`` overrides). ``queue``: the Celery queue of
    all its wake-ups. ``hold``: ``"running"`` (default) counts an instance against ``concurrency`` while it
    runs; ``"finished"`` until it finishes, paused or not.
    """
    options = Limits(concurrency=concurrency, key=key, per_key=per_key, rate=parse_rate(rate),
                     per_key_rate=parse_rate(per_key_rate), priority=priority, queue=queue, hold=hold)

    def declare(prog: T) -> T:
        global _by_program
        _declared[programs.path_of(prog)] = options  # type: ignore[arg-type]
        _by_program = None
        return prog

    return declare(program) if program is not None else declare


def _settings_limits() -> dict[str, Limits]:
    global _from_settings
    if _from_settings is None:
        _from_settings = {path: Limits.build(opts) for path, opts in (durable_settings.LIMITS or {}).items()}
    return _from_settings


def limits_for(path: str) -> Limits | None:
    """The flow control of the program at ``path``: ``DURABLE["LIMITS"]``, else its declaration, else None."""
    found = _settings_limits().get(path) or _declared.get(path)
    if found is None and path not in _looked_up:
        _looked_up.add(path)
        try:  # its module declares it at import (a worker that has not run it yet)
            programs.resolve(path)
        except Exception:  # noqa: BLE001 - an unknown program has no limits; the run reports it
            return None
        found = _declared.get(path)
    return found


def program_limits() -> list[tuple[str, int, str]]:
    """Every known program-wide concurrency limit as (program, size, hold): what the claim on PostgreSQL takes a
    slot of in its own statement (:func:`durable_django.db.slots.claim_with_slot`)."""
    global _by_program
    if _by_program is None:
        merged = {**_declared, **_settings_limits()}
        _by_program = [(path, o.concurrency, o.hold) for path, o in sorted(merged.items()) if o.concurrency]
    return _by_program


_by_program: list[tuple[str, int, str]] | None = None


def _reload(*, setting: str, **kwargs: Any) -> None:
    global _from_settings, _by_program
    if setting == "DURABLE":
        _from_settings = _by_program = None


setting_changed.connect(_reload, dispatch_uid="durable_django.flowcontrol.reload")


# -- at start -------------------------------------------------------------------------
def key_value(options: Limits, fn: Callable[..., Any], args: Sequence[Any], kwargs: dict[str, Any]) -> str:
    """The key of an instance started with ``args``/``kwargs`` (long keys are hashed to fit the column)."""
    key = options.key
    if callable(key):
        value = key(*args, **kwargs)
    else:
        bound = inspect.signature(fn).bind(*args, **kwargs)
        bound.apply_defaults()
        value = bound.arguments[str(key)]
    text = str(value)
    return text if len(text) <= 100 else "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def known_queues() -> set[str]:
    """Queues ``start(..., queue=)`` may name: ``DURABLE["QUEUES"]``, the programs' queues and ``QUEUE``."""
    names = set(durable_settings.QUEUES or ())
    names.update(o.queue for o in (*_declared.values(), *_settings_limits().values()) if o.queue)
    if durable_settings.QUEUE:
        names.add(durable_settings.QUEUE)
    return names


def start_fields(path: str, fn: Callable[..., Any], args: Sequence[Any], kwargs: dict[str, Any],
                 queue: str | None, priority: int | None) -> dict[str, Any]:
    """The flow-control columns of a new instance (none when the program has no limits and no option is given)."""
    options = limits_for(path)
    fields: dict[str, Any] = {}
    if queue is not None:
        if queue not in known_queues():
            raise InvalidInput(f"start(queue={queue!r}): no worker is known to consume that queue; list it in "
                               "DURABLE['QUEUES'] (or give the program queue= with durable_django.limit())")
        fields["queue"] = queue
    if priority is not None:
        try:
            Limits(priority=priority)  # validates it
        except ValueError as exc:
            raise InvalidInput(f"start(priority=...): {exc}") from None
        fields["priority"] = priority
    elif options is not None and options.priority:
        fields["priority"] = options.priority
    if options is not None and options.key is not None:
        fields["flow_key"] = key_value(options, fn, args, kwargs)
    return fields


# -- wake-ups: queue and priority ----------------------------------------------------------
def routing() -> bool:
    """Do wake-ups need each instance's queue or priority (one SELECT per message)?"""
    return bool(durable_settings.QUEUES or durable_settings.MESSAGE_PRIORITY
                or any(o.queue for o in (*_declared.values(), *_settings_limits().values())))


def route(instance_ids: list[str]) -> dict[str, dict[str, Any]]:
    """The Celery options of each instance's wake-up: its queue (the start's, else its program's) and, with
    ``MESSAGE_PRIORITY``, the message's priority. Empty (no query) when no program routes or prioritises."""
    if not instance_ids or not routing():
        return {}
    mode = durable_settings.MESSAGE_PRIORITY
    out: dict[str, dict[str, Any]] = {}
    rows = DurableInstance.objects.using(ops().alias).filter(pk__in=instance_ids)
    for iid, program, queue, priority in rows.values_list("pk", "program", "queue", "priority"):
        options: dict[str, Any] = {}
        declared = limits_for(program)
        target = queue or (declared.queue if declared is not None else None)
        if target:
            options["queue"] = target
        if mode:
            level = min(9, max(0, priority))
            options["priority"] = 9 - level if mode == "inverted" else level
        out[iid] = options
    return out


def by_priority(instance_ids: list[str]) -> list[str]:
    """``instance_ids`` highest priority first (stable); one SELECT."""
    if len(instance_ids) < 2:
        return instance_ids
    prio = dict(DurableInstance.objects.using(ops().alias).filter(pk__in=instance_ids)
                .exclude(priority=0).values_list("pk", "priority"))
    return sorted(instance_ids, key=lambda i: -prio.get(i, 0)) if prio else instance_ids


# -- the worker's gate -----------------------------------------------------------------------
def _slot_keys(row: _Claimed, options: Limits) -> list[tuple[str, int]]:
    keys = []
    if options.concurrency:
        keys.append((row.program, options.concurrency))
    if options.per_key and row.flow_key:
        keys.append((f"{row.program}[{row.flow_key}]", options.per_key))
    return keys


def admit(row: _Claimed, worker_id: str) -> bool:
    """May the claimed ``row`` run now? Takes its slots (and, at its first run, its rate tokens); if not, the
    instance gives its lease back and waits (see the module's docstring). No query for a program without limits."""
    options = limits_for(row.program)
    if options is None or not options.gates:
        return True
    if row.cancel_requested_at is not None:  # a cancellation does not wait for a slot: its cleanup runs now
        return True
    db = ops()
    now = clock.now()
    taken: list[int] = []
    for limit_key, size in _slot_keys(row, options):
        if limit_key == row.program and row.slot is not None:  # taken by the claim itself (PostgreSQL)
            taken.append(row.slot)
            continue
        slot = _take(db, limit_key, size, row.instance_id, options.hold, now)
        if slot is None:
            if taken:
                sql.give_back(db, taken, row.instance_id)
            _wait(row, worker_id, limit_key, None)
            if sql.slot_counts(db, limit_key, size, options.hold, clock.now())[1]:  # freed meanwhile: go again
                wake_waiters(limit_key, 1)
            return False
        taken.append(slot)
    if row.state is None:  # its first run: rate limits count starts
        rates = [(f"{RATE_PREFIX}{row.program}", options.rate),
                 (f"{RATE_PREFIX}{row.program}[{row.flow_key}]", options.per_key_rate if row.flow_key else None)]
        for limit_key, rate in rates:
            if rate is None:
                continue
            count, period = rate
            window = int(now.timestamp() // period)
            if not sql.take_rate(db, limit_key, window, count):
                if taken:
                    sql.give_back(db, taken, row.instance_id)
                due = datetime.fromtimestamp((window + 1) * period, UTC)
                _wait(row, worker_id, limit_key, due)
                if not durable_settings.RUN_INLINE:  # else the sweep runs it once due
                    wakeups.send_task(row.instance_id, eta=due)
                return False
    return True


def _take(db: Any, limit_key: str, size: int, instance_id: str, hold: str, now: datetime) -> int | None:
    """A slot of ``limit_key`` for ``instance_id``, retrying when another worker won the race for the same one."""
    for _ in range(8):
        slot = sql.take_slot(db, limit_key, size, instance_id, hold, now)
        if slot is not None:
            return slot
        total, free = sql.slot_counts(db, limit_key, size, hold, now, instance_id)
        if total < size:
            sql.create_slots(db, limit_key, size)
        elif not free:
            return None
    return None


def _wait(row: _Claimed, worker_id: str, limit_key: str, due: datetime | None) -> None:
    """Give the lease back and wait for ``limit_key`` (as before the claim: pending again if it never ran)."""
    db = ops()
    never_ran = When(status=Status.RUNNING, state__isnull=True, then=Value(Status.PENDING.value))
    fields: dict[str, Any] = {"wake_at": due} if due is not None else {}
    DurableInstance.objects.using(db.alias).filter(pk=row.instance_id, lease_owner=worker_id).update(
        lease_owner="", lease_expires_at=None, attempts=F("attempts") - 1, flow_waiting=limit_key,
        status=Case(never_ran, default=F("status")), **fields)
    log.info("durable instance %s waits for %s", row.instance_id, limit_key)


def after_run(row: _Claimed, outcome: str) -> None:
    """After a run of ``row`` ended with ``outcome``: wake the next waiting instance of each slot it freed."""
    options = limits_for(row.program)
    if options is None or not (options.concurrency or options.per_key) or outcome == WAITING:
        return
    if options.hold == sql.FINISHED and outcome not in (*FINISHED, Status.SUSPENDED):
        return
    if outcome in ("skipped", "lease-lost", Status.RUNNING):
        return
    for limit_key, _size in _slot_keys(row, options):
        wake_waiters(limit_key, 1)


def wake_waiters(limit_key: str, count: int) -> list[str]:
    """Wake up to ``count`` instances waiting for ``limit_key``, highest priority then oldest first.

    Each is taken off the waiting list by a conditional UPDATE (two workers never wake the same one), then sent a
    wake-up; its run takes a slot or waits again. A lost wake-up leaves an ordinary runnable instance, which the
    sweep wakes.
    """
    rows = DurableInstance.objects.using(ops().alias)
    woken: list[str] = []
    candidates = rows.filter(flow_waiting=limit_key).order_by("-priority", "created_at")
    for iid in candidates.values_list("pk", flat=True)[: count + 3]:
        if rows.filter(pk=iid, flow_waiting=limit_key).update(flow_waiting=""):
            woken.append(iid)
            if len(woken) >= count:
                break
    if woken and durable_settings.RUN_INLINE:
        for iid in woken:
            wakeups.schedule(iid)  # runs it in this process
    elif woken:
        wakeups.send_tasks(woken)
    return woken


def due_waiting(now: datetime, limit: int) -> list[str]:
    """The sweep's share: waiting instances whose limit has a free slot, or whose rate window has passed."""
    rows = DurableInstance.objects.using(ops().alias)
    ids = list(rows.filter(flow_waiting__startswith=RATE_PREFIX, wake_at__lte=now)
               .order_by("-priority", "wake_at").values_list("pk", flat=True)[:limit])
    keys = (rows.exclude(flow_waiting="").exclude(flow_waiting__startswith=RATE_PREFIX)
            .values_list("flow_waiting", "program").distinct()[:100])
    db = ops()
    for limit_key, program in keys:
        if len(ids) >= limit:
            break
        options = limits_for(program)
        size = _size(options, program, limit_key)
        if size is None:  # its limit was removed: let it run
            free = limit
        else:
            total, free = sql.slot_counts(db, limit_key, size, options.hold if options else sql.RUNNING, now)
            free += size - total
        if free > 0:
            ids += list(rows.filter(flow_waiting=limit_key).order_by("-priority", "created_at")
                        .values_list("pk", flat=True)[:min(free, limit - len(ids))])
    return ids


def _size(options: Limits | None, program: str, limit_key: str) -> int | None:
    if options is None:
        return None
    if limit_key == program:
        return options.concurrency
    return options.per_key if limit_key.startswith(program + "[") else None


def running(program: str, key: str | None = None) -> list[str]:
    """The instances holding a slot of ``program``'s limit (or of its ``key``) now."""
    options = limits_for(program)
    size = (options.per_key if key is not None else options.concurrency) if options else None
    if options is None or not size:
        return []
    limit_key = program if key is None else f"{program}[{key}]"
    return sql.holders(ops(), limit_key, size, options.hold, clock.now())


def connect() -> None:
    """Give the wake-ups their router and the claim the programs' limits (called by the app's ``ready()``)."""
    wakeups.connect_router(route)
    leases.slot_limits = program_limits
    children.start_fields = start_fields  # child instances get their program's flow-control columns too
