"""Running the load suite: its database and workers, the phases in order (always cleaned up), the verdict,
the CLI."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..common.environment import (
    ROOT,
    admin_dsn,
    changed_files,
    drop_database,
    git_revision,
    recreate_database,
    run_meta,
    setup_django,
    versions,
)
from ..common.processes import CeleryWorkers
from ..common.results import report
from ..redis_keys import purge_queue
from .measure import check_state, measure_admin, measure_sweep, measure_wakeup
from .publishers import run_publishers
from .report import format_table
from .setup import LoadConfig, Timer, assign_roles, log, make_config, populate

DEFAULT_OUT = ROOT / "bench" / "results" / "load.json"
DEFAULT_DB = "durable_load"
DEFAULT_BROKER = "redis://127.0.0.1:6379/12"
DEFAULT_PG_URL = "postgres://postgres@127.0.0.1:5432/postgres"
DESCRIPTION = ("Load suite of durable_django on PostgreSQL: 100,000 waiting instances, concurrent publishers, "
               "admin, sweep.")
#: Packages whose versions the JSON records.
VERSIONS = ("django", "celery", "kombu", "redis", "psycopg", "asgiref")


def _cleanup_redis(broker: str, queue: str) -> None:
    purge_queue(broker, queue)


def run(cfg: LoadConfig, db: str, broker: str, keep: bool, pg_url: str = DEFAULT_PG_URL) -> dict[str, Any]:
    t_run = Timer()

    def interrupted(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")  # so the finally blocks stop the workers and drop the database

    signal.signal(signal.SIGTERM, interrupted)
    queue = f"durable-load-{uuid.uuid4().hex[:8]}"
    env = {"DJANGO_SETTINGS_MODULE": "bench.load_settings", "DURABLE_BENCH_PG_NAME": db,
           "DURABLE_BENCH_BROKER": broker, "CELERY_BROKER_URL": broker, "DURABLE_BENCH_QUEUE": queue,
           "DURABLE_BENCH_RUN": queue,
           "DURABLE_BENCH_DB_REUSE_MAX": "1000", "DURABLE_BENCH_DB": "pg", "DURABLE_LOAD_PG_URL": pg_url,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    meta = {**run_meta(), "git": git_revision(), "durable_django_changed": changed_files("durable_django", "durable"),
            "config": asdict(cfg),
            "database": db, "broker": broker,
            "versions": versions(VERSIONS, pg_dsn=admin_dsn(pg_url), broker=broker), "loadavg_start": os.getloadavg()}
    res: dict[str, Any] = {"meta": meta}
    log(f"database {db}: drop and create, migrate")
    recreate_database(admin_dsn(pg_url), db)
    setup_django(env, celery_app=True, migrate=True)
    roles = assign_roles(cfg)
    workers = None
    with tempfile.TemporaryDirectory(prefix="durable-load-") as tmpdir:
        tmp = Path(tmpdir)
        try:
            log(f"creating {cfg.instances:,} waiting instances")
            res["populate"] = populate(cfg, roles)
            log(f"  {res['populate']['seconds']:.1f} s; starting {cfg.workers} worker(s)")
            res["check_initial"] = check_state(roles, set(), "after creation")
            workers = CeleryWorkers(tmp, env)
            workers.start([f"load-{uuid.uuid4().hex[:8]}" for _ in range(cfg.workers)], queue, ready_timeout=90)
            log(f"{cfg.publishers} publishers -> {cfg.targets:,} targets")
            res["publish"] = run_publishers(cfg, roles, env, tmp, workers)
            res["check_after_publish"] = check_state(roles, set(roles.targets), "after the publishers")
            log("admin pages")
            res["admin"] = measure_admin(cfg, roles)
            log("durable_resume sweep")
            res["sweep"] = measure_sweep(cfg, roles, env, workers)
            woken = roles.waiting[-cfg.wakeup_samples:]
            log("wake-ups in process, with and without the human-task receivers")
            res["wakeup_in_process"] = measure_wakeup(cfg, woken)
            res["check_after_sweep"] = check_state(roles, set(roles.targets) | roles.due | set(woken),
                                                   "at the end")
        except BaseException:
            if workers is not None:
                for name, _, _ in workers.procs:
                    print(f"--- worker {name}\n{workers.log(name)[-3000:]}", file=sys.stderr)
            raise
        finally:
            if workers is not None:
                workers.stop()
            _cleanup_redis(broker, queue)
            from django.db import connections

            connections.close_all()
            if not keep:
                drop_database(admin_dsn(pg_url), db)
    meta["loadavg_end"] = os.getloadavg()
    meta["elapsed_s"] = t_run.s
    problems = [*res["publish"]["problems"], *res["check_initial"]["problems"],
                *res["check_after_publish"]["problems"], *res["check_after_sweep"]["problems"]]
    if not res["sweep"]["dry_run_exact"]:
        problems.append(f"the sweep's dry run found {res['sweep']['dry_run_found']} instances, "
                        f"{len(roles.due)} were due")
    if res["sweep"]["after_sweep_due"]:
        problems.append(f"{res['sweep']['after_sweep_due']} instance(s) still due after the sweep")
    res["problems"] = problems
    res["ok"] = not problems
    findings = []
    for name, d in res["admin"]["pages"].items():
        findings += [{"where": f"admin: {name}", **x} for x in d["scans"] if x["big"]]
    findings += [{"where": "sweep: due query", **x} for x in res["sweep"]["scans"] if x["big"]]
    findings += [{"where": "sweep: next sweep", **x} for x in res["sweep"]["next_sweep"]["scans"] if x["big"]]
    res["scan_findings"] = findings
    return res


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the load suite, print the table, write the JSON; exit 1 when an invariant broke."""
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(prog="python -m bench load", description=DESCRIPTION)
    ap.add_argument("--quick", action="store_true", help="5,000 instances, 200 targets (< 60 s)")
    ap.add_argument("--instances", type=int, default=None, help="waiting instances (default 100,000)")
    ap.add_argument("--targets", type=int, default=None, help="instances the publishers wake (default 1,000)")
    ap.add_argument("--publishers", type=int, default=4)
    ap.add_argument("--workers", type=int, default=2, help="Celery worker processes (pool=solo)")
    ap.add_argument("--due", type=int, default=None, help="due rows of each kind for the sweep (default 100)")
    ap.add_argument("--rate", type=float, default=0.0, help="events/s over all publishers (default: unlimited)")
    ap.add_argument("--timeout", type=float, default=None, help="seconds the workers get to finish")
    ap.add_argument("--db", default=DEFAULT_DB, help=f"PostgreSQL database, dropped and created (default {DEFAULT_DB})")
    ap.add_argument("--broker", default=os.environ.get("DURABLE_LOAD_BROKER", DEFAULT_BROKER),
                    help=f"Redis URL of the Celery broker (default {DEFAULT_BROKER})")
    ap.add_argument("--pg-url", default=DEFAULT_PG_URL, help="PostgreSQL server, as a URL (the database name in it "
                                                             "is ignored; --db names it)")
    ap.add_argument("--keep", action="store_true", help="keep the database after the run (to inspect it)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args(argv)
    cfg = make_config(args)
    res = run(cfg, args.db, args.broker, args.keep, args.pg_url)
    report(res, format_table(res), args.out, check_ok=True)
    return res

