"""Smoke run of the telemetry benchmark (``python -m bench telemetry --quick``): it runs, every instance
completes (the benchmark checks), spans were exported, and its JSON holds every figure. Speeds are not
asserted here (the benchmark reports them against its 5% target)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.django.conftest import ROOT

pytest.importorskip("opentelemetry.sdk")
pytest.importorskip("prometheus_client")


def test_quick_telemetry_bench_runs_and_reports(tmp_path):
    out = tmp_path / "telemetry.json"
    proc = subprocess.run([sys.executable, "-m", "bench", "telemetry", "--quick", "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, env={"PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    res = json.loads(out.read_text())
    assert set(res["modes"]) == {"off", "on", "on_step_events", "metrics_logs"}
    assert all(m["us_per_step"] > 0 for m in res["modes"].values())
    assert res["spans_exported"] > 0 and "ratio" in res and "meets_target" in res
