"""The schedules suite (``python -m bench schedules``) at tiny sizes: 2 schedulers, a simulated clock, SQLite."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(300)
def test_bench_schedules_quick_fires_every_tick_once(tmp_path):
    out = tmp_path / "schedules.json"
    env = {k: v for k, v in os.environ.items() if k not in ("DJANGO_SETTINGS_MODULE", "DATABASE_URL")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    cmd = [sys.executable, "-m", "bench", "schedules", "--schedules", "150", "--minutes", "3", "--db", "sqlite",
           "--out", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    res = json.loads(out.read_text())["schedules"]
    assert res["ok"] and res["doubled"] == 0 and res["wrong_next_run_at"] == 0
    assert [p["fired"] for p in res["per_minute"]] == [150, 150, 150]
    assert all(p["missing"] == 0 and p["rows"] == 150 for p in res["per_minute"])
