"""The fault-injection suite in its short CI form, and what it found.

``test_fault_injection_short`` runs ``python -m bench faults`` (bench/faults.py) in a process of its own, with 60
instances, 2 Celery workers, SIGKILLs and one broker restart, on the database of this test run (SQLite or
PostgreSQL; the suite makes its own database and starts a private redis-server as broker), and asserts its
invariants: every instance completed, every side effect exactly once, every event stored and consumed once.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import uuid

import pytest
from django.conf import settings
from django.db import connection

import durable_django as dd
from durable_django.models import DurableEvent, DurableInstance, Status
from tests.django.conftest import ROOT
from tests.django.testapp import durable_programs as progs


def _suite_env() -> dict[str, str]:
    """The environment of a fresh process: none of this test run's Django or broker settings."""
    drop = ("DJANGO_SETTINGS_MODULE", "DATABASE_URL", "CELERY_BROKER_URL", "REDIS_URL")
    return {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("DURABLE_")}


@pytest.mark.timeout(300)
def test_fault_injection_short(tmp_path):
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server binary not found: the fault suite starts a private one as its broker")
    db = "sqlite" if "sqlite" in settings.DATABASES["default"]["ENGINE"] else "pg"
    out = tmp_path / "faults.json"
    cmd = [sys.executable, "-m", "bench", "faults", "--quick", "--instances", "60", "--workers", "2", "--kills", "3",
           "--db", db, "--deadline", "150", "--workdir", str(tmp_path / "run"), "--out", str(out)]
    if db == "pg":
        cmd += ["--pg-name", f"durable_faults_ci_{uuid.uuid4().hex[:10]}", "--drop"]
    proc = subprocess.run(cmd, cwd=ROOT, env=_suite_env(), capture_output=True, text=True, timeout=280)
    print(proc.stdout[-3000:])
    assert out.exists(), proc.stdout[-3000:] + proc.stderr[-5000:]
    res = json.loads(out.read_text())
    assert res["problems"] == [] and res["ok"], proc.stdout[-3000:]
    assert proc.returncode == 0, proc.stderr[-5000:]
    inst, fx, ev = res["instances"], res["side_effects"], res["events"]
    assert inst["started"] == inst["in_database"] == inst["completed"] == 60
    assert fx["rows"] == fx["expected"] == 60 * 4 and fx["repeated"] == fx["missing"] == fx["wrong_results"] == 0
    assert ev["rows"] == 60 and ev["unconsumed"] == 0 and ev["duplicates_rejected"] == ev["duplicates_sent"] > 0
    assert res["workers"]["kills"] >= 1 and res["broker"]["restarts"] == 1
    assert res["recovery"]["sweeps"] >= 1


@pytest.fixture
def unread_queue(settings):
    """Wake-ups of this test process go to a queue no worker reads (the test needs rows, not runs)."""
    queue = f"{settings.DURABLE['QUEUE']}-faults-unread"
    settings.DURABLE = {**settings.DURABLE, "QUEUE": queue}
    yield queue
    from example_project.celery import app

    with app.connection_for_write() as conn:
        conn.default_channel.queue_purge(queue)


def broker_down_env(queue: str) -> dict[str, str]:
    """A management command's environment on the test database with a broker URL nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.django.settings", "DURABLE_TEST_QUEUE": queue,
            "DURABLE_TEST_DB_NAME": str(connection.settings_dict["NAME"]),
            "CELERY_BROKER_URL": f"redis://127.0.0.1:{port}/0"}


@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(120)
def test_publish_while_the_broker_is_down_stores_the_event_and_returns(uid, unread_queue):
    """Found by the fault suite: the event row commits, then the wake-up cannot be sent (broker down); the
    caller must not fail: the wake-up is logged as not sent, and the sweep sends it."""
    dd.start(progs.effect_then_wait, uid, instance_id=uid)
    out = subprocess.run([sys.executable, "manage.py", "durable_publish", uid, "go", "--payload", '"late"'],
                         cwd=ROOT, env=broker_down_env(unread_queue), capture_output=True, text=True, timeout=100)
    assert DurableEvent.objects.filter(instance_id=uid, name="go").count() == 1  # stored: the sweep will wake it
    assert DurableInstance.objects.get(pk=uid).status == Status.PENDING
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    assert "wake-up not sent" in out.stderr


@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(120)
def test_sweeper_loop_survives_a_broker_outage(uid, unread_queue):
    """Found by the fault suite: ``durable_resume --loop`` (the scheduler) must outlive a broker outage."""
    dd.start(progs.effect_then_wait, uid, instance_id=uid)  # pending, no lease: every sweep wakes it
    out = subprocess.run([sys.executable, "manage.py", "durable_resume", "--loop", "--interval", "0.2",
                          "--iterations", "2"], cwd=ROOT, env=broker_down_env(unread_queue), capture_output=True,
                         text=True, timeout=100)
    assert DurableInstance.objects.get(pk=uid).status == Status.PENDING
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stderr.count("wake-up not sent") == 2, out.stderr[-3000:]  # one per sweep, not one per instance
