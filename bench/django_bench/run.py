"""Running the Django benchmark: the parent (no Django: a database of its own, one child process per part,
the JSON, the table) and the child (``python -m bench.django_bench --child PART --db pg|sqlite``)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..common.environment import (
    ROOT,
    drop_database,
    git_revision,
    pg_admin,
    recreate_database,
    run_meta,
    setup_django,
    versions,
)
from ..common.results import report
from ..redis_keys import purge_queue
from .latency import part_latency
from .report import format_table
from .setup import BROKER, FULL, PG_DB, PG_DSN, QUICK
from .steps import part_steps
from .throughput import part_throughput

DEFAULT_OUT = ROOT / "bench" / "results" / "django.json"
DESCRIPTION = "Benchmarks of durable_django: checkpoint cost, publish-to-running latency, throughput."
#: Packages whose versions the JSON records.
VERSIONS = ("django", "celery", "kombu", "redis", "psycopg", "asgiref", "durable-django")


def child_main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--child", required=True, choices=["steps", "latency", "throughput"])
    ap.add_argument("--db", required=True, choices=["pg", "sqlite"])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--json", type=Path, required=True)
    ap.add_argument("--logdir", type=Path, required=True)
    a = ap.parse_args(argv)
    cfg = QUICK if a.quick else FULL
    setup_django(migrate=True)
    t0 = time.perf_counter()
    if a.child == "steps":
        res = part_steps(cfg, a.db)
    elif a.child == "latency":
        res = part_latency(cfg, a.db, a.logdir)
    else:
        res = part_throughput(cfg, a.db, a.logdir, a.profile)
    res["elapsed_s"] = time.perf_counter() - t0
    a.json.write_text(json.dumps(res, indent=2, default=str) + "\n")


# =============================================================================
# Parent side (no Django here)
# =============================================================================
def _settle_pg() -> None:
    """``CHECKPOINT`` before a part: the previous part's dirty pages are written now, not by the
    background checkpointer in the middle of the next part's commits."""
    pg_admin(PG_DSN.format("postgres"), "CHECKPOINT")


def _run_child(part: str, db: str, quick: bool, tmp: Path, profile: bool = False) -> dict[str, Any]:
    out = tmp / f"{part}-{db}.json"
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "bench.django_settings", "DURABLE_BENCH_DB": db,
           "DURABLE_BENCH_SQLITE": str(tmp / "bench.sqlite3"), "DURABLE_BENCH_BROKER": BROKER,
           "CELERY_BROKER_URL": BROKER, "DURABLE_BENCH_QUEUE": f"durable-bench-{uuid.uuid4().hex[:8]}"}
    env["DURABLE_BENCH_RUN"] = env["DURABLE_BENCH_QUEUE"]  # names the notes (variant queues extend the name)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    cmd = [sys.executable, "-m", "bench.django_bench", "--child", part, "--db", db, "--json", str(out),
           "--logdir", str(tmp)]
    if quick:
        cmd.append("--quick")
    if profile:
        cmd.append("--profile")
    print(f"  running {part} on {db} ...", file=sys.stderr, flush=True)
    _settle_pg()
    proc = subprocess.run(cmd, cwd=ROOT, env=env)
    _cleanup_queue(env["DURABLE_BENCH_QUEUE"])
    if proc.returncode != 0:
        logs = "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-2000:]}" for p in tmp.glob("bw*.log"))
        raise RuntimeError(f"benchmark part {part} on {db} failed (exit {proc.returncode})\n{logs}")
    return json.loads(out.read_text())


def _cleanup_queue(queue: str) -> None:
    purge_queue(BROKER, queue)  # the queue, kombu's bindings of it, our notes (see django_programs.note_key)


def run(quick: bool = False, profile: bool = False) -> dict[str, Any]:
    t0 = time.perf_counter()
    cfg = QUICK if quick else FULL
    recreate_database(PG_DSN.format("postgres"), PG_DB)
    meta = {**run_meta(), "git": git_revision(), "quick": quick, "config": asdict(cfg),
            "versions": versions(VERSIONS, pg_dsn=PG_DSN.format("postgres"), broker=BROKER, sqlite=True),
            "loadavg_start": os.getloadavg()}
    res: dict[str, Any] = {"meta": meta}
    try:
        with tempfile.TemporaryDirectory(prefix="durable-django-bench-") as tmpdir:
            tmp = Path(tmpdir)
            if profile:
                res["throughput"] = _run_child("throughput", "pg", quick, tmp, profile=True)
                for v, text in res["throughput"]["profile"].items():
                    print(f"===== cProfile of the 2 workers, variant {v} =====\n{text}")
                return res
            res["steps_pg"] = _run_child("steps", "pg", quick, tmp)
            res["steps_sqlite"] = _run_child("steps", "sqlite", quick, tmp)
            res["latency"] = _run_child("latency", "pg", quick, tmp)
            res["throughput"] = _run_child("throughput", "pg", quick, tmp)
    finally:
        drop_database(PG_DSN.format("postgres"), PG_DB)
    meta["elapsed_s"] = time.perf_counter() - t0
    meta["loadavg_end"] = os.getloadavg()
    return res


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(prog="python -m bench django", description=DESCRIPTION)
    ap.add_argument("--quick", action="store_true", help="small sizes, a smoke run (< 60 s)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON output (default {DEFAULT_OUT})")
    ap.add_argument("--profile", action="store_true",
                    help="run the throughput part with every worker under cProfile and print the profiles")
    args = ap.parse_args(argv)
    res = run(quick=args.quick, profile=args.profile)
    if args.profile:
        return res
    report(res, format_table(res), args.out)
    return res


