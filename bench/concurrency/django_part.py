"""Parts 1 and 2 on Django (SQLite, PostgreSQL): a branch's checkpoint with N live branches, and row sizes.

A child process per database sets Django up with the benchmark's settings
(``bench.django_settings``) on a database of its own (a temporary SQLite file,
or a PostgreSQL database created and dropped), migrates it and runs every
instance in the process (``RUN_INLINE``), so the runner's step notes
(:data:`workloads.STAMPS`) are taken with the same clock as in the core. The
sizes are the lengths of the state columns: the instance's row and each
branch's (the app's model with ``branch`` and ``state`` fields). The part is
skipped while the app has no branch storage.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

from ..common.environment import ROOT, drop_database, recreate_database
from ..common.stats import median
from . import workloads
from .measure import SOLO, _rotated, figures, step_gaps_us
from .setup import BRANCHES_TARGET, ConcConfig

SETTINGS = "bench.django_settings"
PG_ADMIN = "postgres://postgres@127.0.0.1:5432/postgres"
#: Why the part is skipped while the app keeps no branch states of its own (the core's fallback, save_state
#: under branch_key, cannot work there: a branch is no instance row the worker holds a lease on).
NO_BRANCHES = "DjangoOrchestrationBackend has no branch storage (save_branch/load_branch) yet"


def run_child(cfg: ConcConfig, db: str, timeout: float = 900.0) -> dict[str, Any]:
    """Run the Django part on ``db`` ("sqlite" or "pg") in a fresh process; its figures, or why it failed."""
    with tempfile.TemporaryDirectory(prefix="durable-conc-") as tmp:
        out = Path(tmp) / "django.json"
        name = f"durable_conc_{uuid.uuid4().hex[:10]}"
        env = {**os.environ, "DJANGO_SETTINGS_MODULE": SETTINGS, "DURABLE_BENCH_DB": db,
               "DURABLE_BENCH_SQLITE": str(Path(tmp) / "bench.sqlite3"), "DURABLE_BENCH_PG_NAME": name,
               "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        cmd = [sys.executable, "-m", "bench.concurrency", "--child", "django", "--json", str(out), "--steps",
               str(cfg.django_steps), "--repeats", str(cfg.django_repeats), "--warmup", str(min(cfg.warmup, 1)),
               "--skip", str(cfg.skip), "--branches", ",".join(map(str, cfg.branches))]
        if db == "pg":
            try:
                recreate_database(PG_ADMIN, name)
            except Exception as exc:
                return {"skipped": f"no PostgreSQL at 127.0.0.1:5432: {exc}"}
        try:
            proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
        finally:
            if db == "pg":
                drop_database(PG_ADMIN, name)
        if proc.returncode != 0 or not out.exists():
            return {"error": f"child exited {proc.returncode}: {(proc.stderr or proc.stdout)[-3000:]}"}
        res: dict[str, Any] = json.loads(out.read_text())
        return res


def _branch_rows() -> tuple[Any, str]:
    """The app's model of branch states and its column naming the branch; (None, "") without one."""
    from django.apps import apps

    for model in apps.get_app_config("durable_django").get_models():
        fields = {f.name for f in model._meta.get_fields()}
        if "state" in fields and "instance" in fields and fields & {"branch", "path"}:
            return model, ("path" if "path" in fields else "branch")
    return None, ""


def _sizes(iid: str) -> dict[str, Any]:
    """Bytes of the instance row's state and of each branch's state of ``iid``."""
    from django.db.models.functions import Length

    from durable_django.models import DurableInstance

    model, path = _branch_rows()
    inst = DurableInstance.objects.filter(pk=iid).annotate(n=Length("state")).values_list("n", flat=True).first()
    if model is not None:
        rows = dict(model.objects.filter(instance_id=iid).annotate(n=Length("state")).values_list(path, "n"))
    else:  # the branch states are somewhere else: only the instance's row is measured
        rows = {}
    return {"instance": inst or 0, "branches": rows}


def child(steps: int, repeats: int, warmup: int, skip: int, branches: list[int]) -> dict[str, Any]:
    """The child's measurement (Django is set up by the caller)."""
    from django.db import connection, reset_queries, transaction
    from django.test import override_settings
    from django.test.utils import CaptureQueriesContext

    import durable_django as dd
    from durable_django.backend import DjangoOrchestrationBackend
    from durable_django.conf import durable_settings
    from durable_django.models import DurableInstance, Status

    if not hasattr(DjangoOrchestrationBackend, "save_branch"):
        return {"skipped": NO_BRANCHES}
    storage = "the app's branch storage (save_branch)"

    def finish(iid: str, n: int, k: int, stop: bool = False) -> None:
        with transaction.atomic():  # one wake-up at the commit, not a run (loading every branch) per event
            for i in range(n - 1):
                dd.publish_event(iid, workloads.event_name(i), i)
            if stop:
                dd.publish_event(iid, "stop", 0)
        inst = DurableInstance.objects.get(pk=iid)
        want = workloads.expected(n, k)
        if inst.status != Status.COMPLETED or dd.result(iid) != want:
            raise AssertionError(f"instance {iid} ({n} branches) ended {inst.status!r} ({inst.error[-800:]!r}), "
                                 f"not completed with {want!r}")

    def one(key: Any, k: int) -> float:
        iid = f"c-{uuid.uuid4().hex[:12]}"
        workloads.STAMPS.clear()
        if key == SOLO:
            dd.start(workloads.solo_program, k, instance_id=iid)
            gaps = step_gaps_us(skip)
            if dd.result(iid) != k * (k - 1) // 2:
                raise AssertionError(f"solo({k}) returned {dd.result(iid)!r}")
        else:
            dd.start(workloads.fan_program, int(key), k, instance_id=iid)
            gaps = step_gaps_us(skip)
            finish(iid, int(key), k)
        if not gaps:
            raise AssertionError(f"variant {key}: the runner noted {len(workloads.STAMPS)} steps of {k}")
        return median(gaps)

    keys: list[Any] = [SOLO, *branches]
    samples: dict[str, list[float]] = {str(key): [] for key in keys}
    with override_settings(DURABLE={**durable_settings.user_settings(), "RUN_INLINE": True}):
        for r in range(warmup + repeats):
            gc.collect()
            for key in _rotated(keys, r):
                us = one(key, steps)
                if r >= warmup:
                    samples[str(key)].append(us)
        # statements per runner step: a paused runner's steps, counted (the slope between k and 2k steps)
        counts = []
        for k in (steps, 2 * steps):
            iid = f"q-{uuid.uuid4().hex[:12]}"
            reset_queries()
            with CaptureQueriesContext(connection) as ctx:
                dd.start(workloads.fan_paused_program, branches[-1], k, instance_id=iid)
            counts.append(len(ctx.captured_queries))
            finish(iid, branches[-1], k, stop=True)
        # row sizes: the runner paused after few and after many steps, 99 other branches paused
        n = branches[-1]
        rows = []
        for k in (max(2, steps // 10), steps):
            iid = f"s-{uuid.uuid4().hex[:12]}"
            dd.start(workloads.fan_paused_program, n, k, instance_id=iid)
            rows.append(_sizes(iid))
            finish(iid, n, k, stop=True)
    fig = {key: figures(v) for key, v in samples.items()}
    lo, hi = str(branches[0]), str(branches[-1])
    ratio = fig[hi]["best"] / fig[lo]["best"]
    runner = f"0.{n - 1}"
    held = [b for path, b in rows[-1]["branches"].items() if path != runner]
    return {
        "db": connection.vendor, "storage": storage, "runner_steps": steps, "repeats": repeats,
        "branches": branches, "us_per_step": fig,
        "ratios": {key: fig[key]["best"] / fig[lo]["best"] for key in fig},
        "ratios_median": {key: fig[key]["median"] / fig[lo]["median"] for key in fig},
        "ratio": ratio, "target": BRANCHES_TARGET, "meets_target": ratio <= BRANCHES_TARGET,
        "statements_per_step": (counts[1] - counts[0]) / steps,
        "rows": {"branches": n, "runner_steps": [max(2, steps // 10), steps],
                 "instance_bytes": rows[-1]["instance"],
                 "instance_bytes_by_steps": [r["instance"] for r in rows],
                 "runner_bytes": {"min": min(r["branches"].get(runner, 0) for r in rows),
                                  "max": max(r["branches"].get(runner, 0) for r in rows),
                                  "by_steps": [r["branches"].get(runner, 0) for r in rows]},
                 "held_bytes_max": max(held, default=0), "held_bytes_total": sum(held),
                 "branch_rows": len(rows[-1]["branches"])},
    }


def child_main(argv: list[str]) -> None:
    """``python -m bench.concurrency --child django --json PATH --steps N --repeats R --warmup W --skip S
    --branches 1,10,100``."""
    import argparse

    from ..common.environment import setup_django

    ap = argparse.ArgumentParser()
    ap.add_argument("--child", required=True, choices=["django"])
    ap.add_argument("--json", type=Path, required=True)
    ap.add_argument("--steps", type=int, required=True)
    ap.add_argument("--repeats", type=int, required=True)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--skip", type=int, default=3)
    ap.add_argument("--branches", required=True)
    a = ap.parse_args(argv)
    setup_django(settings=SETTINGS, migrate=True)
    res = child(max(a.steps, a.skip + 3), a.repeats, a.warmup, a.skip, [int(b) for b in a.branches.split(",")])
    a.json.write_text(json.dumps(res, default=str))
