"""Schedules suite: 10,000 schedules firing every minute with 2 schedulers, on a simulated clock.

``python -m bench schedules [--schedules N] [--minutes M] [--schedulers S] [--db sqlite|pg] [--quick] [--out PATH]``

1. A database of its own (an SQLite file in a temporary folder, or a
   PostgreSQL database ``durable_sched_<random>``, dropped at the end) holding
   ``N`` schedules ``* * * * *`` (every minute) of ``bench.django_programs.one_step``.
2. A simulated clock (:class:`durable.testing.FakeClock` through
   :func:`durable_django.clock.override`) stands at each whole minute in turn;
   ``S`` scheduler threads (each its own database connection: what two beat or
   ``durable_resume --loop`` processes do) call
   :func:`durable_django.schedules.fire_due` together until nothing is due.
3. Per minute: the wall time until every tick of that minute had its instance
   (on time: before the next tick, 60 s; the precision of a real tick adds the
   firing interval, ``SCHEDULE_INTERVAL``), and how the work split between
   the schedulers.
4. Invariants (exit 1 when broken): every tick of every schedule fired exactly
   once (no instance id reported by two schedulers, none missing, one
   instance row per tick), and every schedule's ``next_run_at`` is the next minute.

The instances are only started, not run: their wake-ups are counted instead of
being sent to a broker (the broker and the workers are what the Django
benchmark measures; this suite measures the scheduler).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from .common.environment import ROOT, drop_database, git_revision, recreate_database, run_meta, setup_django
from .common.results import report

DEFAULT_OUT = ROOT / "bench" / "results" / "schedules.json"
PG_URL = "postgres://postgres@127.0.0.1:5432/postgres"
PROGRAM = "bench.django_programs.one_step"
START = datetime(2026, 1, 5, 8, 0, tzinfo=UTC)


def _log(msg: str) -> None:
    print(f"  [schedules] {msg}", file=sys.stderr, flush=True)


def _setup(kind: str, where: str) -> None:
    env = {"DJANGO_SETTINGS_MODULE": "bench.django_settings", "DURABLE_BENCH_DB": kind,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    env["DURABLE_BENCH_SQLITE" if kind == "sqlite" else "DURABLE_BENCH_PG_NAME"] = where
    setup_django(env, migrate=True)


def _count_wakeups() -> list[int]:
    """Count the wake-ups instead of sending them (no broker in this suite)."""
    from durable_django import wakeups

    sent = [0]

    def send_tasks(ids: list[str]) -> int:
        sent[0] += len(ids)
        return len(ids)

    wakeups.send_tasks = send_tasks  # type: ignore[assignment]
    wakeups.send_task = lambda instance_id, **kw: send_tasks([instance_id]) > 0  # type: ignore[assignment]
    return sent


def run(n: int, minutes: int, schedulers: int) -> dict[str, Any]:
    from django.db import connections

    from durable.testing import FakeClock
    from durable_django import clock, schedules
    from durable_django.models import DurableInstance, DurableSchedule

    sent = _count_wakeups()
    DurableSchedule.objects.bulk_create(
        [DurableSchedule(name=f"s{i:06d}", program=PROGRAM, args=[i], cron="* * * * *", overlap="allow",
                         next_run_at=START) for i in range(n)], batch_size=2000)
    fake = FakeClock(START)
    per_minute: list[dict[str, Any]] = []
    errors: list[BaseException] = []
    seen: set[str] = set()
    doubled = 0
    with clock.override(fake):
        for m in range(minutes):
            tick = START + timedelta(minutes=m)
            fake.set(tick)
            fired: list[list[str]] = [[] for _ in range(schedulers)]
            barrier = threading.Barrier(schedulers)

            def scheduler(out: list[str], barrier: threading.Barrier = barrier) -> None:
                try:
                    barrier.wait(timeout=120)
                    while True:
                        got = schedules.fire_due()
                        out.extend(got)
                        if not got:
                            return
                except BaseException as exc:  # noqa: BLE001 - reported as a broken invariant
                    errors.append(exc)
                finally:
                    connections.close_all()

            threads = [threading.Thread(target=scheduler, args=(fired[k],)) for k in range(schedulers)]
            t0 = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            elapsed = time.perf_counter() - t0
            ids = [i for f in fired for i in f]
            doubled += len(ids) - len(set(ids)) + len(seen & set(ids))
            seen.update(ids)
            expected = {schedules.instance_id_for(f"s{i:06d}", tick) for i in range(n)}
            missing = len(expected - set(ids))
            rows = DurableInstance.objects.filter(instance_id__endswith=f"@{tick:%Y-%m-%dT%H:%M:%SZ}").count()
            per_minute.append({"tick": tick.isoformat(), "fired": len(set(ids)), "missing": missing, "rows": rows,
                               "seconds": round(elapsed, 3), "on_time": elapsed < 60.0 and not missing,
                               "per_scheduler": [len(f) for f in fired],
                               "ticks_per_s": round(len(ids) / elapsed, 1) if elapsed else None})
            _log(f"minute {m + 1}/{minutes}: {len(ids):,} ticks in {elapsed:.2f} s "
                 f"(split {[len(f) for f in fired]}), missing {missing}")
    nxt = START + timedelta(minutes=minutes)
    wrong_next = DurableSchedule.objects.exclude(next_run_at=nxt).count()
    ok = (not errors and doubled == 0 and all(p["missing"] == 0 and p["rows"] == n for p in per_minute)
          and wrong_next == 0)
    return {"schedules": n, "minutes": minutes, "schedulers": schedulers, "per_minute": per_minute,
            "doubled": doubled, "wrong_next_run_at": wrong_next, "wakeups_counted": sent[0],
            "errors": [repr(e) for e in errors], "worst_seconds": max(p["seconds"] for p in per_minute),
            "all_on_time": all(p["on_time"] for p in per_minute), "ok": ok}


def format_table(res: dict[str, Any]) -> str:
    s = res["schedules"]
    lines = [f"durable_django schedules  {res['meta']['date_utc']}  {s['schedules']:,} schedules every minute, "
             f"{s['schedulers']} schedulers, {res['meta']['db']}, git {res['meta']['git']}",
             f"  {'tick (UTC)':<26} {'fired':>8} {'missing':>8} {'seconds':>8} {'ticks/s':>9} {'split':>16}"]
    for p in s["per_minute"]:
        lines.append(f"  {p['tick']:<26} {p['fired']:>8,} {p['missing']:>8} {p['seconds']:>8.2f} "
                     f"{p['ticks_per_s'] or 0:>9,.0f} {str(p['per_scheduler']):>16}")
    lines += [f"  slowest minute: {s['worst_seconds']:.2f} s to fire {s['schedules']:,} ticks "
              f"(on time: < 60 s, before the next tick): {'PASS' if s['all_on_time'] else 'MISS'}",
              f"  ticks doubled: {s['doubled']}; schedules with a wrong next_run_at: {s['wrong_next_run_at']}",
              f"  invariants: {'OK' if s['ok'] else 'BROKEN'} {s['errors'] or ''}"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the suite, print the table, write the JSON; exit 1 when an invariant broke."""
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(prog="python -m bench schedules", description=__doc__.splitlines()[0])
    ap.add_argument("--schedules", type=int, default=10_000)
    ap.add_argument("--minutes", type=int, default=5, help="simulated minutes (ticks per schedule)")
    ap.add_argument("--schedulers", type=int, default=2)
    ap.add_argument("--db", choices=["sqlite", "pg"], default="sqlite")
    ap.add_argument("--quick", action="store_true", help="smoke run: 200 schedules, 3 minutes")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args(argv)
    if args.quick:
        args.schedules, args.minutes = 200, 3
    meta: dict[str, Any] = {**run_meta(), "git": git_revision(("durable", "durable_django")), "db": args.db,
                            "config": {k: str(v) for k, v in vars(args).items()}}
    with tempfile.TemporaryDirectory(prefix="durable-sched-") as tmp:
        name = str(Path(tmp, "sched.sqlite3")) if args.db == "sqlite" else f"durable_sched_{uuid.uuid4().hex[:10]}"
        if args.db == "pg":
            recreate_database(PG_URL, name)
        try:
            _setup(args.db, name)
            res = {"meta": meta, "schedules": run(args.schedules, args.minutes, args.schedulers)}
        finally:
            from django.conf import settings

            if settings.configured:
                from django.db import connections

                connections.close_all()
            if args.db == "pg":
                drop_database(PG_URL, name)
    res["ok"] = res["schedules"]["ok"]
    report(res, format_table(res), args.out, check_ok=True)
    return res
