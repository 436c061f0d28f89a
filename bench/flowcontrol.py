"""``python -m bench flow [--quick] [--out PATH]``: the cost of a concurrency limit on PostgreSQL.

What it measures, per instance, on a database of its own (dropped at the end):

* **claim**: what a worker does before it runs anything: the lease's claim
  (``leases._claim``) and, with a limit, the slot it takes (``flowcontrol.admit``).
  The limited program's limit is 10, of which 5 slots are held by other
  instances under live leases during the measurement (a busy limit, not an
  empty one).
* **run**: ``worker.run_instance`` of a one-step program end to end (claim,
  slot, the step's checkpoint, the release, and with a limit the look for a
  waiting instance to wake).

Both variants run in alternating rounds (A, B, A, B...) so that drift on a shared
machine hits both alike; the figure is the median of the rounds. Target: the
limited claim costs at most 1.2x the unlimited one.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from .common.environment import ROOT, drop_database, pg_admin, run_meta
from .common.results import report

DEFAULT_OUT = ROOT / "bench" / "results" / "flow.json"
PG_ADMIN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
TARGET = 1.2
LIMITED = "bench.flow_programs.limited_step"
FREE = "bench.flow_programs.free_step"
SIZES = {"full": {"n": 400, "rounds": 7}, "quick": {"n": 20, "rounds": 2}}


# -- child (Django) ------------------------------------------------------------------------
def _start_many(path: str, n: int) -> list[str]:
    from django.db import connection, transaction

    import durable_django

    with transaction.atomic():
        ids = [durable_django.start(path, k).pk for k in range(n)]
    with connection.cursor() as cur:
        # Statistics, as autovacuum keeps them on a live database (outside the measurement): without them the
        # claim's generic plan (a prepared statement's, after five runs) on this young table scans every pending
        # row by status instead of the primary key, and each round would cost more than the last.
        cur.execute("ANALYZE")
    return ids


def _claims(path: str, n: int) -> tuple[float, int]:
    """Seconds per claim (+ slot) of ``n`` fresh instances of ``path``; each is released before the next."""
    from durable_django import flowcontrol, leases

    ids = _start_many(path, n)
    wid = f"bench-flow-{uuid.uuid4().hex[:8]}"
    spent, ok = 0.0, 0
    for iid in ids:
        t0 = time.perf_counter()
        row = leases._claim(iid, wid)
        admitted = row is not None and flowcontrol.admit(row, wid)
        spent += time.perf_counter() - t0
        ok += bool(admitted)
        leases._release(iid, wid)  # the run's end, outside the measurement: the slot frees with the lease
    return spent / n, ok


def _runs(path: str, n: int) -> tuple[float, int]:
    """Seconds per ``run_instance`` of ``n`` fresh one-step instances of ``path``."""
    from durable_django import worker
    from durable_django.models import DurableInstance, Status

    ids = _start_many(path, n)
    t0 = time.perf_counter()
    for iid in ids:
        worker.run_instance(iid)
    spent = time.perf_counter() - t0
    return spent / n, DurableInstance.objects.filter(pk__in=ids, status=Status.COMPLETED).count()


def _hold_five() -> None:
    """Five instances of the limited program hold a slot each (live leases) during the measurement."""
    from durable_django import flowcontrol, leases

    for iid in _start_many(LIMITED, 5):
        row = leases._claim(iid, "bench-flow-holder")
        assert row is not None and flowcontrol.admit(row, "bench-flow-holder")


def child(size: str, out: Path) -> None:
    from .common.environment import setup_django

    setup_django(settings="bench.django_settings", celery_app=True, migrate=True)
    from django.db import connection

    from durable_django import flowcontrol

    cfg = SIZES[size]
    n = cfg["n"]
    assert flowcontrol.limits_for(LIMITED).concurrency == 10 and flowcontrol.limits_for(FREE) is None
    _claims(FREE, 5), _claims(LIMITED, 5), _runs(FREE, 5), _runs(LIMITED, 5)  # warm-up: statements, caches
    _hold_five()
    res: dict[str, Any] = {"claim": {"free": [], "limited": []}, "run": {"free": [], "limited": []}}
    done = {"claim": 0, "run": 0}
    for _ in range(cfg["rounds"]):
        for part, measure in (("claim", _claims), ("run", _runs)):
            for variant, path in (("free", FREE), ("limited", LIMITED)):
                per, ok = measure(path, n)
                res[part][variant].append(per * 1e6)
                done[part] += ok
    summary: dict[str, Any] = {"n": n, "rounds": cfg["rounds"], "vendor": connection.vendor}
    for part in ("claim", "run"):
        free, limited = (statistics.median(res[part][v]) for v in ("free", "limited"))
        summary[part] = {"free_us": free, "limited_us": limited, "ratio": limited / free,
                         "samples_us": res[part]}
    summary["complete"] = done["claim"] == done["run"] == 2 * n * cfg["rounds"]
    out.write_text(json.dumps(summary, indent=2) + "\n")


# -- parent ------------------------------------------------------------------------------------
def format_table(res: dict[str, Any]) -> str:
    lines = [f"flow control on {res['vendor']} ({res['n']} instances x {res['rounds']} rounds, median of rounds)",
             f"{'':34}{'no limit':>12}{'limit 10':>12}{'ratio':>9}"]
    for part, label in (("claim", "claim (+ slot)"), ("run", "run_instance, one step")):
        p = res[part]
        lines.append(f"{label:34}{p['free_us']:>10.0f}us{p['limited_us']:>10.0f}us{p['ratio']:>8.2f}x")
    verdict = "PASS" if res["claim"]["ratio"] <= TARGET else "MISS"
    lines.append(f"target: claim ratio <= {TARGET}x: {verdict}; every instance admitted and completed: "
                 f"{'yes' if res['complete'] else 'NO'}")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench flow", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes (a smoke run)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    a = ap.parse_args(argv)
    name = f"durable_bench_flow_{uuid.uuid4().hex[:10]}"
    broker = os.environ.get("DURABLE_BENCH_BROKER", "redis://127.0.0.1:6379/9")
    queue = f"durable-bench-flow-{uuid.uuid4().hex[:8]}"
    pg_admin(PG_ADMIN, f'CREATE DATABASE "{name}"')
    tmp = a.out.with_suffix(".child.json")
    env = {**os.environ, "DURABLE_BENCH_DB": "pg", "DURABLE_BENCH_PG_NAME": name, "DURABLE_BENCH_QUEUE": queue,
           "CELERY_BROKER_URL": broker,  # where start()'s wake-ups go, and what is purged at the end
           "DJANGO_SETTINGS_MODULE": "bench.django_settings",
           "DURABLE_BENCH_DURABLE": json.dumps({"LIMITS": {LIMITED: {"concurrency": 10}}}),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    try:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "bench.flowcontrol", "--child", "quick" if a.quick else "full",
                        str(tmp)], cwd=ROOT, env=env, check=True)
        res = json.loads(tmp.read_text())
    finally:
        tmp.unlink(missing_ok=True)
        drop_database(PG_ADMIN, name)
        from .redis_keys import purge_queue

        purge_queue(broker, queue)
    res["meta"] = {**run_meta(), "quick": a.quick, "target_claim_ratio": TARGET}
    res["ok"] = res["complete"]
    report(res, format_table(res), a.out, check_ok=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        child(sys.argv[2], Path(sys.argv[3]))
    else:
        main(sys.argv[1:])
