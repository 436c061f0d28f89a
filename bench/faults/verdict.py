"""The fault suite's verdict: after a run, every invariant checked from the database and the processes' logs."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .suite import Suite


def verdict(suite: Suite, wall: float) -> dict[str, Any]:
    """The counts of ``suite`` (a finished :class:`Suite`) and the verdict (``ok``, ``problems``)."""
    from django.db.models import Count

    from bench.faultapp.durable_programs import AMOUNTS
    from bench.faultapp.models import Account, Effect, WakeUp
    from durable_django.models import DurableEvent, DurableHistory, DurableInstance, Status

    problems: list[str] = []
    statuses = status_counts()
    n_rows = sum(statuses.values())
    if n_rows != len(suite.ids):
        problems.append(f"{len(suite.ids)} instances started, {n_rows} in the database")
    if statuses.get(Status.COMPLETED, 0) != len(suite.ids):
        problems.append(f"not all completed: {statuses}")

    per_step = Effect.objects.values("key", "label").annotate(n=Count("pk"))
    repeated = [(r["key"], r["label"], r["n"]) for r in per_step if r["n"] > 1]
    have = {(r["key"], r["label"]) for r in per_step}
    missing = [(iid, label) for iid in suite.ids for label in AMOUNTS if (iid, label) not in have]
    known = set(suite.ids)
    foreign = [k for k in have if k[0] not in known or k[1] not in AMOUNTS]
    if repeated:
        problems.append(f"{len(repeated)} side effects happened more than once, e.g. {repeated[:5]}")
    if missing or foreign:
        problems.append(f"{len(missing)} side effects missing, {len(foreign)} unexpected, e.g. {missing[:5]}")
    balance = sum(AMOUNTS.values())
    wrong_balance = list(Account.objects.exclude(balance=balance).values_list("key", "balance")[:5])
    accounts = Account.objects.count()
    if wrong_balance or accounts != len(suite.ids):
        problems.append(f"{accounts} accounts; wrong balances (expected {balance}): {wrong_balance}")

    events = DurableEvent.objects.values("instance_id", "name").annotate(n=Count("pk"))
    event_rows = sum(r["n"] for r in events)
    bad_events = [r for r in events if r["name"] != "go" or r["n"] != 1]
    unconsumed = DurableEvent.objects.filter(consumed_at__isnull=True).count()
    no_event = set(suite.ids) - {r["instance_id"] for r in events}
    if bad_events or unconsumed or no_event:
        problems.append(f"events: {len(bad_events)} instances with other than one 'go' event, {unconsumed} "
                        f"unconsumed, {len(no_event)} instances without one")

    wrong_results = []
    for iid, result in DurableInstance.objects.filter(status=Status.COMPLETED).values_list("instance_id", "result"):
        if result != {"seen": [1, 2, 3, 4], "payload": suite.payloads.get(iid)}:
            wrong_results.append((iid, result))
    if wrong_results:
        problems.append(f"{len(wrong_results)} results differ (a step saw another run's rows, or a payload was "
                        f"lost): {wrong_results[:3]}")

    sweeps = scheduled = 0
    for s in suite.sweepers:
        for line in s.output().splitlines():
            if "instance(s) scheduled." in line:
                sweeps += 1
                scheduled += int(line.split()[0])
    wakeups = {r["outcome"]: r["n"] for r in WakeUp.objects.values("outcome").annotate(n=Count("pk"))}
    c = suite.counts
    database = None
    if cfg_restarts := suite.cfg.db_restarts:
        restarts = [{k: v for k, v in r.items() if not k.startswith("_")} for r in c.db_restarts]
        if len(restarts) != cfg_restarts:
            problems.append(f"{len(restarts)} of {cfg_restarts} database restarts happened")
        # Nobody may need a restart to get over a database restart.
        if c.unexpected_worker_exits or c.worker_starts != suite.cfg.workers or c.sweeper_starts != 1:
            problems.append(f"processes restarted: {c.unexpected_worker_exits} worker exits, "
                            f"{c.worker_starts} worker starts, {c.sweeper_starts} sweeper starts")
        for r in restarts:
            missing = sorted({w.name for w in suite.workers} - set(r["workers_reconnected_s"]))
            if missing or r["sweeper_reconnected_s"] is None:
                problems.append(f"after the restart at {r['at_s']} s, not reconnected: workers {missing}, "
                                f"sweeper {'no' if r['sweeper_reconnected_s'] is None else 'yes'}")
        logs = [w.output() for w in suite.workers]
        database = {"restarts": restarts, "server_stops": suite.pg.stops if suite.pg else 0,
                    "outage_s": suite.cfg.db_outage_seconds,
                    "task_retries": sum(log_count(t, "] retry: Retry in") for t in logs),
                    "runs_cut_mid_run": sum(log_count(t, "connection was lost during a run") for t in logs),
                    "failed_sweeps": sum(log_count(s.output(), "sweep failed, database unavailable",
                                                                    prefixed=False) for s in suite.sweepers),
                    "reconnect_s_max": max((v for r in restarts for v in
                                            [*r["workers_reconnected_s"].values(), r["sweeper_reconnected_s"]]
                                            if v is not None), default=None)}
    return {
        "ok": not problems,
        "problems": problems,
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(suite.cfg).items()},
        "wall_s": round(wall, 2),
        "instances": {"started": len(suite.ids), "in_database": n_rows,
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
        "side_effects": {"rows": Effect.objects.count(), "expected": len(suite.ids) * len(AMOUNTS),
                         "per_instance": len(AMOUNTS), "repeated": len(repeated), "missing": len(missing),
                         "accounts": accounts, "wrong_balances": len(wrong_balance),
                         "wrong_results": len(wrong_results)},
        "database": database,
    }


def log_count(text: str, needle: str, prefixed: bool = True) -> int:
    """Lines of a worker's log with ``needle``; ``prefixed``: only Celery's formatted lines (a warning of the
    app's logger appears twice: once from its own console handler, once through Celery's root handler)."""
    return sum(needle in line and (not prefixed or line.startswith("[")) for line in text.splitlines())


def status_counts() -> dict[str, int]:
    from django.db.models import Count

    from durable_django.models import DurableInstance

    return {r["status"]: r["n"] for r in DurableInstance.objects.values("status").annotate(n=Count("pk"))}

