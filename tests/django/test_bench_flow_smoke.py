"""Smoke run of the flow-control benchmark (``python -m bench flow --quick``): it runs, every instance is admitted
and completes, and its JSON holds both ratios. Speeds are not asserted (they belong to the benchmark's report).

Runs only in the PostgreSQL + Redis pass of ``make test`` (the benchmark creates and drops its own PostgreSQL
database, and purges its own Redis queue).
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
                       reason="the flow-control benchmark needs PostgreSQL: DATABASE_URL is not a postgres:// URL"),
    pytest.mark.skipif(not os.environ.get("CELERY_BROKER_URL", "").startswith("redis://"),
                       reason="the benchmark's start() sends its wake-ups to Redis (DB 9, a queue of its own)"),
    pytest.mark.timeout(300),
]


def test_quick_flow_bench_runs_and_reports_both_ratios(tmp_path):
    out = tmp_path / "flow.json"
    env = {k: v for k, v in os.environ.items() if k not in ("DJANGO_SETTINGS_MODULE", "DATABASE_URL")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.run([sys.executable, "-m", "bench", "flow", "--quick", "--out", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}"
    res = json.loads(out.read_text())
    assert res["complete"] and res["vendor"] == "postgresql"
    for part in ("claim", "run"):
        assert res[part]["free_us"] > 0 and res[part]["limited_us"] > 0 and res[part]["ratio"] > 0
        assert len(res[part]["samples_us"]["limited"]) == res["rounds"]
    assert "claim (+ slot)" in proc.stdout
