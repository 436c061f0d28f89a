"""Smoke run of the load suite (``python -m bench load --quick``) on PostgreSQL: its invariants, not its speeds.

Runs only when ``DATABASE_URL`` points at PostgreSQL and ``CELERY_BROKER_URL``
at Redis (the suite needs both; ``make test`` sets them for its second run).
The suite creates and drops a database of its own on that server and uses a
queue of its own on that Redis.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

ROOT = Path(__file__).resolve().parents[2]
DATABASE_URL = os.environ.get("DATABASE_URL", "")
BROKER_URL = os.environ.get("CELERY_BROKER_URL", "")

pytestmark = [
    pytest.mark.skipif(not DATABASE_URL.startswith(("postgres://", "postgresql://")),
                       reason="the load suite needs PostgreSQL: DATABASE_URL is not a postgres:// URL"),
    pytest.mark.skipif(not BROKER_URL.startswith("redis://"),
                       reason="the load suite needs Redis: CELERY_BROKER_URL is not a redis:// URL"),
    pytest.mark.timeout(400),
]


def test_quick_load_run_keeps_every_invariant(tmp_path):
    parts = urlsplit(DATABASE_URL)
    server = urlunsplit((parts.scheme, parts.netloc, "/postgres", "", ""))
    out = tmp_path / "load.json"
    db = f"durable_load_smoke_{uuid.uuid4().hex[:8]}"
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.run([sys.executable, "-m", "bench", "load", "--quick", "--db", db, "--pg-url", server,
                           "--broker", BROKER_URL, "--out", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=360)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}"
    res = json.loads(out.read_text())
    cfg = res["meta"]["config"]
    pub = res["publish"]

    assert res["ok"] and res["problems"] == []
    assert res["populate"]["status_counts"] == {"paused": cfg["instances"] - cfg["due_each"],
                                                "running": cfg["due_each"]}
    # Every target got exactly one stored event; every duplicate publish was absorbed.
    assert pub["events_stored"] == cfg["targets"]
    assert pub["calls_by_kind"]["first"] == cfg["targets"]
    assert pub["publish_calls"] > cfg["targets"]
    assert pub["duplicates_rejected"] == pub["publish_calls"] - cfg["targets"]
    assert pub["duplicates_returned_existing"] + pub["duplicates_refused_finished"] == pub["duplicates_rejected"]
    assert "error" not in pub["outcomes"]
    assert pub["concurrent_pairs"] > 0 and pub["problems"] == []
    # Each woken instance completed once with its side effect once; all others are as they were created.
    for key in ("check_initial", "check_after_publish", "check_after_sweep"):
        assert res[key]["ok"], res[key]["problems"]
    assert res["check_after_publish"]["completed_checked"] == cfg["targets"]
    assert res["check_after_publish"]["untouched_checked"] == cfg["instances"] - cfg["targets"]
    # The sweep found exactly the planted due rows, and nothing is due once they ran.
    sweep = res["sweep"]
    assert sweep["dry_run_exact"] and sweep["dry_run_found"] == 3 * cfg["due_each"]
    assert sweep["after_sweep_due"] == 0
    assert set(res["admin"]["pages"]) and all(p["queries"] > 0 for p in res["admin"]["pages"].values())
    # The database was dropped afterwards.
    import psycopg

    with psycopg.connect(server) as conn:
        assert conn.execute("SELECT count(*) FROM pg_database WHERE datname = %s", [db]).fetchone()[0] == 0
