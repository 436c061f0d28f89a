"""Part (b) on Django/SQLite: checkpoint history on against off, in a child process of its own.

The child sets Django up with the benchmark's settings (``bench.django_settings``,
``DURABLE_BENCH_DB=sqlite``) on a temporary SQLite file, migrates it, and runs
each history variant in the process (``RUN_INLINE``): µs per checkpoint is
``(run of n steps - run of 1 step) / (n - 1)``, so the start and the end of
an instance are left out. Bytes per stored checkpoint are the lengths of the
``DurableCheckpoint`` rows' state blobs.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from ..common.environment import ROOT
from ..common.stats import median
from . import workloads
from .setup import FailuresConfig

SETTINGS = "bench.django_settings"
#: Why the part is skipped while the Django backend keeps no checkpoint history.
NO_HISTORY = "DjangoOrchestrationBackend keeps no checkpoint history (no list_checkpoints/load_checkpoint)"


def run_child(cfg: FailuresConfig, timeout: float = 600.0) -> dict[str, Any]:
    """Run the Django part in a fresh process on a temporary SQLite file; its figures, or why it was skipped."""
    with tempfile.TemporaryDirectory(prefix="durable-failures-") as tmp:
        out = Path(tmp) / "django.json"
        env = {**os.environ, "DJANGO_SETTINGS_MODULE": SETTINGS, "DURABLE_BENCH_DB": "sqlite",
               "DURABLE_BENCH_SQLITE": str(Path(tmp) / "bench.sqlite3"), "PYTHONPATH": str(ROOT)}
        cmd = [sys.executable, "-m", "bench.failures", "--child", "django", "--json", str(out),
               "--steps", str(cfg.django_steps), "--repeats", str(cfg.django_repeats), "--warmup",
               str(min(cfg.warmup, 1))]
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0 or not out.exists():
            return {"skipped": f"child exited {proc.returncode}: {(proc.stderr or proc.stdout)[-2000:]}"}
        res: dict[str, Any] = json.loads(out.read_text())
        return res


def child(steps: int, repeats: int, warmup: int) -> dict[str, Any]:
    """The child's measurement (Django is set up by the caller)."""
    from django.db.models.functions import Length
    from django.test import override_settings

    import durable_django as dd
    from durable.history import supports_history
    from durable_django.backend import DjangoOrchestrationBackend
    from durable_django.conf import durable_settings
    from durable_django.models import DurableInstance, Status

    try:
        from durable_django.models import DurableCheckpoint
    except ImportError:
        return {"skipped": "durable_django has no DurableCheckpoint model (checkpoint history not there yet)"}
    if not supports_history(DjangoOrchestrationBackend):
        return {"skipped": NO_HISTORY}

    def run(program: Any, n: int) -> tuple[float, str]:
        iid = uuid.uuid4().hex
        t0 = time.perf_counter()
        dd.start(program, n, instance_id=iid)
        dt = time.perf_counter() - t0
        status = DurableInstance.objects.filter(pk=iid).values_list("status", flat=True).first()
        if status != Status.COMPLETED or dd.result(iid) != workloads.expected(n):
            raise AssertionError(f"{program!r}({n}) ended {status!r}, not completed with the expected result")
        return dt, iid

    keys = list(workloads.HISTORY_VARIANTS)
    samples: dict[str, list[float]] = {k: [] for k in keys}
    last: dict[str, str] = {}
    with override_settings(DURABLE={**durable_settings.user_settings(), "RUN_INLINE": True}):
        for r in range(warmup + repeats):
            gc.collect()
            shift = r % len(keys)
            for key in keys[shift:] + keys[:shift]:
                program = workloads.HISTORY_VARIANTS[key]
                long_s, last[key] = run(program, steps)
                short_s, _ = run(program, 1)
                if r >= warmup:
                    samples[key].append((long_s - short_s) / (steps - 1) * 1e6)
    sizes = list(DurableCheckpoint.objects.filter(instance_id=last["all"]).annotate(n=Length("state"))
                 .values_list("n", flat=True))
    kept = {k: DurableCheckpoint.objects.filter(instance_id=iid).count() for k, iid in last.items()}
    state_bytes = DurableInstance.objects.filter(pk=last["off"]).annotate(n=Length("state")).values_list(
        "n", flat=True).first()
    best = {k: min(v) for k, v in samples.items()}
    return {
        "db": "sqlite", "n_steps": steps, "repeats": repeats,
        "us_per_step": {k: {"best": best[k], "median": median(v), "samples": v} for k, v in samples.items()},
        "ratio_10": best["10"] / best["off"], "ratio_all": best["all"] / best["off"],
        "kept": kept, "history_bytes_per_checkpoint": median([float(s) for s in sizes]) if sizes else None,
        "history_blobs": len(sizes), "state_blob_bytes": state_bytes,
    }


def child_main(argv: list[str]) -> None:
    """``python -m bench.failures --child django --json PATH --steps N --repeats R --warmup W``."""
    import argparse

    from ..common.environment import setup_django

    ap = argparse.ArgumentParser()
    ap.add_argument("--child", required=True, choices=["django"])
    ap.add_argument("--json", type=Path, required=True)
    ap.add_argument("--steps", type=int, required=True)
    ap.add_argument("--repeats", type=int, required=True)
    ap.add_argument("--warmup", type=int, default=1)
    a = ap.parse_args(argv)
    setup_django(settings=SETTINGS, migrate=True)
    res = child(max(a.steps, 2), a.repeats, a.warmup)
    a.json.write_text(json.dumps(res, default=str))
