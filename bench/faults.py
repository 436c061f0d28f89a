"""Fault injection: killed workers, a restarted broker, sweeps; then every invariant is checked.

``python -m bench faults [--instances 500] [--workers 2] [--kills N] [--quick] [--db pg|sqlite]``

``--scenario db-restart`` runs the same plan without kills or broker restart on a private PostgreSQL server
(:mod:`bench.private_postgres`) that it stops and starts ``--db-restarts`` times while the instances run
(:meth:`Suite.db_outage`); ``--scenario partition`` cuts one worker's database link mid-step
(:mod:`bench.faults_partition`); ``--scenario all`` runs the three in turn.

The suite starts a private ``redis-server`` on a free port as the broker
(never the shared one), creates its own database (PostgreSQL
``durable_faults``, or a SQLite file), migrates it, and starts N instances of
``bench.faultapp.durable_programs.fault_process`` (four exactly-once db_step
side effects, an event wait, a durable timer). Real Celery worker processes
run them while the suite:

* SIGKILLs a random ready worker at random moments and starts a new one a
  moment later;
* stops the broker once in the middle (every queued and unacknowledged
  message is gone), starts and publishes to instances while it is down, and
  starts it again: only the ``durable_resume`` sweeps bring those back;
* publishes each instance's event: some before the process reaches its wait,
  the others once it waits, some twice with the same idempotency key;
* runs ``manage.py durable_resume --loop`` as the sweeper (restarted if it dies).

When every instance has completed (or the deadline passed) it checks that no
instance was lost, every side effect happened exactly once (one row per step,
the right balance, each step saw exactly the rows before it), every event was
stored once and consumed once and reached the program, and prints the counts;
the JSON goes to ``bench/results/faults.json``. The exit status is 1 when an
invariant fails.

:func:`run_suite` is the suite's core. Django is configured for its own
settings (``bench.faults_settings``) in the calling process, so call it in a
fresh process: ``tests/django/test_faults.py`` runs this command as one.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .private_postgres import PrivatePostgres

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "faults.json"
SETTINGS = "bench.faults_settings"


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
    #: ``db_restarts`` times while the instances run) or "partition" (bench/faults_partition.py)
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
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
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


def _create_database(cfg: FaultConfig, sqlite_path: Path) -> None:
    if cfg.db == "sqlite":
        for suffix in ("", "-wal", "-shm"):
            Path(f"{sqlite_path}{suffix}").unlink(missing_ok=True)
        return
    _pg_admin(f'DROP DATABASE IF EXISTS "{cfg.pg_name}" WITH (FORCE)', f'CREATE DATABASE "{cfg.pg_name}"')


def _pg_admin(*statements: str) -> None:
    import psycopg

    with psycopg.connect("host=127.0.0.1 port=5432 user=postgres dbname=postgres", autocommit=True) as conn:
        for sql in statements:
            conn.execute(sql)


def _setup_django() -> None:
    import django
    from django.conf import settings

    if settings.configured and os.environ.get("DJANGO_SETTINGS_MODULE") != SETTINGS:
        raise RuntimeError("run_suite configures Django for bench.faults_settings: call it in a fresh process")
    os.environ["DJANGO_SETTINGS_MODULE"] = SETTINGS
    django.setup()


class Suite:
    """One run: the processes it owns, the plan drawn from the seed, and what it counted."""

    def __init__(self, cfg: FaultConfig, workdir: Path, redis: PrivateRedis, pg: PrivatePostgres | None = None) -> None:
        self.cfg, self.workdir, self.redis, self.pg = cfg, workdir, redis, pg
        self.rng = random.Random(cfg.seed)
        self.counts = Counts()
        self.queue = f"durable-faults-{uuid.uuid4().hex[:8]}"
        self.env = {k: v for k, v in os.environ.items()
                    if k not in ("DATABASE_URL", "CELERY_BROKER_URL", "REDIS_URL") and not k.startswith("DURABLE_TEST")}
        self.env.update(DJANGO_SETTINGS_MODULE=SETTINGS, PYTHONUNBUFFERED="1", DURABLE_FAULTS_QUEUE=self.queue)
        self.env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
        self.workers: list[Child] = []
        self.sweepers: list[Child] = []
        self.restart_at: list[float] = []
        self.t0 = time.monotonic()
        self.ids = [f"f{i:05d}" for i in range(cfg.instances)]
        # The plan: who gets the event before the wait, who gets it twice, how long each timer is.
        self.early = {iid for iid in self.ids if self.rng.random() < 0.3}
        self.duplicated = {iid for iid in self.ids if self.rng.random() < 0.2}
        self.naps = {iid: round(self.rng.uniform(0.2, 2.0), 2) for iid in self.ids}
        self.payloads = {iid: {"instance": iid, "token": self.rng.randrange(10**9)} for iid in self.ids}
        self.published: set[str] = set()

    # -- processes ---------------------------------------------------------
    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def start_worker(self, extra_env: dict[str, str] | None = None) -> Child:
        """A Celery worker process; ``extra_env`` overrides its settings (e.g. its database port)."""
        self.counts.worker_starts += 1
        name = f"faults{self.counts.worker_starts}"
        log = self.workdir / f"{name}.log"
        with open(log, "wb") as fh:
            proc = subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "example_project", "worker", "--pool=solo", "--without-gossip",
                 "--without-mingle", "--without-heartbeat", "--loglevel=INFO", "-Q", self.queue, "-n", f"{name}@%h"],
                cwd=ROOT, env={**self.env, **(extra_env or {})}, stdout=fh, stderr=subprocess.STDOUT)
        child = Child(name, proc, log)
        self.workers.append(child)
        return child

    def start_sweeper(self, interval: float = 1.0) -> Child:
        self.counts.sweeper_starts += 1
        log = self.workdir / f"sweeper{self.counts.sweeper_starts}.log"
        with open(log, "wb") as fh:
            proc = subprocess.Popen([sys.executable, "manage.py", "durable_resume", "--loop", "--interval",
                                     str(interval)], cwd=ROOT, env=self.env, stdout=fh, stderr=subprocess.STDOUT)
        child = Child("sweeper", proc, log)
        self.sweepers.append(child)
        return child

    def sweeps_logged(self) -> int:
        return sum(s.output().count("instance(s) scheduled.") for s in self.sweepers)

    def ready_workers(self) -> list[Child]:
        for w in self.workers:
            if not w.ready and w.proc.poll() is None and "ready." in w.output():
                w.ready = True
        return [w for w in self.workers if w.ready and w.proc.poll() is None]

    def kill_one(self) -> None:
        from durable_django.models import DurableInstance

        ready = self.ready_workers()
        if not ready:
            return
        victim = self.rng.choice(ready)
        holding = DurableInstance.objects.filter(lease_owner__startswith=f"{victim.name}@").count()
        victim.proc.send_signal(signal.SIGKILL)
        victim.proc.wait(timeout=20)
        self.counts.kills += 1
        self.counts.kills_interrupting_a_run += bool(holding)
        self.counts.kill_times_s.append(round(self.elapsed(), 2))
        self.workers.remove(victim)
        self.restart_at.append(time.monotonic() + self.rng.uniform(0.2, 1.5))

    def tend(self) -> None:
        """Restart workers whose time has come or that died on their own; keep one sweeper running."""
        now = time.monotonic()
        for w in [w for w in self.workers if w.proc.poll() is not None]:
            self.counts.unexpected_worker_exits += 1
            self.workers.remove(w)
            self.restart_at.append(now)
        for at in [at for at in self.restart_at if at <= now]:
            self.restart_at.remove(at)
            self.start_worker()
        if self.redis.proc is not None and all(s.proc.poll() is not None for s in self.sweepers):
            self.start_sweeper()

    def stop_all(self) -> None:
        for child in [*self.workers, *self.sweepers]:
            if child.proc.poll() is None:
                child.proc.terminate()
        for child in [*self.workers, *self.sweepers]:
            try:
                child.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                child.proc.kill()
                child.proc.wait(timeout=10)

    # -- instances and events ---------------------------------------------
    def start_instance(self, iid: str) -> None:
        import durable_django as dd
        from bench.faultapp.durable_programs import fault_process

        self.call(dd.start, fault_process, iid, self.naps[iid], instance_id=iid)
        if iid in self.early:
            self.publish(iid, before_wait=True)

    def publish(self, iid: str, before_wait: bool = False) -> None:
        import durable_django as dd
        from durable_django.models import DurableEvent

        self.call(dd.publish_event, iid, "go", self.payloads[iid], idempotency_key=f"go-{iid}")
        self.published.add(iid)
        self.counts.events_published += 1
        self.counts.events_at_start += before_wait
        if self.redis.proc is None:
            self.counts.events_while_broker_down += 1
        if iid in self.duplicated:
            again = dd.publish_event(iid, "go", self.payloads[iid], idempotency_key=f"go-{iid}")
            self.counts.duplicates_sent += 1
            self.counts.duplicates_rejected += again.pk == DurableEvent.objects.get(
                instance_id=iid, idempotency_key=f"go-{iid}").pk

    def call(self, func, *args: Any, **kwargs: Any) -> None:
        """Call start/publish_event; while the broker is down, record an exception that reaches the caller.

        The row commits before the wake-up is sent, so the instance or event is kept and the sweep wakes it
        later; an exception here is still a bug of the API (see tests/django/test_faults.py).
        """
        try:
            func(*args, **kwargs)
        except Exception as exc:
            if self.redis.proc is not None:
                raise
            self.counts.caller_errors_while_broker_down.append(f"{func.__name__}: {type(exc).__name__}: {exc}")

    def waiting_ids(self, limit: int | None = None) -> list[str]:
        from durable_django.models import DurableInstance, Status

        ids = [i for i in DurableInstance.objects.filter(status=Status.PAUSED, waiting_for="go")
               .values_list("instance_id", flat=True) if i not in self.published]
        return ids[:limit] if limit is not None else ids

    def broker_outage(self, held: list[str]) -> None:
        """Stop the broker (its messages are lost), start and publish while it is down, start it again."""
        self.counts.messages_lost_in_restart = self.redis.backlog(self.queue)
        self.counts.broker_restart_at_s = round(self.elapsed(), 2)
        self.redis.stop()
        down_until = time.monotonic() + self.cfg.outage_seconds
        for iid in held[:5]:
            self.start_instance(iid)
            self.counts.started_while_broker_down += 1
        del held[:5]
        for iid in self.waiting_ids(limit=5):
            self.publish(iid)
        while time.monotonic() < down_until:
            time.sleep(0.05)
        self.redis.start()
        self.counts.broker_restarts += 1

    def db_outage(self) -> None:
        """Stop the private PostgreSQL server (every session is cut), keep it down, start it again.

        Nobody is restarted: the workers and the sweeper must reconnect by themselves. Odd restarts stop
        it in ``fast`` mode (sessions terminated, clean shutdown), even ones in ``immediate`` mode (a crash:
        crash recovery at the start). :meth:`watch_reconnect` then times each one's reconnection.
        """
        from django.db import connections

        from bench.faultapp.models import WakeUp

        assert self.pg is not None
        completed = _status_counts().get("completed", 0)
        mark = WakeUp.objects.order_by("-pk").values_list("pk", flat=True).first() or 0
        connections.close_all()
        mode = "fast" if len(self.counts.db_restarts) % 2 == 0 else "immediate"
        at = self.elapsed()
        self.pg.stop(mode)
        down_until = time.monotonic() + self.cfg.db_outage_seconds
        while time.monotonic() < down_until:
            self.tend()
            time.sleep(0.05)
        self.pg.start()
        self.counts.db_restarts.append({
            "mode": mode, "at_s": round(at, 2), "down_s": round(self.elapsed() - at, 2),
            "completed_before": completed, "_up": time.monotonic(), "_wakeup_mark": mark,
            "_sweeps": self.sweeps_logged(), "workers_reconnected_s": {}, "sweeper_reconnected_s": None,
            "first_completion_after_s": None})

    def watch_reconnect(self) -> None:
        """Time, after the last restart, each worker's first finished wake-up, the sweeper's first sweep and
        the first instance completed (each within the 0.2 s polling interval)."""
        from django.db.models import Max

        from bench.faultapp.models import WakeUp

        if not self.counts.db_restarts:
            return
        r = self.counts.db_restarts[-1]
        since = round(time.monotonic() - r["_up"], 2)
        done = {w["worker"]: w["pk"] for w in WakeUp.objects.filter(pk__gt=r["_wakeup_mark"])
                .exclude(outcome__in=("OperationalError", "InterfaceError", "Retry"))
                .values("worker").annotate(pk=Max("pk"))}
        for w in self.workers:
            if w.name not in r["workers_reconnected_s"] and any(k.startswith(f"{w.name}@") for k in done):
                r["workers_reconnected_s"][w.name] = since
        if r["sweeper_reconnected_s"] is None and self.sweeps_logged() > r["_sweeps"]:
            r["sweeper_reconnected_s"] = since
        if r["first_completion_after_s"] is None and _status_counts().get("completed", 0) > r["completed_before"]:
            r["first_completion_after_s"] = since

    # -- the run -------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        from durable_django.models import Status

        cfg = self.cfg
        for _ in range(cfg.workers):
            self.start_worker()
        self.start_sweeper()
        # The last 5 % are held back until the broker and database restarts are done: the run cannot end first.
        held = self.ids[len(self.ids) - max(1, len(self.ids) // 20):] if cfg.broker_restart or cfg.db_restarts else []
        for iid in self.ids[:len(self.ids) - len(held)]:
            self.start_instance(iid)
        next_kill = time.monotonic() + self.rng.uniform(*cfg.kill_interval)
        deadline = self.t0 + cfg.deadline
        restarted = not cfg.broker_restart
        total = len(self.ids)
        completed = 0
        while time.monotonic() < deadline:
            self.watch_reconnect()
            statuses = _status_counts()
            completed = statuses.get(Status.COMPLETED, 0)
            if completed == total:
                break
            stuck = {s: n for s, n in statuses.items() if s in (Status.FAILED, Status.SUSPENDED, Status.CANCELLED)}
            if stuck:
                break  # these never complete: report them now
            for iid in self.waiting_ids():
                self.publish(iid)
            # In the middle: after 30 % completed and half the kills (the held-back instances keep it running).
            if not restarted and completed >= total * 0.3 and self.counts.kills >= (cfg.kills + 1) // 2:
                self.broker_outage(held)
                restarted = True
            if restarted and held and len(self.counts.db_restarts) >= cfg.db_restarts:
                for iid in held:
                    self.start_instance(iid)
                held = []
            # Database restarts spread evenly: at 1/(n+1), 2/(n+1)... of the instances completed.
            n_db = len(self.counts.db_restarts)
            if n_db < cfg.db_restarts and completed >= total * (n_db + 1) / (cfg.db_restarts + 1):
                self.db_outage()
                continue
            if self.counts.kills < cfg.kills and time.monotonic() >= next_kill:
                self.kill_one()
                next_kill = time.monotonic() + self.rng.uniform(*cfg.kill_interval)
            self.tend()
            time.sleep(0.2)
        wall = self.elapsed()
        self.stop_all()
        return self.check(wall)

    # -- the verdict ---------------------------------------------------------
    def check(self, wall: float) -> dict[str, Any]:
        from django.db.models import Count

        from bench.faultapp.durable_programs import AMOUNTS
        from bench.faultapp.models import Account, Effect, WakeUp
        from durable_django.models import DurableEvent, DurableHistory, DurableInstance, Status

        problems: list[str] = []
        statuses = _status_counts()
        n_rows = sum(statuses.values())
        if n_rows != len(self.ids):
            problems.append(f"{len(self.ids)} instances started, {n_rows} in the database")
        if statuses.get(Status.COMPLETED, 0) != len(self.ids):
            problems.append(f"not all completed: {statuses}")

        per_step = Effect.objects.values("key", "label").annotate(n=Count("pk"))
        repeated = [(r["key"], r["label"], r["n"]) for r in per_step if r["n"] > 1]
        have = {(r["key"], r["label"]) for r in per_step}
        missing = [(iid, label) for iid in self.ids for label in AMOUNTS if (iid, label) not in have]
        known = set(self.ids)
        foreign = [k for k in have if k[0] not in known or k[1] not in AMOUNTS]
        if repeated:
            problems.append(f"{len(repeated)} side effects happened more than once, e.g. {repeated[:5]}")
        if missing or foreign:
            problems.append(f"{len(missing)} side effects missing, {len(foreign)} unexpected, e.g. {missing[:5]}")
        balance = sum(AMOUNTS.values())
        wrong_balance = list(Account.objects.exclude(balance=balance).values_list("key", "balance")[:5])
        accounts = Account.objects.count()
        if wrong_balance or accounts != len(self.ids):
            problems.append(f"{accounts} accounts; wrong balances (expected {balance}): {wrong_balance}")

        events = DurableEvent.objects.values("instance_id", "name").annotate(n=Count("pk"))
        event_rows = sum(r["n"] for r in events)
        bad_events = [r for r in events if r["name"] != "go" or r["n"] != 1]
        unconsumed = DurableEvent.objects.filter(consumed_at__isnull=True).count()
        no_event = set(self.ids) - {r["instance_id"] for r in events}
        if bad_events or unconsumed or no_event:
            problems.append(f"events: {len(bad_events)} instances with other than one 'go' event, {unconsumed} "
                            f"unconsumed, {len(no_event)} instances without one")

        wrong_results = []
        for iid, result in DurableInstance.objects.filter(status=Status.COMPLETED).values_list("instance_id", "result"):
            if result != {"seen": [1, 2, 3, 4], "payload": self.payloads.get(iid)}:
                wrong_results.append((iid, result))
        if wrong_results:
            problems.append(f"{len(wrong_results)} results differ (a step saw another run's rows, or a payload was "
                            f"lost): {wrong_results[:3]}")

        sweeps = scheduled = 0
        for s in self.sweepers:
            for line in s.output().splitlines():
                if "instance(s) scheduled." in line:
                    sweeps += 1
                    scheduled += int(line.split()[0])
        wakeups = {r["outcome"]: r["n"] for r in WakeUp.objects.values("outcome").annotate(n=Count("pk"))}
        c = self.counts
        database = None
        if cfg_restarts := self.cfg.db_restarts:
            restarts = [{k: v for k, v in r.items() if not k.startswith("_")} for r in c.db_restarts]
            if len(restarts) != cfg_restarts:
                problems.append(f"{len(restarts)} of {cfg_restarts} database restarts happened")
            # Nobody may need a restart to get over a database restart.
            if c.unexpected_worker_exits or c.worker_starts != self.cfg.workers or c.sweeper_starts != 1:
                problems.append(f"processes restarted: {c.unexpected_worker_exits} worker exits, "
                                f"{c.worker_starts} worker starts, {c.sweeper_starts} sweeper starts")
            for r in restarts:
                missing = sorted({w.name for w in self.workers} - set(r["workers_reconnected_s"]))
                if missing or r["sweeper_reconnected_s"] is None:
                    problems.append(f"after the restart at {r['at_s']} s, not reconnected: workers {missing}, "
                                    f"sweeper {'no' if r['sweeper_reconnected_s'] is None else 'yes'}")
            logs = [w.output() for w in self.workers]
            database = {"restarts": restarts, "server_stops": self.pg.stops if self.pg else 0,
                        "outage_s": self.cfg.db_outage_seconds,
                        "task_retries": sum(_log_count(t, "] retry: Retry in") for t in logs),
                        "runs_cut_mid_run": sum(_log_count(t, "connection was lost during a run") for t in logs),
                        "failed_sweeps": sum(_log_count(s.output(), "sweep failed, database unavailable",
                                                                        prefixed=False) for s in self.sweepers),
                        "reconnect_s_max": max((v for r in restarts for v in
                                                [*r["workers_reconnected_s"].values(), r["sweeper_reconnected_s"]]
                                                if v is not None), default=None)}
        return {
            "ok": not problems,
            "problems": problems,
            "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self.cfg).items()},
            "wall_s": round(wall, 2),
            "instances": {"started": len(self.ids), "in_database": n_rows,
                          "completed": statuses.get(Status.COMPLETED, 0), "statuses": statuses},
            "workers": {"kills": c.kills, "kills_interrupting_a_run": c.kills_interrupting_a_run,
                        "starts": c.worker_starts, "unexpected_exits": c.unexpected_worker_exits,
                        "kill_times_s": c.kill_times_s},
            "broker": {"restarts": c.broker_restarts, "restart_at_s": c.broker_restart_at_s,
                       "messages_lost_in_restart": c.messages_lost_in_restart,
                       "instances_started_while_down": c.started_while_broker_down,
                       "events_published_while_down": c.events_while_broker_down,
                       "caller_errors_while_down": c.caller_errors_while_broker_down},
            "recovery": {"lease_takeovers": DurableHistory.objects.filter(kind="recovered").count(),
                         "wakeups_finished": sum(wakeups.values()), "wakeup_outcomes": wakeups,
                         "redelivered_messages_seen": WakeUp.objects.filter(redelivered=True).count(),
                         "sweeps": sweeps, "instances_scheduled_by_sweeps": scheduled,
                         "sweeper_starts": c.sweeper_starts},
            "events": {"published": c.events_published, "right_after_start": c.events_at_start,
                       "duplicates_sent": c.duplicates_sent, "duplicates_rejected": c.duplicates_rejected,
                       "rows": event_rows, "unconsumed": unconsumed},
            "side_effects": {"rows": Effect.objects.count(), "expected": len(self.ids) * len(AMOUNTS),
                             "per_instance": len(AMOUNTS), "repeated": len(repeated), "missing": len(missing),
                             "accounts": accounts, "wrong_balances": len(wrong_balance),
                             "wrong_results": len(wrong_results)},
            "database": database,
        }


def _log_count(text: str, needle: str, prefixed: bool = True) -> int:
    """Lines of a worker's log with ``needle``; ``prefixed``: only Celery's formatted lines (a warning of the
    app's logger appears twice: once from its own console handler, once through Celery's root handler)."""
    return sum(needle in line and (not prefixed or line.startswith("[")) for line in text.splitlines())


def _status_counts() -> dict[str, int]:
    from django.db.models import Count

    from durable_django.models import DurableInstance

    return {r["status"]: r["n"] for r in DurableInstance.objects.values("status").annotate(n=Count("pk"))}


def run_suite(cfg: FaultConfig) -> dict[str, Any]:
    """Run the fault-injection suite once and return its counts and verdict (``ok``, ``problems``)."""
    if cfg.scenario == "partition":
        from .faults_partition import run_partition

        return run_partition(cfg)
    workdir = Path(cfg.workdir or tempfile.mkdtemp(prefix="durable-faults-"))
    workdir.mkdir(parents=True, exist_ok=True)
    redis = PrivateRedis(workdir)
    pg = None
    if cfg.db_restarts:  # a server of our own to restart, never the shared one
        if cfg.db != "pg":
            raise ValueError("database restarts need --db pg")
        pg = PrivatePostgres()
        pg.start()
        pg.admin(f'CREATE DATABASE "{cfg.pg_name}"')
        os.environ["DURABLE_FAULTS_PG_PORT"] = str(pg.port)
    try:
        res = _run_suite(cfg, workdir, redis, pg)
    finally:
        if pg is not None:
            pg.cleanup()
    res["meta"] = _meta(cfg, redis, workdir)
    return res


def _run_suite(cfg: FaultConfig, workdir: Path, redis: PrivateRedis, pg: PrivatePostgres | None) -> dict[str, Any]:
    sqlite_path = workdir / "faults.sqlite3"
    os.environ.update(DURABLE_FAULTS_DB=cfg.db, DURABLE_FAULTS_PG_NAME=cfg.pg_name,
                      DURABLE_FAULTS_SQLITE=str(sqlite_path), DURABLE_FAULTS_BROKER=redis.url,
                      DURABLE_FAULTS_LEASE=str(cfg.lease), DURABLE_FAULTS_VISIBILITY=str(cfg.visibility),
                      DURABLE_FAULTS_STEP_MS=str(cfg.step_ms))
    if pg is None:
        _create_database(cfg, sqlite_path)
    _setup_django()
    from django.core.management import call_command

    call_command("migrate", verbosity=0, interactive=False)
    redis.start()
    suite = Suite(cfg, workdir, redis, pg)
    try:
        return suite.run()
    finally:
        suite.stop_all()
        redis.stop()
        from django.db import connections

        connections.close_all()
        if cfg.drop_db and cfg.db == "pg" and pg is None:
            _pg_admin(f'DROP DATABASE IF EXISTS "{cfg.pg_name}" WITH (FORCE)')


def _meta(cfg: FaultConfig, redis: PrivateRedis, workdir: Path) -> dict[str, Any]:
    import celery
    import django

    try:
        git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                             timeout=10).stdout.strip()
    except OSError:
        git = ""
    version = subprocess.run([redis.binary, "--version"], capture_output=True, text=True, timeout=10).stdout.split()
    return {"date_utc": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M"), "git": git,
            "python": platform.python_version(), "django": django.get_version(), "celery": celery.__version__,
            "redis_server": next((v.split("=")[1] for v in version if v.startswith("v=")), ""),
            "nproc": os.cpu_count(), "db": cfg.db, "workdir": str(workdir)}


def format_table(res: dict[str, Any]) -> str:
    """The counts as plain text."""
    cfg, inst, w, b, r, e, s = (res[k] for k in ("config", "instances", "workers", "broker", "recovery", "events",
                                                  "side_effects"))
    lines = [
        f"fault injection  {res['meta']['date_utc']}  db={cfg['db']}  {cfg['workers']} workers  "
        f"git {res['meta']['git']}",
        f"  instances         {inst['completed']:,}/{inst['started']:,} completed ({inst['in_database']:,} in the "
        f"database)  in {res['wall_s']:.1f} s wall",
        f"  worker kills      {w['kills']} SIGKILLs ({w['kills_interrupting_a_run']} mid-run), {w['starts']} worker "
        f"starts, {w['unexpected_exits']} unexpected exits",
        f"  broker            {b['restarts']} restart(s) at {b['restart_at_s']} s, {b['messages_lost_in_restart']} "
        f"messages lost with it; {b['instances_started_while_down']} started and "
        f"{b['events_published_while_down']} events published while down "
        f"({len(b['caller_errors_while_down'])} raised to the caller)",
        f"  recovery          {r['lease_takeovers']} lease takeovers, {r['redelivered_messages_seen']} redelivered "
        f"messages, {r['wakeups_finished']:,} wake-ups {r['wakeup_outcomes']}",
        f"  sweeps            {r['sweeps']} durable_resume sweeps scheduled {r['instances_scheduled_by_sweeps']} "
        f"instances ({r['sweeper_starts']} sweeper process(es))",
        f"  events            {e['published']} published ({e['right_after_start']} right after the start), "
        f"{e['duplicates_sent']} duplicates sent, {e['duplicates_rejected']} rejected; {e['rows']} stored, "
        f"{e['unconsumed']} unconsumed",
        f"  side effects      {s['rows']:,} rows (expected {s['expected']:,}), {s['repeated']} repeated, "
        f"{s['missing']} missing, {s['wrong_balances']} wrong balances, {s['wrong_results']} wrong results",
        f"  verdict           {'OK' if res['ok'] else 'FAILED'}",
    ]
    if res.get("database"):
        d = res["database"]
        for r in d["restarts"]:
            workers = ", ".join(f"{k} {v} s" for k, v in sorted(r["workers_reconnected_s"].items()))
            lines.insert(-1, f"  database restart  {r['mode']} stop at {r['at_s']} s ({r['completed_before']} "
                             f"completed), down {r['down_s']} s; reconnected after: {workers}, sweeper "
                             f"{r['sweeper_reconnected_s']} s; first completion {r['first_completion_after_s']} s")
        lines.insert(-1, f"  during outages    {d['task_retries']} task retries (Celery autoretry), "
                         f"{d['runs_cut_mid_run']} runs cut mid-run, {d['failed_sweeps']} failed sweeps")
    lines += [f"    - {p}" for p in res["problems"]]
    return "\n".join(lines)


#: ``--scenario``: (default instances, quick instances, output file stem)
SCENARIOS = {"kills": (500, 60, "faults"), "db-restart": (200, 40, "faults-db-restart"),
             "partition": (0, 0, "faults-partition")}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(prog="python -m bench faults", description=__doc__.splitlines()[0])
    ap.add_argument("--scenario", choices=(*SCENARIOS, "all"), default="kills",
                    help="kills: SIGKILLed workers and a broker restart (default); db-restart: a private "
                         "PostgreSQL server stopped and started while 200 instances run; partition: one worker's "
                         "database link cut mid-step (bench/faults_partition.py); all: the three in turn")
    ap.add_argument("--quick", action="store_true", help="CI size: 60 instances, 3 kills, 150 s deadline "
                    "(db-restart: 40 instances, 1 restart; partition: 2 cuts)")
    ap.add_argument("--instances", type=int, default=None, help="instances to run (default 500; quick 60)")
    ap.add_argument("--workers", type=int, default=2, help="Celery worker processes (default 2)")
    ap.add_argument("--kills", type=int, default=None, help="worker SIGKILLs (default 12; quick 3)")
    ap.add_argument("--db-restarts", type=int, default=None, help="db-restart: stops and starts (default 2; quick 1)")
    ap.add_argument("--db-outage", type=float, default=2.0, help="db-restart: seconds the server stays down")
    ap.add_argument("--cuts", type=int, default=None, help="partition: link cuts (default 4; quick 2)")
    ap.add_argument("--db", choices=("pg", "sqlite"), default="pg")
    ap.add_argument("--pg-name", default="durable_faults", help="PostgreSQL database (dropped and created)")
    ap.add_argument("--drop", action="store_true", help="drop the PostgreSQL database afterwards")
    ap.add_argument("--no-broker-restart", action="store_true")
    ap.add_argument("--deadline", type=float, default=None, help="seconds (default 900; quick 150)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--workdir", type=Path, default=None, help="logs and the SQLite file (default: a temp dir)")
    ap.add_argument("--out", type=Path, default=None, help=f"JSON output (default {DEFAULT_OUT})")
    args = ap.parse_args(argv)
    if args.scenario == "all":
        if args.out is not None:
            ap.error("--out names one file: run the scenarios one by one")
        results = {}
        for name in SCENARIOS:  # each in a process of its own: Django is configured once per process
            rest = [a for a in (argv if argv is not None else sys.argv[2:]) if a not in ("--scenario", "all")]
            proc = subprocess.run([sys.executable, "-m", "bench", "faults", "--scenario", name, *rest], cwd=ROOT)
            results[name] = proc.returncode
        if any(results.values()):
            raise SystemExit(1)
        return results
    default_n, quick_n, stem = SCENARIOS[args.scenario]
    kills_plan = args.scenario == "kills"
    kills = args.kills if args.kills is not None else (0 if not kills_plan else 3 if args.quick else 12)
    cfg = FaultConfig(instances=args.instances or (quick_n if args.quick else default_n), workers=args.workers,
                      kills=kills,
                      db=args.db, pg_name=args.pg_name, broker_restart=kills_plan and not args.no_broker_restart,
                      deadline=args.deadline or ((150.0 if args.quick else 900.0) if kills_plan else
                                                 (100.0 if args.quick else 400.0)),
                      seed=args.seed, drop_db=args.drop, workdir=args.workdir, quick=args.quick,
                      scenario=args.scenario, lease=2.0 if args.scenario == "partition" else 3.0,
                      db_restarts=(args.db_restarts if args.db_restarts is not None else 1 if args.quick else 2)
                      if args.scenario == "db-restart" else 0, db_outage_seconds=args.db_outage,
                      cuts=(args.cuts if args.cuts is not None else 2 if args.quick else 4)
                      if args.scenario == "partition" else 0)
    res = run_suite(cfg)
    if args.scenario == "partition":
        from .faults_partition import format_table as partition_table

        print(partition_table(res))
    else:
        print(format_table(res))
    out = args.out or DEFAULT_OUT.with_name(f"{stem}-quick.json" if args.quick else f"{stem}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2, default=str) + "\n")
    print(f"\nwrote {out}")
    if not res["ok"]:
        raise SystemExit(1)
    return res
