"""Smoke run of the concurrency benchmark (``python -m bench concurrency --quick``) with its Django parts: a
branch's checkpoint on SQLite and PostgreSQL, and children fanned out and in through Celery workers against
independent instances. It runs, every instance in it completes with the right result (the benchmark checks each),
and its JSON holds every figure. Speeds are not asserted (they belong to the benchmark's report).

Runs only in the PostgreSQL + Redis pass of ``make test`` (the benchmark creates and drops its own PostgreSQL
databases, and purges its own Redis queue).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.concurrency.django_part import NO_BRANCHES  # noqa: E402
from bench.concurrency.fanout import NO_CHILDREN  # noqa: E402

pytestmark = [
    pytest.mark.skipif(not os.environ.get("DATABASE_URL", "").startswith(("postgres://", "postgresql://")),
                       reason="the benchmark's Django parts need PostgreSQL: DATABASE_URL is not a postgres:// URL"),
    pytest.mark.skipif(not os.environ.get("CELERY_BROKER_URL", "").startswith("redis://"),
                       reason="the fan-out part runs Celery workers on Redis (DB 9, a queue of its own)"),
    pytest.mark.timeout(600),
]


def test_quick_concurrency_bench_runs_its_django_parts(tmp_path):
    out = tmp_path / "concurrency.json"
    env = {k: v for k, v in os.environ.items() if k not in ("DJANGO_SETTINGS_MODULE", "DATABASE_URL")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.run([sys.executable, "-m", "bench", "concurrency", "--quick", "--out", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=560)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}"
    res = json.loads(out.read_text())
    assert res["ok"] is True
    for db, vendor in (("sqlite", "sqlite"), ("pg", "postgresql")):
        dj = res["django"][db]
        if dj.get("skipped") == NO_BRANCHES:
            continue
        assert "skipped" not in dj and "error" not in dj, dj
        assert dj["db"] == vendor and dj["ratio"] > 0 and dj["statements_per_step"] > 0
        assert dj["rows"]["branch_rows"] == 100 and dj["rows"]["instance_bytes"] > 0
    fo = res["fanout"]
    if fo.get("skipped") != NO_CHILDREN:
        assert "skipped" not in fo and "error" not in fo, fo
        assert fo["n_children"] == res["meta"]["config"]["children"] and fo["workers"] == 2
        for key in ("children", "independent"):
            assert len(fo[key]["samples"]) == fo["rounds"] and fo[key]["best"] > 0
        assert fo["ratio"] > 0
