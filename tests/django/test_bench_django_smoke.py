"""Smoke run of the durable_django benchmark (``python -m bench django --quick``): it runs, every durable
run in it completes with the right result (the benchmark checks each one), and its JSON holds every
figure. Speeds are not asserted here (they belong to the benchmark's own report).

Runs only in the PostgreSQL + Redis pass of ``make test``: the benchmark uses PostgreSQL on
127.0.0.1:5432 (it creates and drops its own database, ``durable_bench``) and Redis DB 9 with a queue
of its own.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.skipif(not os.environ.get("DATABASE_URL", "").startswith(("postgres://", "postgresql://")),
                       reason="the Django benchmark needs PostgreSQL: DATABASE_URL is not a postgres:// URL"),
    pytest.mark.skipif(not os.environ.get("CELERY_BROKER_URL", "").startswith("redis://"),
                       reason="the Django benchmark needs Redis: CELERY_BROKER_URL is not a redis:// URL"),
    pytest.mark.timeout(400),
]


def test_quick_django_bench_runs_and_reports_every_figure(tmp_path):
    out = tmp_path / "django.json"
    env = {k: v for k, v in os.environ.items() if k not in ("DJANGO_SETTINGS_MODULE", "DATABASE_URL")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.run([sys.executable, "-m", "bench", "django", "--quick", "--out", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=360)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}"
    res = json.loads(out.read_text())
    cfg = res["meta"]["config"]
    for part in ("steps_pg", "steps_sqlite"):
        s = res[part]
        assert s["step_us"] > 0 and s["floor_us"] > 0 and s["ratio"] > 0
        assert len(s["samples"]["step_us"]) == cfg["step_repeats"]
    # a step without database work: its checkpoint is one UPDATE that commits as it runs
    assert res["steps_pg"]["statements"]["per_step"] == {"UPDATE": 1, "implicit COMMIT": 1}
    lat = res["latency"]
    for v in ("shipped", "reuse"):
        assert lat[v]["samples"] == cfg["latency_samples"]
        assert lat[v]["publish_to_step"]["p50_ms"] > lat[v]["publish_to_task_start"]["p50_ms"] > 0
        assert lat[v]["floor"]["n"] == cfg["latency_samples"]
    tp = res["throughput"]
    for v in ("floor", "shipped", "reuse", "unbatched"):
        assert tp[v]["per_s"] > 0
    assert "publish_event -> step runs" in proc.stdout and "throughput" in proc.stdout
