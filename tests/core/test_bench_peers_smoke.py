"""Smoke test of the peer benchmark's own side: ``python -m bench peers --quick --only ours --dbs memory,sqlite``.

The peers themselves need their own venv (``make bench-peers``) and are not
run here; this checks that this project's children (the core in memory; durable_django on SQLite, when
Django is installed) run, verify their results
and produce every figure, that the table prints, and (when matplotlib is
installed) that the chart draws from that real JSON. Speed is never asserted.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, str, Path]:
    out = tmp_path_factory.mktemp("peers") / "peers.json"
    cmd = [sys.executable, "-m", "bench", "peers", "--quick", "--only", "ours", "--dbs", "memory,sqlite",
           "--out", str(out), "--no-chart"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text()), proc.stdout, out


def _expected_to_run(db: str) -> bool:
    return db == "memory" or importlib.util.find_spec("django") is not None


def test_every_system_of_ours_has_checked_figures(run: tuple[dict, str, Path]) -> None:
    res, _, _ = run
    systems = {s["db"]: s for s in res["systems"]}
    assert set(systems) == {"memory", "sqlite"}
    assert res["meta"]["k_values"] == [10, 100, 1000]
    for db, s in systems.items():
        if not _expected_to_run(db):
            assert all("na" in s[f] for f in ("per_step", "start", "latency", "resume")), s
            continue
        assert s["per_step"]["us"] > 0 and s["per_step"]["floor_us"] > 0, s["per_step"]
        assert s["start"]["per_s"] > 0
        assert s["latency"]["samples"] == res["meta"]["sizes"]["latency_samples"]
        assert [p["k"] for p in s["resume"]["points"]] == [10, 100, 1000]
        sizes = [p["state_bytes"] for p in s["resume"]["points"]]
        # a checkpoint does not keep the history: the state hardly grows from K=10 to K=1,000
        assert all(b > 0 for b in sizes) and sizes[-1] < 2 * sizes[0], sizes


def test_table_lists_every_system_and_na_reasons(run: tuple[dict, str, Path]) -> None:
    res, stdout, _ = run
    assert "== per step, start rate, event -> resume" in stdout
    assert "== resume after K completed steps" in stdout
    for s in res["systems"]:
        assert f"{s['label']}" in stdout
        if "na" in s["per_step"]:
            assert s["per_step"]["na"] in stdout


def test_chart_draws_from_the_json(run: tuple[dict, str, Path]) -> None:
    pytest.importorskip("matplotlib")
    from bench import chart

    res, _, out = run
    png = chart.draw(res, out.with_suffix(".png"))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert png.stat().st_size > 10_000
