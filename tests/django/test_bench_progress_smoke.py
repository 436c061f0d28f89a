"""Smoke run of the progress benchmark (``python -m bench progress --quick``): it runs, every durable run in it
completes with the right result and the right ``progress`` column (the benchmark checks each one), and its
JSON holds every figure. Speeds are not asserted here.

SQLite always; PostgreSQL too in the PostgreSQL pass of ``make test`` (the benchmark creates and drops a
database of its own on 127.0.0.1:5432).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.timeout(300)]


def test_quick_progress_bench_runs_and_reports_every_figure(tmp_path):
    out = tmp_path / "progress.json"
    pg = os.environ.get("DATABASE_URL", "").startswith(("postgres://", "postgresql://"))
    env = {k: v for k, v in os.environ.items() if k not in ("DJANGO_SETTINGS_MODULE", "DATABASE_URL")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.run([sys.executable, "-m", "bench", "progress", "--quick", "--db", "both" if pg else "sqlite",
                           "--out", str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}"
    res = json.loads(out.read_text())
    for db in ("sqlite", "pg") if pg else ("sqlite",):
        r = res[db]
        for v in ("plain", "same", "changed"):
            # (a difference of two timings: a quick run on a busy machine may even make it negative)
            assert isinstance(r[f"{v}_us"], float) and isinstance(r[f"{v}_best_us"], float)
            assert len(r["samples_us"][v]) == res["meta"]["sizes"]["repeats"]
        assert isinstance(r["ratio_same"], float) and isinstance(r["ratio_changed_best"], float)
    assert "durable.set_status: µs per checkpointed step" in proc.stdout
