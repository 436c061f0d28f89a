"""The fault-injection suite in its short CI form, and what it found.

``test_fault_injection_short`` runs ``python -m bench faults`` (bench/faults.py) in a process of its own, with 60
instances, 2 Celery workers, SIGKILLs and one broker restart, on the database of this test run (SQLite or
PostgreSQL; the suite makes its own database and starts a private redis-server as broker), and asserts its
invariants: every instance completed, every side effect exactly once, every event stored and consumed once.

``test_database_restart_short`` and ``test_worker_cut_off_mid_step_short`` run its PostgreSQL scenarios
(``--scenario db-restart``, ``--scenario partition``) on a private PostgreSQL server of their own
(bench/private_postgres.py), whatever the database of this test run: they need PostgreSQL's server binaries
(``initdb``, ``pg_ctl``), and fail rather than skip without them when ``CI`` is set.
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


def _private_postgres_or_skip() -> None:
    from bench.private_postgres import find_bindir

    missing = [what for what, ok in (("PostgreSQL server binaries (initdb, pg_ctl; or set DURABLE_PG_BINDIR)",
                                      find_bindir() is not None),
                                     ("redis-server", shutil.which("redis-server") is not None)) if not ok]
    if missing:
        reason = f"{' and '.join(missing)} not found: the scenario runs a private server of each"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; CI is set, where they are expected")
        pytest.skip(reason)


def _run_scenario(tmp_path, *args: str) -> tuple[dict, str]:
    out = tmp_path / "scenario.json"
    cmd = [sys.executable, "-m", "bench", "faults", "--quick", *args, "--workdir", str(tmp_path / "run"),
           "--out", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, env=_suite_env(), capture_output=True, text=True, timeout=170)
    print(proc.stdout[-3000:])
    assert out.exists(), proc.stdout[-3000:] + proc.stderr[-5000:]
    res = json.loads(out.read_text())
    assert res["problems"] == [] and res["ok"], proc.stdout[-3000:]
    assert proc.returncode == 0, proc.stderr[-5000:]
    return res, proc.stdout


@pytest.mark.timeout(180)
def test_database_restart_short(tmp_path):
    """40 instances with exactly-once side effects on 2 workers; the PostgreSQL server is stopped and started
    once while they run. Every instance completes, each side effect once; the workers and the sweeper
    reconnect by themselves (the suite counts any restart of them as a failure)."""
    _private_postgres_or_skip()
    res, _ = _run_scenario(tmp_path, "--scenario", "db-restart", "--instances", "40", "--db-restarts", "1",
                           "--deadline", "120")
    inst, fx, db = res["instances"], res["side_effects"], res["database"]
    assert inst["started"] == inst["in_database"] == inst["completed"] == 40
    assert fx["rows"] == fx["expected"] == 40 * 4 and fx["repeated"] == fx["missing"] == fx["wrong_results"] == 0
    assert fx["wrong_balances"] == 0 and res["events"]["unconsumed"] == 0
    assert db["server_stops"] == 1 and len(db["restarts"]) == 1
    restart = db["restarts"][0]
    assert 0 < restart["completed_before"] < 40  # it happened while they ran
    assert set(restart["workers_reconnected_s"]) == {"faults1", "faults2"}
    assert restart["sweeper_reconnected_s"] is not None
    assert res["workers"]["starts"] == 2 and res["workers"]["unexpected_exits"] == 0
    assert res["recovery"]["sweeper_starts"] == 1


@pytest.mark.timeout(180)
def test_worker_cut_off_mid_step_short(tmp_path):
    """A worker's database link goes through a TCP proxy that is cut while the worker is inside a long step
    (once as a blackhole, once by resetting its connections); another worker takes the instance over once
    the lease expires and completes it. When the link is back, the first worker's late checkpoint is refused
    (LeaseLost), no side effect is doubled, and the first worker runs the next instance without a restart."""
    _private_postgres_or_skip()
    res, _ = _run_scenario(tmp_path, "--scenario", "partition", "--cuts", "2")
    assert res["instances"]["started"] == res["instances"]["completed"] == 4
    fx = res["side_effects"]
    assert fx["rows"] == fx["expected"] == 4 * 3 and fx["repeated"] == fx["missing"] == 0
    blackhole, reset = res["rounds"]
    assert (blackhole["mode"], reset["mode"]) == ("blackhole", "reset")
    for r in (blackhole, reset):
        assert r["long_step_pid_is_victim"] and r["taken_over_by_rescuer"] and r["next_instance_ran_by_victim"]
    assert blackhole["late_checkpoint_refused_after_restore_s"] is not None
    assert res["victim"]["late_checkpoints_refused_lease_lost"] == 1
    assert res["victim"]["runs_cut_mid_run"] >= 1  # the reset round: the checkpoint failed on a dead connection
    assert res["processes"] == {"victim_alive": True, "sweeper_starts": 1, "sweeper_alive": True}
    assert res["proxy"]["cuts"] == 2 and res["proxy"]["held_connections"] >= 1 and res["proxy"]["reset"] >= 1


@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(60)
def test_a_run_whose_connection_dies_gives_back_its_lease_and_connection(uid):
    """Found by the database-restart scenario: when PostgreSQL ends a worker's session mid-step, restoring
    autocommit on the dead connection raised, so the run never unregistered its lease from the heartbeat
    thread, which then kept the lease alive for ever: the instance stayed stuck after the database was back.
    Now the dead connection is dropped, the lease released, and the next run completes the instance."""
    from django.db import OperationalError

    from durable_django import leases, worker
    from tests.django.testapp.models import SideEffect

    if connection.vendor != "postgresql":
        pytest.skip("PostgreSQL only: the step has the server terminate its own session")
    dd.start(progs.connection_lost_mid_step, uid, instance_id=uid)
    with pytest.raises(OperationalError):
        worker.run_instance(uid)
    hb = leases._Heartbeat._instance
    assert hb is None or not [key for key in hb.leases if key[0] == uid]
    row = DurableInstance.objects.get(pk=uid)  # a new connection, in autocommit
    assert connection.get_autocommit()
    assert row.lease_owner == "" and row.lease_expires_at is None and row.status == Status.RUNNING
    assert SideEffect.objects.filter(key=uid, note="connection").count() == 0  # rolled back with the session
    assert worker.run_instance(uid) == Status.COMPLETED
    assert DurableInstance.objects.get(pk=uid).result == [1, 2]
    assert SideEffect.objects.filter(key=uid).count() == 2


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


def _terminate_session_of(conn) -> None:
    """Have PostgreSQL end ``conn``'s session from another one (what a database restart does to it)."""
    import psycopg

    with conn.cursor() as cur:
        cur.execute("SELECT pg_backend_pid()")
        pid = cur.fetchone()[0]
    params = conn.get_connection_params()
    with psycopg.connect(**{k: v for k, v in params.items() if k in ("host", "port", "user", "password", "dbname")},
                         autocommit=True) as other:
        other.execute("SELECT pg_terminate_backend(%s)", [pid])


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("health_checks", [False, True])
def test_a_task_after_a_database_restart_reconnects(uid, health_checks):
    """A worker keeps its connection across tasks (CELERY_DB_REUSE_MAX); PostgreSQL ends the session while
    the worker is idle. Without CONN_HEALTH_CHECKS the next task fails on the dead connection (Celery retries
    it) and the retry runs on a new one; with CONN_HEALTH_CHECKS the task checks it first and just runs."""
    from django.db import OperationalError, connections

    from durable_django import tasks
    from tests.django.testapp.models import SideEffect

    if connection.vendor != "postgresql":
        pytest.skip("PostgreSQL only: the test has the server end the worker's session")
    conn = connections["default"]  # the wrapper itself (the test process plays the worker)
    dd.start(progs.effect_then_finish, uid, instance_id=uid)
    conn.ensure_connection()
    saved, conn.health_check_enabled = conn.health_check_enabled, health_checks
    try:
        _terminate_session_of(conn)
        if not health_checks:
            with pytest.raises(OperationalError):
                tasks.run_instance(uid)
        assert tasks.run_instance(uid) == Status.COMPLETED
    finally:
        conn.health_check_enabled = saved
    assert SideEffect.objects.filter(key=uid).count() == 1


@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(120)
def test_sweeper_loop_survives_an_unreachable_database(tmp_path, unread_queue):
    """Found by the database-restart scenario: ``durable_resume --loop`` exited at the first sweep that
    could not reach the database; it must report it and sweep again (the scenario checks the reconnection)."""
    missing = (str(tmp_path / "no-such-dir" / "db.sqlite3") if connection.vendor == "sqlite"
               else f"durable_missing_{uuid.uuid4().hex[:10]}")
    env = {**broker_down_env(unread_queue), "DURABLE_TEST_DB_NAME": missing}
    out = subprocess.run([sys.executable, "manage.py", "durable_resume", "--loop", "--interval", "0.2",
                          "--iterations", "3"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=100)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stderr.count("sweep failed, database unavailable") == 3, out.stderr[-3000:]
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    # Without --loop the command still fails (a one-off sweep that cannot run must say so).
    once = subprocess.run([sys.executable, "manage.py", "durable_resume"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=100)
    assert once.returncode != 0 and "OperationalError" in once.stderr
