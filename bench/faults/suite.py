"""One run of the fault suite (:class:`Suite`): the worker and sweeper processes it starts, kills and
restarts, the instances and events it sends, the broker and database outages, and the loop that drives them."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from ..common.environment import ROOT
from ..common.processes import stop_process
from ..private_postgres import PrivatePostgres
from .setup import SETTINGS, Child, Counts, FaultConfig, PrivateRedis
from .verdict import status_counts, verdict


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
            stop_process(child.proc, timeout=10)

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
        completed = status_counts().get("completed", 0)
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
        if r["first_completion_after_s"] is None and status_counts().get("completed", 0) > r["completed_before"]:
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
            statuses = status_counts()
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
        return verdict(self, wall)

