"""Part 3: 1,000 children of one parent against 1,000 independent instances, through Celery on PostgreSQL.

A child process (Django set up there, never in the caller, which may be a
test process with settings of its own) creates a database of its own, starts
``workers`` Celery workers (``pool=solo``, the Django benchmark's "reuse"
variant: each keeps its database connection) on a queue of its own, and runs
rounds; each round runs both variants, alternating which goes first:

* **children**: ``dd.start(fan_out, n, steps)``: the parent starts ``n``
  children (``durable.start_children``, one checkpoint for all) running
  :func:`workloads.work`, then waits for all of them with one ``gather``; the
  time from the start until the parent completed;
* **independent**: ``n`` instances of the same :func:`workloads.work` started
  with ``dd.start`` in one transaction (the app's batched wake-ups); the time
  from the start until the last one completed.

Both are polled the same way (every 20 ms). Results are checked: the parent's
sum, the independent instances' sum, and no failed instance. The figure of a
variant is its best (and median) round; the ratio uses the best ones.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from ..common.environment import ROOT, drop_database, recreate_database, setup_django
from ..common.processes import wait_for
from ..common.stats import median
from ..redis_keys import purge_queue
from . import workloads
from .setup import FANOUT_TARGET, ConcConfig

PG_ADMIN = "postgres://postgres@127.0.0.1:5432/postgres"
BROKER = os.environ.get("DURABLE_BENCH_BROKER", "redis://127.0.0.1:6379/9")
VARIANT = "reuse"
#: Why the part is skipped while the app cannot start children itself.
NO_CHILDREN = "DjangoOrchestrationBackend has no start_child hook yet (children would run inline in the parent)"


def run_fanout(cfg: ConcConfig, timeout: float = 1800.0) -> dict[str, Any]:
    """Run part 3 in a fresh process on a database and a queue of its own; its figures, or why it did not run."""
    name = f"durable_conc_{uuid.uuid4().hex[:10]}"
    queue = f"durable-conc-{uuid.uuid4().hex[:10]}"
    try:
        recreate_database(PG_ADMIN, name)
    except Exception as exc:
        return {"skipped": f"no PostgreSQL at 127.0.0.1:5432: {exc}"}
    with tempfile.TemporaryDirectory(prefix="durable-conc-") as tmp:
        out = Path(tmp) / "fanout.json"
        env = {**os.environ, "DJANGO_SETTINGS_MODULE": "bench.django_settings", "DURABLE_BENCH_DB": "pg",
               "DURABLE_BENCH_PG_NAME": name, "DURABLE_BENCH_BROKER": BROKER, "CELERY_BROKER_URL": BROKER,
               "DURABLE_BENCH_QUEUE": queue, "DURABLE_BENCH_RUN": queue,
               "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        cmd = [sys.executable, "-m", "bench.concurrency", "--child", "fanout", "--json", str(out), "--children",
               str(cfg.children), "--steps", str(cfg.child_steps), "--workers", str(cfg.workers), "--repeats",
               str(cfg.fanout_rounds), "--logdir", tmp]
        try:
            proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
        finally:
            drop_database(PG_ADMIN, name)
            _purge(queue)
        if proc.returncode != 0 or not out.exists():
            return {"error": f"child exited {proc.returncode}: {(proc.stderr or proc.stdout)[-3000:]}"}
        res: dict[str, Any] = json.loads(out.read_text())
        return res


def _purge(queue: str) -> None:
    try:
        for q in (queue, f"{queue}-{VARIANT}"):
            purge_queue(BROKER, q)
    except Exception as exc:  # Redis gone: nothing of this run's is left to purge there
        print(f"  [concurrency] could not purge {queue}: {exc}", file=sys.stderr)


def _failed(prefix: str) -> list[tuple[str, str, str]]:
    from durable_django.models import DurableInstance, Status

    return list(DurableInstance.objects.filter(pk__startswith=prefix, status__in=(
        Status.FAILED, Status.CANCELLED, Status.SUSPENDED)).values_list("pk", "status", "error")[:3])


def _done(prefix: str, count: int, workers: Any) -> bool:
    from durable_django.models import DurableInstance, Status

    workers.check()
    bad = _failed(prefix)
    if bad:
        raise AssertionError(f"instances of {prefix!r} did not complete: {bad}")
    return DurableInstance.objects.filter(pk__startswith=prefix, status=Status.COMPLETED).count() >= count


def _phases(parent: str, prefix: str) -> dict[str, float]:
    """Where a fan-out's time went, from the rows' timestamps (s): the parent starting its children (its
    creation to the last child's), the children's ends after the last start, the parent's end after theirs."""
    from django.db.models import Max

    from durable_django.models import DurableInstance

    row = DurableInstance.objects.filter(pk=parent).values("created_at", "finished_at").get()
    kids = DurableInstance.objects.filter(pk__startswith=prefix).exclude(pk=parent).aggregate(
        started=Max("created_at"), ended=Max("finished_at"))
    return {"spawn_s": (kids["started"] - row["created_at"]).total_seconds(),
            "children_after_spawn_s": (kids["ended"] - kids["started"]).total_seconds(),
            "parent_after_children_s": (row["finished_at"] - kids["ended"]).total_seconds()}


def _children(n: int, steps: int, workers: Any, timeout: float, phases: list[dict[str, float]]) -> float:
    """Seconds from the parent's start to its end (its phases appended to ``phases``); the parent's result
    and its children checked."""
    import durable_django as dd

    from ..django_bench.setup import durable_queue

    iid = f"p{uuid.uuid4().hex[:10]}"
    t0 = time.perf_counter()
    with durable_queue(VARIANT):
        dd.start(workloads.fan_out_program, n, steps, instance_id=iid)
    wait_for(lambda: _done(iid, 1 + n, workers), timeout, f"the parent {iid} and its {n} children", interval=0.02)
    took = time.perf_counter() - t0
    got, want = dd.result(iid), workloads.fan_out_expected(n, steps)
    if got != want:
        raise AssertionError(f"fan_out({n}, {steps}) returned {got!r}, expected {want!r}")
    phases.append(_phases(iid, iid))
    return took


def _independent(n: int, steps: int, workers: Any, timeout: float, _phases: list[dict[str, float]]) -> float:
    """Seconds from the first start to the last instance's end; their results checked."""
    from django.db import transaction

    import durable_django as dd
    from durable_django.models import DurableInstance

    from ..django_bench.setup import durable_queue

    prefix = f"i{uuid.uuid4().hex[:10]}-"
    t0 = time.perf_counter()
    with durable_queue(VARIANT), transaction.atomic():
        for i in range(n):
            dd.start(workloads.work_program, i, steps, instance_id=f"{prefix}{i}")
    wait_for(lambda: _done(prefix, n, workers), timeout, f"{n} independent instances", interval=0.02)
    took = time.perf_counter() - t0
    results: list[Any] = [inst.result for inst in DurableInstance.objects.filter(pk__startswith=prefix).only("result")]
    got = sum(results)
    if got != workloads.fan_out_expected(n, steps):
        raise AssertionError(f"{n} independent instances sum to {got!r}, not {workloads.fan_out_expected(n, steps)!r}")
    return took


def child(n: int, steps: int, workers_n: int, rounds: int, logdir: Path) -> dict[str, Any]:
    """The child's measurement (Django and Celery are set up by the caller)."""
    from durable_django.backend import DjangoOrchestrationBackend

    from ..django_bench.setup import Workers

    if not hasattr(DjangoOrchestrationBackend, "start_child"):
        return {"skipped": NO_CHILDREN}
    timeout = 120 + n * steps * 0.2
    samples: dict[str, list[float]] = {"children": [], "independent": []}
    phases: list[dict[str, float]] = []
    workers = Workers(logdir)
    try:
        workers.start_variant(workers_n, VARIANT)
        _independent(min(n, 50), steps, workers, timeout, [])  # warm-up: imports, connections, prepared statements
        _children(min(n, 50), steps, workers, timeout, [])
        for r in range(rounds):
            order = ["children", "independent"] if r % 2 == 0 else ["independent", "children"]
            for key in order:
                run = _children if key == "children" else _independent
                samples[key].append(run(n, steps, workers, timeout, phases))
    finally:
        workers.stop()
    best = {k: min(v) for k, v in samples.items()}
    ratio = best["children"] / best["independent"]
    return {
        "n_children": n, "child_steps": steps, "workers": workers_n, "rounds": rounds,
        **{k: {"best": best[k], "median": median(v), "samples": v} for k, v in samples.items()},
        "ratio": ratio, "ratio_median": median(samples["children"]) / median(samples["independent"]),
        "target": FANOUT_TARGET, "meets_target": ratio <= FANOUT_TARGET,
        "phases": phases, "phases_best": phases[samples["children"].index(best["children"])],
    }


def child_main(argv: list[str]) -> None:
    """``python -m bench.concurrency --child fanout --json PATH --children N --steps S --workers W --repeats R
    --logdir DIR``."""
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("--child", required=True, choices=["fanout"])
    ap.add_argument("--json", type=Path, required=True)
    ap.add_argument("--children", type=int, required=True)
    ap.add_argument("--steps", type=int, required=True)
    ap.add_argument("--workers", type=int, required=True)
    ap.add_argument("--repeats", type=int, required=True)
    ap.add_argument("--logdir", type=Path, required=True)
    a = ap.parse_args(argv)
    setup_django(celery_app=True, migrate=True)
    res = child(a.children, a.steps, a.workers, a.repeats, a.logdir)
    a.json.write_text(json.dumps(res, default=str))
