"""Running the fault suite: a scenario's private services, database and Django, the suite, its meta, the CLI."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from ..common.environment import ROOT, drop_database, setup_django
from ..common.results import report
from ..private_postgres import PrivatePostgres
from .partition import format_table as partition_table
from .partition import run_partition
from .report import format_table
from .setup import DEFAULT_OUT, PG_ADMIN_DSN, SETTINGS, FaultConfig, PrivateRedis, create_database, run_meta_of
from .suite import Suite

DESCRIPTION = "Fault injection: killed workers, a restarted broker, sweeps; then every invariant is checked."


def run_suite(cfg: FaultConfig) -> dict[str, Any]:
    """Run the fault-injection suite once and return its counts and verdict (``ok``, ``problems``)."""
    if cfg.scenario == "partition":
        return run_partition(cfg)
    workdir = Path(cfg.workdir or tempfile.mkdtemp(prefix="durable-faults-"))
    workdir.mkdir(parents=True, exist_ok=True)
    redis = PrivateRedis(workdir)
    pg = None
    if cfg.db_restarts:  # a server of our own to restart, never the shared one
        if cfg.db != "pg":
            raise ValueError("database restarts need --db pg")
        pg = PrivatePostgres()
        pg.start()
        pg.admin(f'CREATE DATABASE "{cfg.pg_name}"')
        os.environ["DURABLE_FAULTS_PG_PORT"] = str(pg.port)
    try:
        res = _run_suite(cfg, workdir, redis, pg)
    finally:
        if pg is not None:
            pg.cleanup()
    res["meta"] = run_meta_of(cfg, redis, workdir)
    return res


def _run_suite(cfg: FaultConfig, workdir: Path, redis: PrivateRedis, pg: PrivatePostgres | None) -> dict[str, Any]:
    sqlite_path = workdir / "faults.sqlite3"
    os.environ.update(DURABLE_FAULTS_DB=cfg.db, DURABLE_FAULTS_PG_NAME=cfg.pg_name,
                      DURABLE_FAULTS_SQLITE=str(sqlite_path), DURABLE_FAULTS_BROKER=redis.url,
                      DURABLE_FAULTS_LEASE=str(cfg.lease), DURABLE_FAULTS_VISIBILITY=str(cfg.visibility),
                      DURABLE_FAULTS_STEP_MS=str(cfg.step_ms))
    if pg is None:
        create_database(cfg, sqlite_path)
    setup_django(settings=SETTINGS)
    from django.core.management import call_command

    call_command("migrate", verbosity=0, interactive=False)
    redis.start()
    suite = Suite(cfg, workdir, redis, pg)
    try:
        return suite.run()
    finally:
        suite.stop_all()
        redis.stop()
        from django.db import connections

        connections.close_all()
        if cfg.drop_db and cfg.db == "pg" and pg is None:
            drop_database(PG_ADMIN_DSN, cfg.pg_name)


#: ``--scenario``: (default instances, quick instances, output file stem)
SCENARIOS = {"kills": (500, 60, "faults"), "db-restart": (200, 40, "faults-db-restart"),
             "partition": (0, 0, "faults-partition")}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(prog="python -m bench faults", description=DESCRIPTION)
    ap.add_argument("--scenario", choices=(*SCENARIOS, "all"), default="kills",
                    help="kills: SIGKILLed workers and a broker restart (default); db-restart: a private "
                         "PostgreSQL server stopped and started while 200 instances run; partition: one worker's "
                         "database link cut mid-step (bench/faults/partition.py); all: the three in turn")
    ap.add_argument("--quick", action="store_true", help="CI size: 60 instances, 3 kills, 150 s deadline "
                    "(db-restart: 40 instances, 1 restart; partition: 2 cuts)")
    ap.add_argument("--instances", type=int, default=None, help="instances to run (default 500; quick 60)")
    ap.add_argument("--workers", type=int, default=2, help="Celery worker processes (default 2)")
    ap.add_argument("--kills", type=int, default=None, help="worker SIGKILLs (default 12; quick 3)")
    ap.add_argument("--db-restarts", type=int, default=None, help="db-restart: stops and starts (default 2; quick 1)")
    ap.add_argument("--db-outage", type=float, default=2.0, help="db-restart: seconds the server stays down")
    ap.add_argument("--cuts", type=int, default=None, help="partition: link cuts (default 4; quick 2)")
    ap.add_argument("--db", choices=("pg", "sqlite"), default="pg")
    ap.add_argument("--pg-name", default="durable_faults", help="PostgreSQL database (dropped and created)")
    ap.add_argument("--drop", action="store_true", help="drop the PostgreSQL database afterwards")
    ap.add_argument("--no-broker-restart", action="store_true")
    ap.add_argument("--deadline", type=float, default=None, help="seconds (default 900; quick 150)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--workdir", type=Path, default=None, help="logs and the SQLite file (default: a temp dir)")
    ap.add_argument("--out", type=Path, default=None, help=f"JSON output (default {DEFAULT_OUT})")
    args = ap.parse_args(argv)
    if args.scenario == "all":
        if args.out is not None:
            ap.error("--out names one file: run the scenarios one by one")
        results = {}
        for name in SCENARIOS:  # each in a process of its own: Django is configured once per process
            rest = [a for a in (argv if argv is not None else sys.argv[2:]) if a not in ("--scenario", "all")]
            proc = subprocess.run([sys.executable, "-m", "bench", "faults", "--scenario", name, *rest], cwd=ROOT)
            results[name] = proc.returncode
        if any(results.values()):
            raise SystemExit(1)
        return results
    default_n, quick_n, stem = SCENARIOS[args.scenario]
    kills_plan = args.scenario == "kills"
    kills = args.kills if args.kills is not None else (0 if not kills_plan else 3 if args.quick else 12)
    cfg = FaultConfig(instances=args.instances or (quick_n if args.quick else default_n), workers=args.workers,
                      kills=kills,
                      db=args.db, pg_name=args.pg_name, broker_restart=kills_plan and not args.no_broker_restart,
                      deadline=args.deadline or ((150.0 if args.quick else 900.0) if kills_plan else
                                                 (100.0 if args.quick else 400.0)),
                      seed=args.seed, drop_db=args.drop, workdir=args.workdir, quick=args.quick,
                      scenario=args.scenario, lease=2.0 if args.scenario == "partition" else 3.0,
                      db_restarts=(args.db_restarts if args.db_restarts is not None else 1 if args.quick else 2)
                      if args.scenario == "db-restart" else 0, db_outage_seconds=args.db_outage,
                      cuts=(args.cuts if args.cuts is not None else 2 if args.quick else 4)
                      if args.scenario == "partition" else 0)
    res = run_suite(cfg)
    table = partition_table(res) if args.scenario == "partition" else format_table(res)
    out = args.out or DEFAULT_OUT.with_name(f"{stem}-quick.json" if args.quick else f"{stem}.json")
    report(res, table, out, check_ok=True)
    return res
