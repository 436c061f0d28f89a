"""``python -m bench progress [--quick] [--db sqlite|pg|both] [--out PATH]``: what ``durable.set_status`` costs.

The cost of a checkpointed step on the Django backend, three programs interleaved in one run (see
docs/progress.md): ``plain`` (no status), ``same`` (``set_status`` at every step with an unchanged value: the
call, but no column written) and ``changed`` (a new status at every step: the ``progress`` JSON column is in
every checkpoint's UPDATE, the worst case). Each figure is the median over repeats of (time of an
``n``-step run - time of a 1-step run) / (n - 1), run inline (``RUN_INLINE``) as in ``bench django``'s step
part. Each run is checked: completed, right result, the last status in the column.

The parent runs one child per database (``python -m bench.progress_bench --child sqlite|pg``): a SQLite
file in a temporary folder, and a PostgreSQL database of its own on 127.0.0.1 (created and dropped).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import durable

from .common.environment import ROOT, drop_database, recreate_database, run_meta
from .common.results import report
from .common.stats import median
from .workloads import step

DEFAULT_OUT = ROOT / "bench" / "results" / "progress.json"
VARIANTS = ("plain", "same", "changed")
SIZES = {"quick": {"sqlite": 40, "pg": 40, "repeats": 3, "warmup": 1},
         "full": {"sqlite": 400, "pg": 300, "repeats": 15, "warmup": 2}}


# -- the programs (the allowlist of bench/django_settings.py takes "bench." paths) ------------------
async def plain(n: int) -> int:
    acc = 0
    for i in range(n):
        acc = await step(acc, i)
    return acc


async def same(n: int) -> int:
    acc = 0
    for i in range(n):
        durable.set_status({"stage": "working", "total": n})
        acc = await step(acc, i)
    return acc


async def changed(n: int) -> int:
    acc = 0
    for i in range(n):
        durable.set_status({"stage": "working", "percent": 100 * i // n, "done": i, "total": n})
        acc = await step(acc, i)
    return acc


def _expected_status(variant: str, n: int) -> Any:
    return {"plain": None, "same": {"stage": "working", "total": n},
            "changed": {"stage": "working", "percent": 100 * (n - 1) // n, "done": n - 1, "total": n}}[variant]


# -- the child (Django set up on one database) -----------------------------------------------------
def _run(variant: str, n: int) -> float:
    """Seconds for ``start(variant, n)`` run to completion in this process, checked."""
    import durable_django as dd
    from durable_django.models import DurableInstance, Status

    iid = uuid.uuid4().hex
    t0 = time.perf_counter()
    dd.start(f"bench.progress_bench.{variant}", n, instance_id=iid)
    dt = time.perf_counter() - t0
    row = DurableInstance.objects.filter(pk=iid).values_list("status", "progress", "result").first()
    if row is None or row[0] != Status.COMPLETED or row[2] != n * (n - 1) // 2:
        raise AssertionError(f"{variant}({n}) {iid} ended as {row!r}")
    if row[1] != _expected_status(variant, n):
        raise AssertionError(f"{variant}({n}) {iid}: progress column {row[1]!r}")
    return dt


def child(db: str, quick: bool) -> dict[str, Any]:
    import gc

    from django.db import connection
    from django.test import override_settings

    from durable_django.conf import durable_settings

    size = SIZES["quick" if quick else "full"]
    n = size[db]
    per_step: dict[str, list[float]] = {v: [] for v in VARIANTS}
    with override_settings(DURABLE={**durable_settings.user_settings(), "RUN_INLINE": True}):
        for r in range(size["warmup"] + size["repeats"]):
            gc.collect()
            order = VARIANTS[r % 3:] + VARIANTS[:r % 3]  # interleaved, rotating: drift hits all alike
            for v in order:
                long, short = _run(v, n), _run(v, 1)
                if r >= size["warmup"]:
                    per_step[v].append((long - short) / (n - 1) * 1e6)
    res: dict[str, Any] = {"db": db, "vendor": connection.vendor, "n_steps": n, "repeats": size["repeats"],
                           "samples_us": per_step}
    for v in VARIANTS:
        res[f"{v}_us"] = median(per_step[v])
        res[f"{v}_best_us"] = min(per_step[v])  # on a busy machine the least disturbed repeat says more
    res["ratio_same"] = res["same_us"] / res["plain_us"]
    res["ratio_changed"] = res["changed_us"] / res["plain_us"]
    res["ratio_same_best"] = res["same_best_us"] / res["plain_best_us"]
    res["ratio_changed_best"] = res["changed_best_us"] / res["plain_best_us"]
    return res


def child_main(argv: list[str]) -> None:
    from .common.environment import setup_django

    ap = argparse.ArgumentParser()
    ap.add_argument("--child", required=True, choices=["sqlite", "pg"])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", type=Path, required=True)
    a = ap.parse_args(argv)
    setup_django(migrate=True)
    a.json.write_text(json.dumps(child(a.child, a.quick), indent=2) + "\n")


# -- the parent (no Django) ------------------------------------------------------------------------
def run(quick: bool, dbs: tuple[str, ...]) -> dict[str, Any]:
    pg_name = f"durable_bench_progress_{uuid.uuid4().hex[:8]}"
    pg_dsn = "host=127.0.0.1 port=5432 user=postgres dbname={}"
    res: dict[str, Any] = {"meta": {**run_meta(), "quick": quick, "sizes": SIZES["quick" if quick else "full"]}}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="durable-progress-bench-") as tmpdir:
        tmp = Path(tmpdir)
        for db in dbs:
            if db == "pg":
                recreate_database(pg_dsn.format("postgres"), pg_name)
            out = tmp / f"{db}.json"
            env = {**os.environ, "DJANGO_SETTINGS_MODULE": "bench.django_settings", "DURABLE_BENCH_DB": db,
                   "DURABLE_BENCH_SQLITE": str(tmp / "bench.sqlite3"), "DURABLE_BENCH_PG_NAME": pg_name}
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
            cmd = [sys.executable, "-m", "bench.progress_bench", "--child", db, "--json", str(out)]
            print(f"  running progress on {db} ...", file=sys.stderr, flush=True)
            try:
                proc = subprocess.run(cmd + (["--quick"] if quick else []), cwd=ROOT, env=env)
            finally:
                if db == "pg":
                    drop_database(pg_dsn.format("postgres"), pg_name)
            if proc.returncode != 0:
                raise RuntimeError(f"the progress benchmark on {db} failed (exit {proc.returncode})")
            res[db] = json.loads(out.read_text())
    res["meta"]["elapsed_s"] = time.perf_counter() - t0
    return res


def format_table(res: dict[str, Any]) -> str:
    lines = ["durable.set_status: µs per checkpointed step, ratio to no status (median; best of the repeats)",
             f"{'db':>8}{'figure':>8}{'plain':>12}{'same':>12}{'changed':>12}{'same/plain':>12}{'chg/plain':>12}"]
    for db in ("sqlite", "pg"):
        r = res.get(db)
        for label, sfx in (("median", ""), ("best", "_best")):
            if r:
                lines.append(f"{db:>8}{label:>8}{r[f'plain{sfx}_us']:>12.1f}{r[f'same{sfx}_us']:>12.1f}"
                             f"{r[f'changed{sfx}_us']:>12.1f}{r[f'ratio_same{sfx}']:>12.3f}"
                             f"{r[f'ratio_changed{sfx}']:>12.3f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(prog="python -m bench progress", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, a smoke run")
    ap.add_argument("--db", choices=["sqlite", "pg", "both"], default="both")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON output (default {DEFAULT_OUT})")
    args = ap.parse_args(argv)
    res = run(args.quick, ("sqlite", "pg") if args.db == "both" else (args.db,))
    report(res, format_table(res), args.out)
    return res


if __name__ == "__main__":
    if "--child" in sys.argv:
        child_main(sys.argv[1:])
    else:
        main(sys.argv[1:])
