"""Fault scenario ``partition``: a worker cut off from the database in the middle of a step.

``python -m bench faults --scenario partition [--cuts 4] [--quick]``

A private PostgreSQL server (:mod:`bench.private_postgres`), a private redis-server as broker, the sweeper
(``durable_resume --loop``) and one Celery worker, the *victim*, whose database connections all go through a
:class:`bench.tcp_proxy.TcpProxy`. Each round:

1. starts ``partition_process`` (``open_account``, a long step that writes an ``Effect`` row and then works
   for ``long_step_seconds`` with its transaction open, ``record "ship"``); the victim takes it;
2. once the victim is inside the long step, cuts its link: ``blackhole`` in even rounds (nothing crosses,
   nothing is closed: its checkpoint waits in the network), ``reset`` in odd ones (its connections are reset:
   the checkpoint fails at once); its lease heartbeat cannot get through either;
3. starts a second worker, the *rescuer*, on a direct link: once the lease has expired, the sweep hands the
   instance to it and it completes it (the long step runs again, from the last checkpoint);
4. restores the link: in a blackhole round the victim's late checkpoint now reaches the database and is
   refused (``LeaseLost``: the lease is no longer the victim's); its uncommitted step is rolled back;
5. stops the rescuer and starts one more instance: only the victim is left to run it, which shows that it
   got over the cut without a restart.

The verdict: every instance completed; every side effect exactly once (one ``Effect`` row per step, balance
1,000, each step saw exactly the rows before it); every cut instance was taken over by the rescuer; every
blackhole round's late checkpoint was refused; the victim ran every follow-up instance; the victim and the
sweeper were never restarted.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

from ..common.environment import setup_django
from ..common.processes import wait_for
from ..private_postgres import PrivatePostgres
from ..tcp_proxy import BLACKHOLE, RESET, TcpProxy
from .setup import SETTINGS, FaultConfig, PrivateRedis, run_meta_of
from .suite import Suite
from .verdict import log_count, status_counts

LABELS = ("open", "long", "ship")


def _completed(iid: str) -> bool:
    from durable_django.models import DurableInstance, Status

    return DurableInstance.objects.filter(pk=iid, status=Status.COMPLETED).exists()


class Partition:
    """The rounds of one run, and what they saw."""

    def __init__(self, suite: Suite, proxy: TcpProxy, markers: Path) -> None:
        self.suite, self.proxy, self.markers, self.cfg = suite, proxy, markers, suite.cfg
        self.rounds: list[dict[str, Any]] = []
        self.problems: list[str] = []
        self.retired: list = []

    def run(self) -> dict[str, Any]:
        suite = self.suite
        victim = suite.start_worker({"DURABLE_FAULTS_PG_PORT": str(self.proxy.port)})
        suite.start_sweeper(interval=0.5)
        wait_for(lambda: victim in suite.ready_workers(), 90, "the victim worker to be ready")
        self.victim = victim
        for r in range(self.cfg.cuts):
            try:
                self.round(r, BLACKHOLE if r % 2 == 0 else RESET)
            except TimeoutError as exc:
                self.proxy.restore()
                self.problems.append(f"round {r}: {exc}")
                break
        return self.check(suite.elapsed())

    def round(self, r: int, mode: str) -> None:
        import durable_django as dd
        from bench.faultapp.durable_programs import partition_process
        from bench.faultapp.models import WakeUp
        from durable_django.models import DurableHistory

        suite, victim = self.suite, self.victim
        key, after = f"cut{r}", f"cut{r}-after"
        info: dict[str, Any] = {"round": r, "mode": mode, "instance": key}
        self.rounds.append(info)
        dd.start(partition_process, key, self.cfg.long_step_seconds, instance_id=key)
        marker = wait_for(lambda: sorted(self.markers.glob(f"{key}.*")), 60, f"{key} to enter its long step")[0]
        info["long_step_pid_is_victim"] = int(marker.name.split(".")[1]) == victim.proc.pid
        self.proxy.cut(mode)
        t_cut = time.monotonic()
        rescuer = suite.start_worker()
        wait_for(lambda: _completed(key), 120, f"the rescuer to complete {key}")
        info["completed_by_rescuer_after_cut_s"] = round(time.monotonic() - t_cut, 2)
        actors = list(DurableHistory.objects.filter(instance_id=key, kind="recovered").values_list("actor", flat=True))
        info["taken_over_by_rescuer"] = any(a.startswith(f"{rescuer.name}@") for a in actors)
        self.proxy.restore()
        t_restore = time.monotonic()
        info["cut_s"] = round(t_restore - t_cut, 2)
        if mode == BLACKHOLE:
            wait_for(lambda: WakeUp.objects.filter(instance_id=key, worker__startswith=f"{victim.name}@",
                                                outcome="lease-lost").exists(), 60,
                  "the victim's late checkpoint to be refused (LeaseLost)")
            info["late_checkpoint_refused_after_restore_s"] = round(time.monotonic() - t_restore, 2)
        rescuer.proc.terminate()
        rescuer.proc.wait(timeout=30)
        suite.workers.remove(rescuer)
        self.retired.append(rescuer)
        t_after = time.monotonic()
        dd.start(partition_process, after, 0.0, instance_id=after)
        wait_for(lambda: _completed(after), 90, f"the victim to run {after} after the link came back")
        info["victim_ran_next_instance_after_restore_s"] = round(time.monotonic() - t_restore, 2)
        info["next_instance_start_to_completion_s"] = round(time.monotonic() - t_after, 2)
        # The completion's history row is written by the completing checkpoint itself, under its worker id.
        info["next_instance_ran_by_victim"] = DurableHistory.objects.filter(
            instance_id=after, kind="completed", actor__startswith=f"{victim.name}@").exists()

    def check(self, wall: float) -> dict[str, Any]:
        from django.db.models import Count

        from bench.faultapp.models import Account, Effect, WakeUp
        from durable_django.models import DurableInstance, Status

        problems = self.problems
        ids = [iid for r in self.rounds for iid in (r["instance"], f"{r['instance']}-after")]
        statuses = status_counts()
        if statuses.get(Status.COMPLETED, 0) != len(ids) or sum(statuses.values()) != len(ids):
            problems.append(f"{len(ids)} instances started, statuses {statuses}")
        rows = Effect.objects.values("key", "label").annotate(n=Count("pk"))
        per_step = {(x["key"], x["label"]): x["n"] for x in rows}
        repeated = {k: n for k, n in per_step.items() if n > 1}
        missing = [(iid, label) for iid in ids for label in LABELS if (iid, label) not in per_step]
        if repeated or missing:
            problems.append(f"side effects: repeated {repeated}, missing {missing}")
        wrong_balance = list(Account.objects.exclude(balance=1000).values_list("key", "balance"))
        if wrong_balance:
            problems.append(f"wrong balances (expected 1000): {wrong_balance}")
        wrong = [(i, res) for i, res in DurableInstance.objects.values_list("instance_id", "result")
                 if res != {"seen": [1, 2, 3]}]
        if wrong:
            problems.append(f"results differ (a step saw another run's rows): {wrong}")
        for r in self.rounds:
            bad = [k for k in ("long_step_pid_is_victim", "taken_over_by_rescuer", "next_instance_ran_by_victim")
                   if not r.get(k)]
            if r["mode"] == BLACKHOLE and "late_checkpoint_refused_after_restore_s" not in r:
                bad.append("late_checkpoint_refused")
            if bad:
                problems.append(f"round {r['round']} ({r['mode']}): not {bad}")
        victim = self.victim
        victim_log = victim.output()
        restarts = {"victim_alive": victim.proc.poll() is None, "sweeper_starts": self.suite.counts.sweeper_starts,
                    "sweeper_alive": all(s.proc.poll() is None for s in self.suite.sweepers)}
        if not (restarts["victim_alive"] and restarts["sweeper_alive"] and restarts["sweeper_starts"] == 1):
            problems.append(f"a process died or was restarted: {restarts}")
        lease_lost = WakeUp.objects.filter(worker__startswith=f"{victim.name}@", outcome="lease-lost").count()
        return {
            "ok": not problems,
            "problems": problems,
            "scenario": "partition",
            "config": {"cuts": self.cfg.cuts, "lease_s": self.cfg.lease, "long_step_s": self.cfg.long_step_seconds,
                       "quick": self.cfg.quick},
            "wall_s": round(wall, 2),
            "instances": {"started": len(ids), "completed": statuses.get(Status.COMPLETED, 0), "statuses": statuses},
            "rounds": self.rounds,
            "victim": {"late_checkpoints_refused_lease_lost": lease_lost,
                       "runs_cut_mid_run": log_count(victim_log, "connection was lost during a run"),
                       "task_retries": log_count(victim_log, "] retry: Retry in"),
                       "heartbeats_failed": log_count(victim_log, "lease heartbeat of")},
            "processes": restarts,
            "proxy": dict(self.proxy.counts),
            "side_effects": {"rows": sum(per_step.values()), "expected": len(ids) * len(LABELS),
                             "per_instance": len(LABELS), "repeated": len(repeated), "missing": len(missing)},
        }


def run_partition(cfg: FaultConfig) -> dict[str, Any]:
    """Run the partition scenario ``cfg.cuts`` times; returns its counts and verdict."""
    workdir = Path(cfg.workdir or tempfile.mkdtemp(prefix="durable-faults-"))
    workdir.mkdir(parents=True, exist_ok=True)
    markers = workdir / "markers"
    markers.mkdir(exist_ok=True)
    redis = PrivateRedis(workdir)
    pg = PrivatePostgres()
    proxy = None
    try:
        pg.start()
        pg.admin(f'CREATE DATABASE "{cfg.pg_name}"')
        proxy = TcpProxy(pg.port).start()
        os.environ.update(DURABLE_FAULTS_DB="pg", DURABLE_FAULTS_PG_NAME=cfg.pg_name,
                          DURABLE_FAULTS_PG_PORT=str(pg.port), DURABLE_FAULTS_BROKER=redis.url,
                          DURABLE_FAULTS_LEASE=str(cfg.lease), DURABLE_FAULTS_VISIBILITY=str(cfg.visibility),
                          DURABLE_FAULTS_STEP_MS=str(cfg.step_ms), DURABLE_FAULTS_MARKERS=str(markers))
        setup_django(settings=SETTINGS)
        from django.core.management import call_command

        call_command("migrate", verbosity=0, interactive=False)
        redis.start()
        suite = Suite(cfg, workdir, redis, pg)
        part = Partition(suite, proxy, markers)
        try:
            res = part.run()
        finally:
            for child in part.retired:
                if child.proc.poll() is None:
                    child.proc.kill()
            suite.stop_all()
            redis.stop()
            from django.db import connections

            connections.close_all()
    finally:
        if proxy is not None:
            proxy.stop()
        pg.cleanup()
    res["meta"] = run_meta_of(cfg, redis, workdir)
    return res


def format_table(res: dict[str, Any]) -> str:
    """The counts as plain text."""
    inst, v, fx = res["instances"], res["victim"], res["side_effects"]
    lines = [f"partition  {res['meta']['date_utc']}  {res['config']['cuts']} cuts, lease {res['config']['lease_s']} s, "
             f"long step {res['config']['long_step_s']} s  git {res['meta']['git']}",
             f"  instances         {inst['completed']}/{inst['started']} completed in {res['wall_s']:.1f} s wall"]
    for r in res["rounds"]:
        refused = r.get("late_checkpoint_refused_after_restore_s")
        lines.append(
            f"  cut {r['round']} ({r['mode']:9}) taken over and completed "
            f"{r.get('completed_by_rescuer_after_cut_s')} s "
            f"after the cut; link down {r.get('cut_s')} s; "
            + (f"late checkpoint refused {refused} s after the restore; " if refused is not None else "")
            + f"victim ran the next instance {r.get('victim_ran_next_instance_after_restore_s')} s after it "
            f"(the rescuer stopped first; start to completion {r.get('next_instance_start_to_completion_s')} s)")
    lines += [
        f"  victim            {v['late_checkpoints_refused_lease_lost']} late checkpoints refused (LeaseLost), "
        f"{v['runs_cut_mid_run']} runs cut mid-run, {v['task_retries']} task retries, {v['heartbeats_failed']} "
        f"failed lease heartbeats; processes {res['processes']}",
        f"  proxy             {res['proxy']}",
        f"  side effects      {fx['rows']} rows (expected {fx['expected']}), {fx['repeated']} repeated, "
        f"{fx['missing']} missing",
        f"  verdict           {'OK' if res['ok'] else 'FAILED'}",
    ]
    lines += [f"    - {p}" for p in res["problems"]]
    return "\n".join(lines)
