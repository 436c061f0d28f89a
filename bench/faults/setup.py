"""Set-up of the fault suite: what a run does (:class:`FaultConfig`), its private broker, the processes it
owns, its counters, its database and Django."""

from __future__ import annotations

import datetime
import os
import platform
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..common.environment import ROOT, git_revision, recreate_database
from ..common.processes import stop_process

DEFAULT_OUT = ROOT / "bench" / "results" / "faults.json"
SETTINGS = "bench.faults_settings"
#: The shared PostgreSQL server's maintenance database (where the suite's database is dropped and created).
PG_ADMIN_DSN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"


@dataclass
class FaultConfig:
    """What one run does. ``quick`` only changes the defaults :func:`main` picks."""

    instances: int = 500
    workers: int = 2
    kills: int = 12
    db: str = "pg"
    pg_name: str = "durable_faults"
    broker_restart: bool = True
    deadline: float = 900.0
    seed: int = 1
    lease: float = 3.0
    visibility: float = 10.0
    step_ms: float = 5.0
    kill_interval: tuple[float, float] = (0.5, 2.0)
    outage_seconds: float = 1.5
    drop_db: bool = False
    workdir: Path | None = None
    quick: bool = False
    #: "kills" (the default plan above), "db-restart" (a private PostgreSQL server stopped and started
    #: ``db_restarts`` times while the instances run) or "partition" (bench/faults/partition.py)
    scenario: str = "kills"
    db_restarts: int = 0
    db_outage_seconds: float = 2.0
    #: partition scenario: how many times the worker behind the proxy is cut off, and its long step
    cuts: int = 0
    long_step_seconds: float = 2.0


class PrivateRedis:
    """A redis-server of our own on a free loopback port, without persistence: a restart loses every message."""

    def __init__(self, workdir: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server not found: the fault suite needs it for its private broker")
        self.binary, self.workdir = binary, workdir
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.proc: subprocess.Popen | None = None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 20.0) -> None:
        import redis

        log = open(self.workdir / "redis.log", "ab")
        self.proc = subprocess.Popen([self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no", "--dir", str(self.workdir)],
                                     stdout=log, stderr=subprocess.STDOUT)
        log.close()
        client = redis.Redis(port=self.port, socket_connect_timeout=1)
        deadline = time.monotonic() + timeout
        while True:
            try:
                if client.ping():
                    return
            except redis.ConnectionError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"private redis-server on port {self.port} did not start")
            time.sleep(0.05)

    def backlog(self, queue: str) -> int:
        """Messages the broker holds for ``queue``: waiting plus delivered and not yet acknowledged."""
        import redis

        client = redis.Redis(port=self.port, socket_connect_timeout=1)
        waiting = sum(client.llen(k) for k in client.scan_iter(match=f"{queue}*") if client.type(k) == b"list")
        return waiting + client.hlen("unacked")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            stop_process(self.proc, timeout=10)
        self.proc = None


@dataclass
class Child:
    """A worker or sweeper process and its log."""

    name: str
    proc: subprocess.Popen
    log: Path
    ready: bool = False

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@dataclass
class Counts:
    kills: int = 0
    kills_interrupting_a_run: int = 0
    worker_starts: int = 0
    unexpected_worker_exits: int = 0
    broker_restarts: int = 0
    messages_lost_in_restart: int = 0
    started_while_broker_down: int = 0
    events_published: int = 0
    events_at_start: int = 0
    events_while_broker_down: int = 0
    duplicates_sent: int = 0
    duplicates_rejected: int = 0
    sweeper_starts: int = 0
    caller_errors_while_broker_down: list[str] = field(default_factory=list)
    kill_times_s: list[float] = field(default_factory=list)
    broker_restart_at_s: float | None = None
    db_restarts: list[dict] = field(default_factory=list)


def create_database(cfg: FaultConfig, sqlite_path: Path) -> None:
    if cfg.db == "sqlite":
        for suffix in ("", "-wal", "-shm"):
            Path(f"{sqlite_path}{suffix}").unlink(missing_ok=True)
        return
    recreate_database(PG_ADMIN_DSN, cfg.pg_name)


def run_meta_of(cfg: FaultConfig, redis: PrivateRedis, workdir: Path) -> dict[str, Any]:
    import celery
    import django

    git = git_revision(dirty_paths=None) or ""
    version = subprocess.run([redis.binary, "--version"], capture_output=True, text=True, timeout=10).stdout.split()
    return {"date_utc": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M"), "git": git,
            "python": platform.python_version(), "django": django.get_version(), "celery": celery.__version__,
            "redis_server": next((v.split("=")[1] for v in version if v.startswith("v=")), ""),
            "nproc": os.cpu_count(), "db": cfg.db, "workdir": str(workdir)}
