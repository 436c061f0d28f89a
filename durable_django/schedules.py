"""Schedules: start a program on a cron expression or a fixed interval, exactly one instance per tick.

A schedule is a :class:`~durable_django.models.DurableSchedule` row, created
in the admin or declared in code (the :func:`schedule` decorator, or
``DURABLE["SCHEDULES"]``) and synced to the table by :func:`sync` (after
``migrate``, and ``manage.py durable_schedules sync``).

:func:`fire_due` starts what is due. It runs in the Celery beat entry
``durable-django-schedules`` (:func:`durable_django.conf.beat_schedule`) and
in ``durable_resume --loop``; several of them may run at once. Why a tick
still starts exactly once:

* the due rows are locked with ``SELECT ... FOR UPDATE SKIP LOCKED`` where
  the database has it (two schedulers take different rows; on SQLite
  transactions are serialised anyway);
* ``next_run_at`` is advanced with a compare-and-set (``UPDATE ... WHERE
  next_run_at = <the value read>``) in the same transaction as the starts: a
  scheduler that lost the race rolls its starts back;
* the tick's instance id is ``<name>@<tick in UTC>`` and ``start()`` is
  idempotent by instance id, so a tick replayed after a crash (its instance
  committed, ``next_run_at`` not) finds its instance and starts nothing.

Cron expressions are parsed by ``cronsim`` (read in the schedule's time
zone with :mod:`zoneinfo`; DST is the library's: a time skipped by a
spring-forward runs right after the gap, a repeated time runs once).
Intervals are counted in elapsed seconds from the Unix epoch, so an every-15-
minutes schedule fires at :00, :15... UTC whatever the time zone says.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from celery import shared_task
from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from django.db import connections, transaction
from django.db.models import Q
from django.utils import timezone as dj_timezone

from . import api, clock, db, programs
from .conf import durable_settings
from .exceptions import DurableDjangoError, InstanceFinished, UnknownInstance
from .models import FINISHED, Catchup, DurableInstance, DurableSchedule, Overlap
from .tasks import drop_broken_connections

log = logging.getLogger("durable_django")

__all__ = ["ScheduleSpec", "SyncResult", "Timing", "declared", "fire_due", "instance_id_for", "pause", "resume",
           "schedule", "spec_from_setting", "sync"]

T = TypeVar("T")
#: Schedules a firing locks and fires in one transaction.
CHUNK = 100
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


# -- when: cron or interval, in a time zone ------------------------------------------------------
@dataclass(frozen=True)
class Timing:
    """A schedule's ticks: ``cron`` read in ``tz``, or every ``interval`` seconds (since the epoch)."""

    cron: str = ""
    interval: int | None = None
    tz: str = "UTC"

    def __post_init__(self) -> None:
        if bool(self.cron) == (self.interval is not None):
            raise ValueError("a schedule needs either a cron expression or an interval, not both")
        if self.interval is not None and (isinstance(self.interval, bool) or not isinstance(self.interval, int)
                                          or self.interval < 1):
            raise ValueError(f"interval must be a whole number of seconds >= 1, got {self.interval!r}")
        try:
            zone = ZoneInfo(self.tz)
        except (ZoneInfoNotFoundError, ValueError, TypeError) as exc:
            raise ValueError(f"unknown time zone {self.tz!r}") from exc
        if self.cron:
            from cronsim import CronSim, CronSimError

            try:
                next(CronSim(self.cron, datetime.now(zone)))
            except (CronSimError, StopIteration) as exc:
                raise ValueError(f"bad cron expression {self.cron!r}: {exc or 'it never fires'}") from exc

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.tz)

    def next_after(self, after: datetime) -> datetime:
        """The first tick strictly after ``after`` (aware), in UTC."""
        if self.interval is not None:
            k = math.floor((after - _EPOCH).total_seconds() / self.interval) + 1
            return _EPOCH + timedelta(seconds=k * self.interval)
        from cronsim import CronSim

        return next(CronSim(self.cron, after.astimezone(self.zone))).astimezone(UTC)

    def latest(self, since: datetime, now: datetime, n: int) -> list[datetime]:
        """The last ``n`` ticks in ``[since, now]``, oldest first, in UTC."""
        if n < 1 or since > now:
            return []
        if self.interval is not None:
            k = math.floor((now - _EPOCH).total_seconds() / self.interval)
            ticks: list[datetime] = []
            while len(ticks) < n:
                t = _EPOCH + timedelta(seconds=k * self.interval)
                if t < since:
                    break
                ticks.append(t)
                k -= 1
            return ticks[::-1]
        from cronsim import CronSim

        # Backwards from ``now`` included: CronSim treats microseconds as the first step back.
        it = CronSim(self.cron, (now + timedelta(microseconds=1)).astimezone(self.zone), reverse=True)
        found: list[datetime] = []
        for t in it:
            t = t.astimezone(UTC)
            if t < since or len(found) >= n:
                break
            found.append(t)
        return found[::-1]


def instance_id_for(name: str, tick: datetime) -> str:
    """The instance id of a tick: the same for every scheduler, so ``start()`` starts it once."""
    return f"{name}@{tick.astimezone(UTC):%Y-%m-%dT%H:%M:%SZ}"


def _aware(value: datetime) -> datetime:
    return value if dj_timezone.is_aware(value) else dj_timezone.make_aware(value)


def _stored(value: datetime) -> datetime:
    """``value`` as the DateTimeFields store it (naive local time without USE_TZ)."""
    return value if settings.USE_TZ else dj_timezone.make_naive(value)


def timing_of(row: DurableSchedule) -> Timing:
    return Timing(cron=row.cron, interval=row.interval_seconds, tz=row.timezone)


# -- declared in code -------------------------------------------------------------------------
@dataclass(frozen=True)
class ScheduleSpec:
    """A schedule declared in code (decorator or setting): what :func:`sync` writes to its row."""

    name: str
    program: str
    timing: Timing
    args: list = field(default_factory=list)
    kwargs: dict = field(default_factory=dict)
    overlap: str = Overlap.SKIP
    catchup: str = Catchup.SKIP
    max_catchup: int = 10

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not 0 < len(self.name) <= 100 or "@" in self.name:
            raise ValueError(f"schedule name must be 1 to 100 characters without '@', got {self.name!r}")
        if self.overlap not in Overlap.values:
            raise ValueError(f"overlap must be one of {Overlap.values}, got {self.overlap!r}")
        if self.catchup not in Catchup.values:
            raise ValueError(f"catchup must be one of {Catchup.values}, got {self.catchup!r}")
        if isinstance(self.max_catchup, bool) or not isinstance(self.max_catchup, int) or self.max_catchup < 1:
            raise ValueError(f"max_catchup must be an int >= 1, got {self.max_catchup!r}")
        try:  # stored as JSON: normalise now (tuples become lists), so that sync compares like with like
            object.__setattr__(self, "args", json.loads(json.dumps(list(self.args), cls=DjangoJSONEncoder)))
            object.__setattr__(self, "kwargs", json.loads(json.dumps(dict(self.kwargs), cls=DjangoJSONEncoder)))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"schedule {self.name!r}: args and kwargs must be JSON: {exc}") from exc

    def fields(self) -> dict[str, Any]:
        t = self.timing
        return {"program": self.program, "args": self.args, "kwargs": self.kwargs, "cron": t.cron,
                "interval_seconds": t.interval, "timezone": t.tz, "overlap": self.overlap,
                "catchup": self.catchup, "max_catchup": self.max_catchup}


#: name -> schedules declared with the decorator (in this process: they are imported with their module).
_declared: dict[str, ScheduleSpec] = {}


def schedule(cron: str | None = None, *, interval: int | None = None, tz: str = "UTC", name: str | None = None,
             args: Iterable[Any] = (), kwargs: dict[str, Any] | None = None, overlap: str = Overlap.SKIP,
             catchup: str = Catchup.SKIP, max_catchup: int = 10) -> Callable[[T], T]:
    """Declare a schedule for the decorated program (put it above ``@make_durable``); returns it unchanged.

    ``name`` defaults to the program's dotted path. Checked at once (a bad
    cron expression or time zone fails at import); written to the table by
    :func:`sync`, which runs after ``migrate``.
    """

    def decorate(program: T) -> T:
        path = programs.path_of(program)  # type: ignore[arg-type]
        spec = ScheduleSpec(name or path, path, Timing(cron or "", interval, tz), list(args), dict(kwargs or {}),
                            overlap, catchup, max_catchup)
        other = _declared.get(spec.name)
        if other is not None and other.program != path:
            raise ValueError(f"schedule {spec.name!r} is declared twice ({other.program} and {path})")
        _declared[spec.name] = spec
        return program

    return decorate


def spec_from_setting(name: str, entry: Any) -> ScheduleSpec:
    """One entry of ``DURABLE["SCHEDULES"]`` as a spec; ``ValueError`` says what is wrong with it."""
    if not isinstance(entry, dict):
        raise ValueError(f"DURABLE['SCHEDULES'][{name!r}] must be a dict")
    unknown = set(entry) - {"program", "cron", "interval", "tz", "args", "kwargs", "overlap", "catchup",
                            "max_catchup"}
    if unknown:
        raise ValueError(f"DURABLE['SCHEDULES'][{name!r}]: unknown keys {sorted(unknown)}")
    if not isinstance(entry.get("program"), str) or not entry["program"]:
        raise ValueError(f"DURABLE['SCHEDULES'][{name!r}] needs a 'program' (a dotted path)")
    return ScheduleSpec(name, entry["program"], Timing(entry.get("cron") or "", entry.get("interval"),
                                                      entry.get("tz", "UTC")),
                        entry.get("args", []), entry.get("kwargs", {}), entry.get("overlap", Overlap.SKIP),
                        entry.get("catchup", Catchup.SKIP), entry.get("max_catchup", 10))


def declared() -> dict[str, ScheduleSpec]:
    """Every schedule declared in code: the decorators' and ``DURABLE["SCHEDULES"]`` (which wins on a name)."""
    found = dict(_declared)
    for name, entry in (durable_settings.SCHEDULES or {}).items():
        found[name] = spec_from_setting(name, entry)
    return found


@dataclass
class SyncResult:
    added: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)


def sync(using: str | None = None, now: datetime | None = None) -> SyncResult:
    """Make the table match the schedules declared in code: add, update and delete declared rows.

    Rows created in the admin are left alone (unless code declares the same
    name, which then takes the row over). ``paused`` and the run history of a
    row are kept; a changed cron, interval or time zone moves ``next_run_at``
    to the new next tick.
    """
    specs = declared()
    alias = db.alias(using)
    now = now or clock.now()
    result = SyncResult()
    with transaction.atomic(using=alias):
        rows = {r.name: r for r in DurableSchedule.objects.using(alias).select_for_update()
                .filter(Q(declared=True) | Q(name__in=list(specs)))}
        for name, spec in sorted(specs.items()):
            values = spec.fields()
            row = rows.get(name)
            if row is None:
                DurableSchedule.objects.using(alias).create(
                    name=name, declared=True, next_run_at=_stored(spec.timing.next_after(_aware(now))), **values)
                result.added.append(name)
                continue
            diff = {k: v for k, v in values.items() if getattr(row, k) != v}
            if not diff and row.declared:
                continue
            if diff.keys() & {"cron", "interval_seconds", "timezone"}:
                diff["next_run_at"] = _stored(spec.timing.next_after(_aware(now)))
            DurableSchedule.objects.using(alias).filter(pk=row.pk).update(
                declared=True, updated_at=dj_timezone.now(), **diff)
            result.changed.append(name)
        gone = [n for n, r in rows.items() if r.declared and n not in specs]
        if gone:
            DurableSchedule.objects.using(alias).filter(name__in=gone, declared=True).delete()
            result.removed.extend(sorted(gone))
    if result.added or result.changed or result.removed:
        log.info("durable schedules synced: added %s, changed %s, removed %s",
                 result.added, result.changed, result.removed)
    return result


def _sync_after_migrate(using: str = "default", **kwargs: Any) -> None:
    """post_migrate: sync the declared schedules into the database just migrated (if it holds the table)."""
    if using != db.alias() or DurableSchedule._meta.db_table not in connections[using].introspection.table_names():
        return
    sync(using=using)


# -- operator actions -------------------------------------------------------------------------
def pause(name: str, note: str = "") -> bool:
    """Stop firing ``name`` until :func:`resume`; False if there is no such schedule."""
    return bool(DurableSchedule.objects.filter(name=name).update(
        paused=True, last_note=note[:500], updated_at=dj_timezone.now()))


def resume(name: str, now: datetime | None = None) -> bool:
    """Fire ``name`` again from its next tick after now (ticks missed while paused are not caught up)."""
    row = DurableSchedule.objects.filter(name=name).first()
    if row is None:
        return False
    nxt = timing_of(row).next_after(_aware(now or clock.now()))
    DurableSchedule.objects.filter(pk=row.pk).update(paused=False, next_run_at=_stored(nxt), last_note="",
                                                     updated_at=dj_timezone.now())
    return True


# -- firing -----------------------------------------------------------------------------------
class _Lost(Exception):
    """Another scheduler advanced the row first: roll this one's starts back."""


def fire_due(now: datetime | None = None, *, limit: int | None = None) -> list[str]:
    """Start the instances of every due tick; returns their ids. Safe to run in several processes at once.

    Schedules are taken ``CHUNK`` at a time, each chunk in one transaction
    (so their wake-ups go out batched, after commit); one schedule's error is
    logged and noted on its row, and never stops the others.
    """
    if now is None:
        clock.sync()
        now = clock.now()
    now = _aware(now)
    alias = db.alias()
    skip_locked = connections[alias].features.has_select_for_update_skip_locked
    remaining = limit or durable_settings.SCHEDULE_BATCH
    fired: list[str] = []
    while remaining > 0:
        with transaction.atomic(using=alias):
            due = DurableSchedule.objects.using(alias).filter(paused=False, next_run_at__lte=_stored(now))
            if skip_locked:
                due = due.select_for_update(skip_locked=True)
            rows = list(due.order_by("next_run_at", "pk")[:min(CHUNK, remaining)])
            for row in rows:
                fired.extend(_fire_one(row, now, alias))
        if len(rows) < min(CHUNK, remaining):
            break
        remaining -= len(rows)
    return fired


def _fire_one(row: DurableSchedule, now: datetime, alias: str) -> list[str]:
    """Fire one due schedule (inside the chunk's transaction, in a savepoint of its own)."""
    try:
        timing = timing_of(row)
        upcoming = timing.next_after(now)
        since = _aware(row.next_run_at) if row.next_run_at is not None else now
        ticks = timing.latest(since, now, row.max_catchup if row.catchup == Catchup.ALL else 1)
    except ValueError as exc:  # edited into something unusable: pause it, say why
        log.error("durable schedule %s paused: %s", row.name, exc)
        DurableSchedule.objects.using(alias).filter(pk=row.pk).update(
            paused=True, last_note=f"paused: {exc}"[:500], updated_at=dj_timezone.now())
        return []
    note = ""
    if row.catchup == Catchup.SKIP and ticks and (now - ticks[-1]).total_seconds() > \
            float(durable_settings.SCHEDULE_GRACE_SECONDS):
        note = f"skipped missed tick {ticks[-1]:%Y-%m-%d %H:%M:%S} UTC (catch-up: skip)"
        ticks = []
    fired: list[str] = []
    previous = row.last_instance_id
    last_tick = row.last_run_at
    try:
        with transaction.atomic(using=alias):
            for tick in ticks:
                iid = instance_id_for(row.name, tick)
                skip = _overlap(row, previous, iid)
                if skip:
                    note = f"skipped tick {tick:%Y-%m-%d %H:%M:%S} UTC: {skip}"
                    continue
                api.start(row.program, *row.args, instance_id=iid, **row.kwargs)
                fired.append(iid)
                previous, last_tick = iid, _stored(tick)
            won = DurableSchedule.objects.using(alias).filter(pk=row.pk, next_run_at=row.next_run_at).update(
                next_run_at=_stored(upcoming), last_run_at=last_tick, last_instance_id=previous,
                last_note=note[:500], updated_at=dj_timezone.now())
            if not won:
                raise _Lost
    except _Lost:
        return []
    except (DurableDjangoError, TypeError, ValueError) as exc:
        # The program is gone, its arguments no longer fit...: the tick is skipped (it would fail the same way
        # on every firing), the row says why, and the next tick tries again.
        log.error("durable schedule %s: tick not started: %s", row.name, exc)
        DurableSchedule.objects.using(alias).filter(pk=row.pk, next_run_at=row.next_run_at).update(
            next_run_at=_stored(upcoming), last_note=f"error: {type(exc).__name__}: {exc}"[:500],
            updated_at=dj_timezone.now())
        return []
    if note:
        log.info("durable schedule %s: %s", row.name, note)
    return fired


def _overlap(row: DurableSchedule, previous: str, iid: str) -> str:
    """Why this tick must not start because of the previous instance ("" to start it), per ``row.overlap``."""
    if not previous or previous == iid or row.overlap == Overlap.ALLOW:
        return ""
    status = DurableInstance.objects.filter(pk=previous).values_list("status", flat=True).first()
    if status is None or status in FINISHED or DurableInstance.objects.filter(pk=iid).exists():
        return ""  # finished, gone, or this tick's instance exists already (a replay): start() is a no-op
    if row.overlap == Overlap.SKIP:
        return f"{previous} is still {status}"
    try:
        api.cancel(previous, f"superseded by the next tick of schedule {row.name}", actor=f"schedule:{row.name}")
    except (InstanceFinished, UnknownInstance):
        pass
    return ""


@shared_task(name="durable_django.fire_schedules", ignore_result=True)
def fire_schedules() -> int:
    """Periodic (beat entry ``durable-django-schedules``): start the instances of the due ticks."""
    drop_broken_connections()
    return len(fire_due())
