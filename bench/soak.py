"""Soak suite: a million one-step processes through 2 Celery workers on PostgreSQL.

``python -m bench soak [--count N] [--window W] [--purge-every P] [--out PATH] [--keep]``
(see ``bench/README.md``, section "Soak suite"):

1. A database of its own (``durable_soak_<random>``, dropped at the end
   unless ``--keep``) and a queue of its own on Redis DB 9.
2. The producer starts ``N`` instances of ``bench.django_programs.one_step``
   with ``durable_django.start`` in transactions of ``--chunk`` (their
   wake-ups go out batched, as in the app's defaults), keeping at most
   ``--window`` instances unfinished, while 2 worker processes
   (``pool=solo``, the Django benchmark's workers) run them.
3. Every ``--purge-every`` finished instances, ``manage.py durable_purge
   --days 0`` deletes the finished ones, as a production cron would; before
   each purge, no instance may have failed, been suspended or cancelled, and
   a sample of results is checked.
4. At 10k processes and a few points up to N: the workers' resident memory
   (``VmRSS``), the throughput since the previous point.
5. At the end, after the last purge: the rows left in every table of the app
   (must be 0) and how many instances the purges removed (must be N).

Speeds and memory are reported, not asserted; a broken invariant (a failed
instance, a wrong result, a row left) makes the run fail (exit 1).
"""

from __future__ import annotations

import argparse
import datetime
import io
import os
import random
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from .common.environment import (
    ROOT,
    cpu_s,
    drop_database,
    git_revision,
    machine_busy,
    recreate_database,
    rss_kb,
    run_meta,
    setup_django,
)
from .common.results import report
from .django_bench.setup import Workers, durable_queue
from .redis_keys import purge_queue

DEFAULT_OUT = ROOT / "bench" / "results" / "soak.json"
DEFAULT_BROKER = "redis://127.0.0.1:6379/9"
PG_URL = "postgres://postgres@127.0.0.1:5432/postgres"  # the server of bench.django_settings
#: Points (finished processes) where worker memory and throughput are recorded, besides N itself.
MARKS = (1_000, 10_000, 20_000, 50_000, 100_000, 200_000, 300_000, 500_000, 750_000, 1_000_000, 2_000_000)
VARIANT = "reuse"  # the Django benchmark's workers with CELERY_DB_REUSE_MAX (the connection is kept)


def _log(msg: str) -> None:
    print(f"  [soak] {msg}", file=sys.stderr, flush=True)


def _setup(db: str, broker: str, queue: str) -> None:
    env = {"DJANGO_SETTINGS_MODULE": "bench.django_settings", "DURABLE_BENCH_DB": "pg", "DURABLE_BENCH_PG_NAME": db,
           "DURABLE_BENCH_BROKER": broker, "CELERY_BROKER_URL": broker, "DURABLE_BENCH_QUEUE": queue,
           "DURABLE_BENCH_RUN": queue,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    setup_django(env, celery_app=True, migrate=True)


def _unfinished() -> int:
    """Instances not finished yet (served by the status indexes: the table's finished rows are not read)."""
    from durable_django.models import RUNNABLE, DurableInstance

    return DurableInstance.objects.filter(status__in=RUNNABLE).count()


def _check_before_purge(sample: int = 200) -> dict[str, int]:
    """No instance failed, was suspended or cancelled; a sample of completed ones has the right result."""
    from durable_django.models import DurableInstance, Status

    bad = DurableInstance.objects.filter(status__in=(Status.FAILED, Status.SUSPENDED, Status.CANCELLED))
    n_bad = bad.count()
    if n_bad:
        first = bad.values_list("instance_id", "status", "error").first()
        raise AssertionError(f"{n_bad} instance(s) did not complete, e.g. {first[0]} {first[1]}: {first[2][-500:]}")
    rows = list(DurableInstance.objects.filter(status=Status.COMPLETED).values_list("instance_id", "result")
                .order_by("?")[:sample])
    wrong = [(iid, r) for iid, r in rows if r != int(iid.rsplit("-", 1)[1]) + 1]
    if wrong:
        raise AssertionError(f"{len(wrong)} of {len(rows)} sampled results are wrong, e.g. {wrong[0]}")
    return {"checked": len(rows)}


def _purge() -> tuple[int, float]:
    """``manage.py durable_purge --days 0``: (instances deleted, seconds)."""
    from django.core.management import call_command

    out = io.StringIO()
    t0 = time.perf_counter()
    call_command("durable_purge", "--days", "0", "--batch", "5000", stdout=out)
    text = out.getvalue()
    return int(text.split(" instance(s)")[0].split()[-1]), time.perf_counter() - t0


def _rows_left() -> dict[str, int]:
    from django.apps import apps

    return {m._meta.db_table: m.objects.count() for m in apps.get_app_config("durable_django").get_models()}


def soak(count: int, chunk: int, window: int, purge_every: int, logdir: Path, timeout: float,
         stop_at: float | None = None) -> dict[str, Any]:
    """Run ``count`` processes (fewer if the wall clock passes ``stop_at``, a POSIX time: no new ones are
    started then, the started ones finish and are counted)."""
    from django.db import transaction

    import durable_django as dd

    from . import django_programs as progs

    marks = sorted({m for m in MARKS if m < count} | {count})
    workers = Workers(logdir)
    points: list[dict[str, Any]] = []
    purges: list[dict[str, Any]] = []
    purged = 0
    checked = 0
    tag = uuid.uuid4().hex[:6]
    try:
        workers.start_variant(2, VARIANT)
        pids = workers.pids(VARIANT)
        rss0 = [rss_kb(p) for p in pids]
        _log(f"2 workers ready (pids {pids}, RSS {[r // 1024 for r in rss0]} MB); {count:,} processes")
        t0 = time.perf_counter()
        last: dict[str, Any] = {"t": t0, "done": 0, "cpu": sum(map(cpu_s, pids)), "busy": machine_busy(),
                                "producer": sum(os.times()[:2])}
        produced = 0
        next_mark = 0
        next_purge = purge_every
        deadline = time.monotonic() + timeout

        def record(done: int) -> None:
            nonlocal next_mark
            now = time.perf_counter()
            cpu = sum(map(cpu_s, pids))
            producer = sum(os.times()[:2])
            busy = machine_busy()
            rss = [rss_kb(p) for p in pids]
            if 0 in rss:
                logs = "\n".join(p.read_text(errors="replace")[-2000:] for p in logdir.glob("*.log"))
                raise RuntimeError(f"a worker died:\n{logs}")
            dt = now - last["t"]
            reached = max((m for m in marks if m <= done), default=done)
            point = {"mark": reached, "processes": done, "elapsed_s": round(now - t0, 2),
                     "rss_mb": [round(r / 1024, 1) for r in rss],
                     "per_s_since_last": round((done - last["done"]) / dt, 1) if dt > 0 else None,
                     "worker_cpu_ms_per_process": round((cpu - last["cpu"]) / max(1, done - last["done"]) * 1e3, 3),
                     "producer_cpu_ms_per_process": round((producer - last["producer"]) / max(1, done - last["done"])
                                                          * 1e3, 3),
                     "machine_busy": round((busy[0] - last["busy"][0]) / max(1, busy[1] - last["busy"][1]), 3)}
            points.append(point)
            last.update(t=now, done=done, cpu=cpu, busy=busy, producer=producer)
            _log(f"{done:>9,} done  {point['elapsed_s']:>7.1f} s  {point['per_s_since_last'] or 0:>7.0f}/s  "
                 f"RSS {point['rss_mb']} MB")
            while next_mark < len(marks) and marks[next_mark] <= done:
                next_mark += 1

        stopped_early = False
        while True:
            if stop_at is not None and produced < count and time.time() > stop_at:
                _log(f"--stop-at reached: no more processes started after {produced:,}")
                count, stopped_early = produced, True
                marks = sorted({m for m in marks if m < count} | {count})
                next_mark = sum(1 for m in marks if m <= last["done"])
            unfinished = _unfinished()
            done = produced - unfinished
            if next_mark < len(marks) and done >= marks[next_mark]:
                record(done)
            if done >= next_purge or (produced == count and unfinished == 0):
                checked += _check_before_purge()["checked"]
                n, took = _purge()
                purged += n
                purges.append({"at": done, "deleted": n, "seconds": round(took, 2)})
                next_purge = done + purge_every
            if produced == count and unfinished == 0:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"{unfinished:,} of {count:,} processes not finished after {timeout:.0f} s")
            if produced < count and unfinished <= window - chunk:
                n = min(chunk, count - produced)
                with durable_queue(VARIANT), transaction.atomic():  # wake-ups are sent, batched, at the commit
                    for i in range(produced, produced + n):
                        dd.start(progs.one_step, i, instance_id=f"soak-{tag}-{i}")
                produced += n
            else:
                time.sleep(0.05)
        elapsed = time.perf_counter() - t0
        if not points or points[-1]["processes"] < count:
            record(count)
        time.sleep(0.01)
        n, took = _purge()  # anything that finished after the last purge's cutoff
        purged += n
        if n:
            purges.append({"at": count, "deleted": n, "seconds": round(took, 2)})
        left = _rows_left()
    finally:
        workers.stop()
    first = next((p for p in points if p["mark"] >= min(10_000, count)), points[0])
    growth = [round(b - a, 1) for a, b in zip(first["rss_mb"], points[-1]["rss_mb"], strict=True)]
    ok = purged == count and not any(left.values())
    return {"processes": count, "stopped_early": stopped_early, "elapsed_s": round(elapsed, 1),
            "per_s": round(count / elapsed, 1),
            "rss_start_mb": [round(r / 1024, 1) for r in rss0], "points": points,
            "rss_growth_mb": {"from": first["mark"], "to": points[-1]["mark"], "per_worker": growth},
            "purges": purges, "purged": purged, "results_sampled": checked, "rows_left": left, "ok": ok}


def _cleanup_redis(broker: str, queue: str) -> None:
    """The run's queues, kombu's bindings, unacked entries and the workers' notes (all named after ``queue``)."""
    for q in (queue, f"{queue}-{VARIANT}"):
        purge_queue(broker, q)


def format_table(res: dict[str, Any]) -> str:
    s = res["soak"]
    lines = [f"durable_django soak  {res['meta']['date_utc']}  {s['processes']:,} one-step processes, 2 workers "
             f"(pool=solo), PostgreSQL {res['meta'].get('postgresql', '?')}, git {res['meta']['git']}",
             f"  {'processes':>11} {'elapsed s':>10} {'per s':>8} {'worker RSS MB':>18} {'worker CPU':>11} "
             f"{'producer CPU':>13} {'machine':>8}   (CPU: ms per process, both workers together)"]
    for p in s["points"]:
        rss = " / ".join(f"{r:.1f}" for r in p["rss_mb"])
        lines.append(f"  {p['processes']:>11,} {p['elapsed_s']:>10.1f} {p['per_s_since_last'] or 0:>8.0f} "
                     f"{rss:>18} {p['worker_cpu_ms_per_process']:>11.3f} {p['producer_cpu_ms_per_process']:>13.3f} "
                     f"{p['machine_busy']:>8.0%}")
    g = s["rss_growth_mb"]
    if s.get("stopped_early"):
        lines.append(f"  stopped early by --stop-at after {s['processes']:,} of {res['meta']['config']['count']:,}")
    lines += [f"  throughput: {s['per_s']:,.0f} processes/s over {s['elapsed_s']:,.0f} s",
              f"  worker RSS at start: {s['rss_start_mb']} MB; growth from {g['from']:,} to {g['to']:,} processes: "
              f"{g['per_worker']} MB",
              f"  durable_purge runs: {len(s['purges'])}, deleted {s['purged']:,} instances "
              f"(slowest {max(p['seconds'] for p in s['purges']):.1f} s)",
              f"  rows left after the last purge: {s['rows_left']}",
              f"  invariants: {'OK' if s['ok'] else 'BROKEN'}"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the soak suite, print the table, write the JSON; exit 1 when an invariant broke."""
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(prog="python -m bench soak", description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=1_000_000, help="processes (default 1,000,000)")
    ap.add_argument("--chunk", type=int, default=1000, help="processes started per transaction (default 1,000)")
    ap.add_argument("--window", type=int, default=20_000, help="most unfinished processes at once (default 20,000)")
    ap.add_argument("--purge-every", type=int, default=100_000,
                    help="run durable_purge every this many finished processes (default 100,000)")
    ap.add_argument("--timeout", type=float, default=7200, help="seconds the whole run may take (default 7,200)")
    ap.add_argument("--stop-at", default=None, metavar="HH:MM",
                    help="UTC time after which no process is started (the run then reports the count it ran)")
    ap.add_argument("--db", default=None, help="PostgreSQL database, created and dropped (default: a random name)")
    ap.add_argument("--broker", default=DEFAULT_BROKER, help=f"Redis URL of the broker (default {DEFAULT_BROKER})")
    ap.add_argument("--keep", action="store_true", help="keep the database after the run")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args(argv)
    if args.count < 1 or args.chunk < 1 or args.window <= args.chunk or args.purge_every < 1:
        ap.error("--count, --chunk, --purge-every must be >= 1 and --window > --chunk")
    db = args.db or f"durable_soak_{uuid.uuid4().hex[:10]}"
    queue = f"durable-soak-{uuid.uuid4().hex[:10]}"
    meta: dict[str, Any] = {**run_meta(), "git": git_revision(), "db": db,
                            "config": {k: v for k, v in vars(args).items() if k not in ("out",)},
                            "loadavg_start": os.getloadavg()}
    recreate_database(PG_URL, db)
    try:
        _setup(db, args.broker, queue)
        from django.db import connection

        with connection.cursor() as cur:
            cur.execute("SHOW server_version")
            meta["postgresql"] = cur.fetchone()[0]
        random.seed(1)
        stop_at = None
        if args.stop_at:
            hh, mm = (int(x) for x in args.stop_at.split(":"))
            now = datetime.datetime.now(datetime.UTC)
            when = now.replace(hour=hh, minute=mm, second=0, microsecond=0)
            stop_at = (when if when > now else when + datetime.timedelta(days=1)).timestamp()
        with tempfile.TemporaryDirectory(prefix="durable-soak-") as tmp:
            res = {"meta": meta, "soak": soak(args.count, args.chunk, args.window, args.purge_every, Path(tmp),
                                              args.timeout, stop_at)}
        connection.close()
    finally:
        _cleanup_redis(args.broker, queue)
        if not args.keep:
            from django.conf import settings

            if settings.configured:
                from django.db import connections

                connections.close_all()
            drop_database(PG_URL, db)
    meta["loadavg_end"] = os.getloadavg()
    res["ok"] = res["soak"]["ok"]
    report(res, format_table(res), args.out, check_ok=True)
    return res
