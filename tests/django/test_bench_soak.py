"""The soak suite (``python -m bench soak``) in its 20,000-process CI form.

20,000 one-step processes through 2 Celery workers on PostgreSQL (a database
of the suite's own, dropped afterwards) and Redis: every process completes,
``durable_purge`` then leaves no row in any table of the app, and the
workers' resident memory does not grow with the number of processes run.
Throughput is reported by the suite, not asserted.

Runs only in the PostgreSQL + Redis pass of ``make test``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import psycopg
import pytest

ROOT = Path(__file__).resolve().parents[2]
COUNT = int(os.environ.get("DURABLE_TEST_SOAK_COUNT", "20000"))
#: Growth of a worker's resident memory from the 10,000th process to the last one that still counts as flat:
#: a leak of even 1 KB per process would exceed it over 10,000 processes.
RSS_GROWTH_MB = 8.0

pytestmark = [
    pytest.mark.skipif(not os.environ.get("DATABASE_URL", "").startswith(("postgres://", "postgresql://")),
                       reason="the soak suite needs PostgreSQL: DATABASE_URL is not a postgres:// URL"),
    pytest.mark.skipif(not os.environ.get("CELERY_BROKER_URL", "").startswith("redis://"),
                       reason="the soak suite needs Redis: CELERY_BROKER_URL is not a redis:// URL"),
    pytest.mark.timeout(900),
]


def test_soak_20k_processes_flat_memory_and_nothing_left_after_purge(tmp_path):
    out = tmp_path / "soak.json"
    db = f"durable_soak_ci_{uuid.uuid4().hex[:10]}"
    env = {k: v for k, v in os.environ.items() if k not in ("DJANGO_SETTINGS_MODULE", "DATABASE_URL")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    cmd = [sys.executable, "-m", "bench", "soak", "--count", str(COUNT), "--purge-every", str(COUNT // 2),
           "--db", db, "--timeout", "800", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=860)
    print(proc.stdout[-3000:])
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}"
    res = json.loads(out.read_text())["soak"]
    assert res["ok"] and res["processes"] == COUNT and not res["stopped_early"]
    assert res["purged"] == COUNT
    assert res["rows_left"] and set(res["rows_left"].values()) == {0}, res["rows_left"]
    assert res["results_sampled"] > 0
    marks = [p["mark"] for p in res["points"]]
    assert 10_000 in marks and marks[-1] == COUNT
    growth = res["rss_growth_mb"]
    assert growth["from"] == 10_000 and growth["to"] == COUNT
    assert all(g < RSS_GROWTH_MB for g in growth["per_worker"]), res["points"]
    with psycopg.connect("host=127.0.0.1 port=5432 user=postgres dbname=postgres") as conn:
        assert conn.execute("SELECT count(*) FROM pg_database WHERE datname = %s", [db]).fetchone()[0] == 0
