"""Telemetry off (the default): nothing imported, nothing connected, no /metrics; runs without the libraries."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.db import connection

import durable_django as dd
from durable_django import telemetry
from durable_django.models import DurableInstance, DurableTrace, Status
from tests.django.conftest import ROOT
from tests.django.testapp import durable_programs as progs

pytestmark = pytest.mark.django_db(transaction=True)


def test_metrics_view_is_absent_when_metrics_are_off(client, admin_client):
    assert client.get("/durable/metrics").status_code == 404
    assert admin_client.get("/durable/metrics").status_code == 404


def test_without_telemetry_nothing_is_logged_or_imported(uid, settings):
    """Off (the default): a run imports neither library and connects no receiver (checked in a fresh process)."""
    settings.DURABLE = {**settings.DURABLE, "RUN_INLINE": False}
    dd.start(progs.failing, "boom", instance_id=uid)
    code = (
        "import sys, django; django.setup()\n"
        "from durable_django import signals, telemetry, worker, metrics, urls\n"
        f"status = worker.run_instance({uid!r})\n"
        "assert not telemetry.active\n"
        "print(status, sorted(m for m in sys.modules if m.split('.')[0] in ('opentelemetry', 'prometheus_client')))\n"
    )
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.django.settings",
           "DURABLE_TEST_DB_NAME": str(connection.settings_dict["NAME"])}
    env.pop("DURABLE_TEST_OTEL_FILE", None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[-2:] == ["failed", "[]"], done.stdout + done.stderr
    assert "boom" not in done.stderr  # no record: the logs are off too


def test_step_spans_cost_nothing_when_off(inline, uid, monkeypatch):
    """The executor never builds a telemetry run when off (the per-step hook is not even installed)."""
    assert not telemetry.active
    monkeypatch.setattr(telemetry, "begin_run", lambda *a: pytest.fail("telemetry used while off"))
    dd.start(progs.effect_then_finish, uid, instance_id=uid)
    assert DurableInstance.objects.get(pk=uid).status == Status.COMPLETED
    assert not DurableTrace.objects.filter(pk=uid).exists()
    assert Path(telemetry.__file__).name == "telemetry.py"
