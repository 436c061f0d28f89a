"""What the load suite measures besides the publishers: the invariants over the whole table, EXPLAIN of the
queries, the admin pages, the ``durable_resume`` sweep and one wake-up run in process."""

from __future__ import annotations

import io
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from ..common.environment import ROOT
from ..common.processes import CeleryWorkers, wait_for
from .programs import EFFECT_TABLE, EVENT
from .setup import LoadConfig, Roles

#: A scan (sequential, or of a whole index) reading at least this many rows is reported as a finding
#: (sequential scans of smaller tables are the planner's right choice).
BIG_SCAN = 1000


def check_state(roles: Roles, completed: set[str], phase: str) -> dict[str, Any]:
    """Every instance in ``completed`` finished once with one side effect; every other one is untouched."""
    from django.db import connection

    problems: list[str] = []
    with connection.cursor() as cur:
        cur.execute(f"""
            SELECT i.instance_id, i.status, i.version, i.steps, i.result,
                   (SELECT count(*) FROM {EFFECT_TABLE} f WHERE f.instance_key = i.instance_id),
                   (SELECT count(*) FROM {EFFECT_TABLE} f WHERE f.instance_key = i.instance_id
                                                              AND f.target = i.instance_id),
                   (SELECT count(*) FROM durable_django_durablehistory h
                     WHERE h.instance_id = i.instance_id AND h.kind = 'completed'),
                   (SELECT count(*) FROM durable_django_durablehistory h
                     WHERE h.instance_id = i.instance_id AND h.kind = 'resumed')
              FROM durable_django_durableinstance i WHERE i.instance_id = ANY(%s)""", [sorted(completed)])
        done_rows = cur.fetchall()
        for iid, status, _version, _steps, result, effects, right, n_completed, n_resumed in done_rows:
            result = json.loads(result) if isinstance(result, str) else result
            if status != "completed" or result != iid or effects != 1 or right != 1 or n_completed != 1:
                problems.append(f"{iid}: status {status}, result {result!r}, {effects} side effect(s) "
                                f"({right} for itself), {n_completed} completion(s), {n_resumed} resume(s)")
        if len(done_rows) != len(completed):
            problems.append(f"{len(completed) - len(done_rows)} completed instance(s) missing")
        # Everything else: as cloned (status, version, no side effect, no new history, no event unless planted).
        cur.execute("""
            SELECT count(*) FILTER (WHERE i.status NOT IN ('paused', 'running')),
                   count(*) FILTER (WHERE i.version <> 0),
                   count(*) FILTER (WHERE i.updated_at <> i.created_at),
                   count(*)
              FROM durable_django_durableinstance i WHERE NOT (i.instance_id = ANY(%s))""", [sorted(completed)])
        not_waiting, version_changed, updated, others = cur.fetchone()
        cur.execute(f"SELECT count(*) FROM {EFFECT_TABLE} WHERE NOT (instance_key = ANY(%s))", [sorted(completed)])
        stray_effects = cur.fetchone()[0]
        cur.execute("""SELECT count(*) FROM durable_django_durablehistory
                        WHERE NOT (instance_id = ANY(%s)) AND actor <> 'load-clone'""", [sorted(completed)])
        stray_history = cur.fetchone()[0]
        cur.execute("""SELECT count(*) FROM durable_django_durableevent
                        WHERE NOT (instance_id = ANY(%s)) AND NOT (instance_id = ANY(%s))""",
                    [sorted(completed), roles.lost_wakeups])
        stray_events = cur.fetchone()[0]
    for what, n in (("not waiting", not_waiting), ("with a changed version", version_changed),
                    ("updated", updated), ("with a side effect", stray_effects),
                    ("with new history rows", stray_history), ("with an event", stray_events)):
        if n:
            problems.append(f"{n} instance(s) that should be untouched are {what}")
    return {"phase": phase, "completed_checked": len(done_rows), "untouched_checked": others,
            "problems": problems, "ok": not problems}


def explain(sql: str) -> dict[str, Any]:
    """EXPLAIN (ANALYZE, BUFFERS) of a SELECT: execution ms, plan nodes, scans of our tables (see BIG_SCAN)."""
    from django.db import connection

    with connection.cursor() as cur:
        cur.execute("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + sql)
        plan = cur.fetchone()[0]
        cur.execute("EXPLAIN (COSTS OFF) " + sql)
        text = "\n".join(r[0] for r in cur.fetchall())
    if isinstance(plan, str):
        plan = json.loads(plan)
    top = plan[0]
    nodes, seq = [], []

    def walk(node: dict) -> None:
        label = node["Node Type"]
        if node.get("Index Name"):
            label += f" using {node['Index Name']}"
        if node.get("Relation Name"):
            label += f" on {node['Relation Name']}"
        nodes.append(label)
        if node.get("Relation Name", "").startswith("durable_") and "Scan" in node["Node Type"]:
            loops = node.get("Actual Loops", 1)
            read = int((node.get("Rows Removed by Filter", 0) + node.get("Actual Rows", 0)) * loops)
            if node["Node Type"] == "Seq Scan" or read >= BIG_SCAN:
                seq.append({"node": node["Node Type"], "index": node.get("Index Name"),
                            "relation": node["Relation Name"], "rows_read": read, "big": read >= BIG_SCAN})
        for child in node.get("Plans", ()):
            walk(child)

    walk(top["Plan"])
    return {"sql": sql, "ms": top.get("Execution Time"), "nodes": nodes, "scans": seq, "plan": text}


def _capture(func: Callable[[], Any]) -> tuple[Any, list[dict[str, Any]]]:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as ctx:
        value = func()
    return value, list(ctx.captured_queries)


def _explain_selects(queries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for q in queries:
        sql = q["sql"]
        if sql.lstrip().upper().startswith("SELECT") and "durable_" in sql:
            out.append({**explain(sql), "captured_ms": float(q["time"]) * 1e3})
    return out


def measure_admin(cfg: LoadConfig, roles: Roles) -> dict[str, Any]:
    """Time the changelist (plain, filtered, searched, page 2) and a detail page; queries per request."""
    from django.contrib.auth import get_user_model
    from django.db import connection
    from django.test import Client

    User = get_user_model()
    user = User.objects.filter(username="load-admin").first() or User.objects.create_superuser(
        "load-admin", "load@example.com", "load-admin-pw")
    client = Client()
    client.force_login(user)
    base = "/admin/durable_django/durableinstance/"
    target = roles.waiting[len(roles.waiting) // 2]
    prefix = target[:-2]  # ~100 ids share it
    pages = {
        "changelist": base,
        "filter status=paused": base + "?status__exact=paused",
        "filter waits=timer": base + "?waits=timer",
        f"search {prefix!r} (prefix)": base + f"?q={prefix}",
        "page 2": base + "?p=2",
        "detail page": base + f"{target}/change/",
    }
    for url in pages.values():  # warm-up; every page must render
        r = client.get(url)
        if r.status_code != 200:
            raise RuntimeError(f"GET {url} -> {r.status_code}")
    samples: dict[str, list[float]] = {k: [] for k in pages}
    names = list(pages)
    for rnd in range(cfg.admin_repeats):
        for name in names[rnd % len(names):] + names[:rnd % len(names)]:
            t0 = time.perf_counter()
            r = client.get(pages[name])
            samples[name].append(time.perf_counter() - t0)
            assert r.status_code == 200
    res: dict[str, Any] = {"rows": None, "pages": {}}
    with connection.cursor() as cur:
        cur.execute("SELECT count(*) FROM durable_django_durableinstance")
        res["rows"] = cur.fetchone()[0]
    for name, url in pages.items():
        resp, queries = _capture(lambda u=url: client.get(u))
        body = resp.content.decode()
        if name.startswith("search") and body.count(f"{prefix}") < 2:
            raise RuntimeError(f"search for {prefix!r} found nothing")
        explains = _explain_selects(queries)
        res["pages"][name] = {
            "url": url, "median_ms": statistics.median(samples[name]) * 1e3, "min_ms": min(samples[name]) * 1e3,
            "queries": len(queries), "sql_ms": sum(float(q["time"]) for q in queries) * 1e3,
            "slowest": max(explains, key=lambda e: e["ms"] or 0, default=None),
            "scans": [{"sql": e["sql"][:400], **s, "ms": e["ms"]} for e in explains for s in e["scans"]],
            "explains": explains,
        }
    return res


def measure_sweep(cfg: LoadConfig, roles: Roles, env: dict[str, str], workers: CeleryWorkers) -> dict[str, Any]:
    """``durable_resume`` over the whole table: dry runs timed, EXPLAIN of its queries, then real sweeps.

    The real sweep is split with timestamps: the due queries and the wake-ups
    sent (Celery's ``after_task_publish`` in this process), then the
    ``sweep_finished`` receivers (the human-task app's repair), up to a
    receiver of ours connected after theirs.
    """
    from celery.signals import after_task_publish
    from django.core.management import call_command

    from durable_django import worker
    from durable_django.models import DurableInstance, Status
    from durable_django.signals import sweep_finished

    expected = roles.due
    res: dict[str, Any] = {"due_planted": {"due timers": len(roles.due_timers),
                                           "expired leases": len(roles.expired_leases),
                                           "events without wake-up": len(roles.lost_wakeups)}}
    ids, queries = _capture(worker.due_instances)
    found = set(ids)
    res["dry_run_found"] = len(found)
    res["dry_run_exact"] = found == expected
    if found != expected:
        res["dry_run_missing"] = sorted(expected - found)[:20]
        res["dry_run_extra"] = sorted(found - expected)[:20]
    res["queries"] = len(queries)
    res["explains"] = _explain_selects(queries)
    res["scans"] = [{"sql": e["sql"][:400], **s, "ms": e["ms"]} for e in res["explains"] for s in e["scans"]]

    direct, command = [], []
    for _ in range(cfg.sweep_repeats):
        t0 = time.perf_counter()
        worker.sweep(dry_run=True)
        direct.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        call_command("durable_resume", "--dry-run", stdout=io.StringIO())
        command.append(time.perf_counter() - t0)
    res["executor_sweep_dry_run_ms"] = {"median": statistics.median(direct) * 1e3, "min": min(direct) * 1e3}
    res["command_dry_run_ms"] = {"median": statistics.median(command) * 1e3, "min": min(command) * 1e3}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "manage.py", "durable_resume", "--dry-run"], cwd=ROOT,
                          env={**os.environ, **env}, capture_output=True, text=True)
    res["command_process_dry_run_s"] = time.perf_counter() - t0
    if proc.returncode != 0 or f"{len(expected)} instance(s) would resume" not in proc.stdout:
        raise RuntimeError(f"manage.py durable_resume --dry-run: exit {proc.returncode}\n{proc.stdout[-500:]}"
                           f"\n{proc.stderr[-2000:]}")

    marks: dict[str, float] = {}

    def published(**kwargs: Any) -> None:
        marks["last_send"] = time.perf_counter()

    def finished(sender: Any, **kwargs: Any) -> None:
        marks["receivers_done"] = time.perf_counter()

    after_task_publish.connect(published, weak=False)
    sweep_finished.connect(finished, weak=False, dispatch_uid="bench.load.sweep_finished")
    try:
        # 1. The first real sweep of this process: sends the wake-ups; the workers run them to completion.
        t_send = time.time()
        t0 = marks["start"] = time.perf_counter()
        buf = io.StringIO()
        call_command("durable_resume", stdout=buf)
        t1 = time.perf_counter()
        res["first_sweep"] = {
            "total_ms": (t1 - t0) * 1e3, "output": buf.getvalue().strip().splitlines()[-1:],
            "query_and_send_ms": (marks.get("last_send", t0) - t0) * 1e3,
            "sweep_finished_receivers_ms": (marks["receivers_done"] - marks.get("last_send", t0)) * 1e3}
        due_ids = sorted(expected)
        swept = DurableInstance.objects.filter(pk__in=due_ids)
        wait_for(lambda: swept.filter(status=Status.COMPLETED).count() == len(due_ids), cfg.timeout_s,
                  f"the {len(due_ids)} swept instances to complete", interval=0.1, check=workers.check)
        last = max(DurableInstance.objects.filter(pk__in=due_ids).values_list("finished_at", flat=True))
        res["swept_completed_s"] = last.timestamp() - t_send
        # 2. The next sweep of the same process (nothing due): what a `durable_resume --loop` pays per round.
        marks.clear()
        t0 = time.perf_counter()
        _, queries = _capture(lambda: call_command("durable_resume", stdout=io.StringIO()))
        res["next_sweep"] = {"total_ms": (time.perf_counter() - t0) * 1e3, "queries": len(queries)}
        explains = _explain_selects(queries)
        res["next_sweep"]["explains"] = explains
        res["next_sweep"]["scans"] = [{"sql": e["sql"][:400], **s, "ms": e["ms"]} for e in explains
                                          for s in e["scans"]]
    finally:
        after_task_publish.disconnect(published)
        sweep_finished.disconnect(dispatch_uid="bench.load.sweep_finished")
    res["after_sweep_due"] = len(worker.due_instances())
    return res


def measure_wakeup(cfg: LoadConfig, ids: list[str]) -> dict[str, Any]:
    """One wake-up run in this process (``worker.run_instance``) with and without the human-task receivers.

    Interleaved: the instances alternate between the two variants. Their
    events are rows inserted beforehand (no Celery). CPU is this process's
    (the ORM, durable, signals); the database's is not in it.
    """
    from durable_django import worker
    from durable_django.humantasks import sync
    from durable_django.models import DurableEvent
    from durable_django.signals import instance_transition

    DurableEvent.objects.bulk_create([DurableEvent(instance_id=iid, name=EVENT, payload={"target": iid})
                                      for iid in ids])
    samples: dict[str, list[tuple[float, float]]] = {"with": [], "without": []}
    for n, iid in enumerate(ids):
        variant = "with" if n % 2 == 0 else "without"
        if variant == "without":
            instance_transition.disconnect(dispatch_uid="durable_django.humantasks.sync")
        try:
            c0, t0 = time.process_time(), time.perf_counter()
            outcome = worker.run_instance(iid)
            c1, t1 = time.process_time(), time.perf_counter()
        finally:
            sync.connect()
        if outcome != "completed":
            raise RuntimeError(f"in-process wake-up of {iid} ended {outcome}")
        if n >= 2:  # the first of each variant warms caches
            samples[variant].append((t1 - t0, c1 - c0))
    out = {}
    for variant, xs in samples.items():
        out[variant] = {"n": len(xs), "wall_ms": statistics.median(x[0] for x in xs) * 1e3,
                        "cpu_ms": statistics.median(x[1] for x in xs) * 1e3}
    return out

