"""Fixtures for the Django app's tests: inline runs, polling, real Celery worker subprocesses."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def wait_until(predicate: Callable[[], object], timeout: float = 30.0, interval: float = 0.05,
               message: str | Callable[[], str] = "condition", on_tick: Callable[[], object] | None = None):
    """Poll ``predicate`` until it returns something truthy or the deadline passes (no sleep-and-hope)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            what = message() if callable(message) else message
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        if on_tick is not None:
            on_tick()
        time.sleep(interval)


@pytest.fixture
def inline(settings):
    """Run instances in the test process when their transaction commits (no Celery)."""
    settings.DURABLE = {**settings.DURABLE, "RUN_INLINE": True}
    yield


@pytest.fixture
def uid() -> str:
    return uuid.uuid4().hex[:12]


class Worker:
    """A real ``celery worker`` subprocess on the test database."""

    def __init__(self, name: str, log: Path, proc: subprocess.Popen) -> None:
        self.name, self.log, self.proc = name, log, proc

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=20)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


@pytest.fixture
def worker_factory(request, transactional_db, tmp_path):
    """Start Celery worker subprocesses (pool=solo) on the test DB; all are killed at teardown."""
    from django.conf import settings
    from django.db import connection

    workers: list[Worker] = []

    def start(name: str | None = None, extra_env: dict | None = None, wait: bool = True,
              queues: str | None = None) -> Worker:
        name = name or f"w{len(workers) + 1}-{uuid.uuid4().hex[:6]}"
        log = tmp_path / f"{name}.log"
        env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.django.settings",
               "DURABLE_TEST_DB_NAME": str(connection.settings_dict["NAME"]), **(extra_env or {})}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        cmd = [sys.executable, "-m", "celery", "-A", "example_project", "worker", "--pool=solo",
               "--without-gossip", "--without-mingle", "--without-heartbeat", "--loglevel=INFO",
               "-Q", queues or settings.DURABLE["QUEUE"], "-n", f"{name}@%h"]
        fh = open(log, "wb")
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT)
        fh.close()
        w = Worker(name, log, proc)
        workers.append(w)
        if wait:
            wait_until(lambda: "ready." in w.output() or proc.poll() is not None, timeout=60,
                       message=f"worker {name} to be ready")
            if proc.poll() is not None:
                raise AssertionError(f"worker {name} exited:\n{w.output()}")
        return w

    def scheduler(interval: float = 0.3, extra_env: dict | None = None) -> Worker:
        """``manage.py durable_resume --loop``: the small scheduler, in its own process."""
        log = tmp_path / f"scheduler-{len(workers)}.log"
        env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.django.settings", "PYTHONUNBUFFERED": "1",
               "DURABLE_TEST_DB_NAME": str(connection.settings_dict["NAME"]), **(extra_env or {})}
        fh = open(log, "wb")
        proc = subprocess.Popen([sys.executable, "manage.py", "durable_resume", "--loop", "--interval", str(interval)],
                                cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT)
        fh.close()
        w = Worker("scheduler", log, proc)
        workers.append(w)
        return w

    start.scheduler = scheduler
    yield start
    for w in workers:
        w.stop()
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        for w in workers:
            print(f"\n----- log of worker {w.name} (exit {w.proc.returncode}) -----\n{w.output()[-6000:]}")


@pytest.fixture(scope="session", autouse=True)
def _clean_redis_broker():
    """Leave a shared Redis as found: delete this session's queue and kombu's bindings of it at the end."""
    yield
    url = os.environ.get("CELERY_BROKER_URL", "")
    queue = os.environ.get("DURABLE_TEST_QUEUE", "")
    if not url.startswith("redis://") or not queue:
        return
    from bench.redis_keys import purge_queue

    purge_queue(url, queue)
