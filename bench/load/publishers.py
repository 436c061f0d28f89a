"""The load suite's publishers: the plan of what each sends (with duplicates), the publisher process, and
the parent that releases them together and measures until every target completed."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from ..common.environment import ROOT, cpu_s, machine_busy
from ..common.processes import CeleryWorkers, wait_for
from ..common.stats import summary_ms
from .programs import EVENT
from .setup import LoadConfig, Roles


def publish_plan(cfg: LoadConfig, targets: list[str], seed: int = 7) -> list[list[tuple[str, str, bool, float]]]:
    """Per publisher, the (instance id, kind, rendezvous, send offset in s) it sends, in order.

    Kinds: ``first`` (each target once, spread over the publishers), ``repeat``
    (sent again right away by the same publisher: same idempotency key),
    ``concurrent`` (the same event sent by two publishers at once), ``late``
    (sent again at the end, when the instance has usually completed).
    Concurrent pairs go from publisher 2k to publisher 2k+1, at the same
    position of both lists, and both calls wait for each other first (a Redis
    rendezvous), so they hit the database together. Pairs are in the same
    order in both lists, so the rendezvous cannot deadlock. With ``--rate``
    each publisher sends its n-th item ``n / (rate / publishers)`` seconds
    after the start, and a concurrent copy at the time of the item it copies.
    """
    rng = random.Random(seed)
    order = targets[:]
    rng.shuffle(order)
    p = cfg.publishers
    lists: list[list[tuple[str, str, bool]]] = [[(iid, "first", False) for iid in order[k::p]] for k in range(p)]
    owner = {iid: n % p for n, iid in enumerate(order)}
    n = len(order)
    picks = order[:]
    rng.shuffle(picks)
    n_rep, n_conc, n_late = (int(n * cfg.repeat_share), int(n * cfg.concurrent_share), int(n * cfg.late_share))
    pairable = [iid for iid in picks if owner[iid] % 2 == 0 and owner[iid] + 1 < p]
    concurrent = set(pairable[:n_conc])
    rest = [iid for iid in picks if iid not in concurrent]
    repeat = set(rest[:n_rep])
    late = rest[n_rep:n_rep + n_late]
    for k in range(0, p - 1, 2):
        mine, partner = lists[k], lists[k + 1]
        for j, (iid, _, _) in enumerate(list(mine)):
            if iid in concurrent:
                mine[j] = (iid, "first", True)
                partner.insert(min(j, len(partner)), (iid, "concurrent", True))
    out = []
    for k in range(p):
        seq = []
        for item in lists[k]:
            seq.append(item)
            if item[1] == "first" and item[0] in repeat:
                seq.append((item[0], "repeat", False))
        out.append(seq)
    for iid in late:
        out[owner[iid]].append((iid, "late", False))
    per_s = cfg.rate / p if cfg.rate else 0.0
    timed = [[(*item, n / per_s if per_s else 0.0) for n, item in enumerate(seq)] for seq in out]
    if per_s:
        first_at = {item[0]: item[3] for seq in timed for item in seq if item[1] == "first"}
        timed = [sorted(((iid, kind, rv, first_at[iid] if kind == "concurrent" else at)
                         for iid, kind, rv, at in seq), key=lambda item: item[3]) for seq in timed]
    return timed


def publisher_main(plan_path: Path, out_path: Path, paced: bool) -> None:
    """A publisher process: set up Django, say "ready", wait for "go" on stdin, publish its list, write JSON."""
    import django

    django.setup()
    import redis
    from django.db import connection

    import bench.django_celery  # noqa: F401
    import durable_django as dd
    from durable_django.exceptions import InstanceFinished

    plan = json.loads(plan_path.read_text())
    connection.ensure_connection()
    r = redis.Redis.from_url(os.environ["DURABLE_BENCH_BROKER"], socket_timeout=120)
    prefix = f"{os.environ['DURABLE_BENCH_QUEUE']}:rv"
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        return
    records = []
    start = time.time()
    cpu0 = time.process_time()
    waited = 0.0
    for iid, kind, rendezvous, at in plan:
        if paced:
            delay = start + at - time.time()
            if delay > 0:
                time.sleep(delay)
        if rendezvous:  # both publishers of a concurrent pair arrive here, then both call publish_event
            w0 = time.time()
            other = "concurrent" if kind == "first" else "first"
            r.rpush(f"{prefix}:{iid}:{kind}", 1)
            r.blpop(f"{prefix}:{iid}:{other}", timeout=60)
            waited += time.time() - w0
        t0 = time.time()
        try:
            ev = dd.publish_event(iid, EVENT, {"target": iid}, idempotency_key=f"{EVENT}-{iid}")
            outcome, ev_id = "event", ev.pk
        except InstanceFinished:
            outcome, ev_id = "finished", None
        except Exception as exc:  # recorded and reported as a failure of the run
            outcome, ev_id = f"error: {type(exc).__name__}: {exc}", None
        records.append([iid, kind, t0, time.time(), outcome, ev_id])
    out_path.write_text(json.dumps({"records": records, "cpu_s": time.process_time() - cpu0, "waited_s": waited}))


def run_publishers(cfg: LoadConfig, roles: Roles, env: dict[str, str], tmp: Path,
                   workers: CeleryWorkers) -> dict[str, Any]:
    """Start the publishers, release them together, wait until every target completed; measure."""
    plans = publish_plan(cfg, roles.targets)
    procs = []
    for k, plan in enumerate(plans):
        plan_path, out_path = tmp / f"plan-{k}.json", tmp / f"published-{k}.json"
        plan_path.write_text(json.dumps(plan))
        cmd = [sys.executable, "-m", "bench.load", "--publisher", str(plan_path), "--publisher-out", str(out_path),
               *(["--paced"] if cfg.rate else [])]
        p = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **env}, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True)
        procs.append((p, out_path))
    try:
        return _drive_publishers(cfg, roles, procs, workers)
    finally:
        for p, _ in procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=10)


def _drive_publishers(cfg: LoadConfig, roles: Roles, procs: list[tuple[subprocess.Popen, Path]],
                      workers: CeleryWorkers) -> dict[str, Any]:
    from django.db import connection

    from durable_django.models import DurableInstance, Status

    for p, _ in procs:
        assert p.stdin is not None and p.stdout is not None  # started with both as pipes
        line = p.stdout.readline().strip()
        if line != "ready":
            raise RuntimeError(f"publisher did not start (said {line!r}, exit {p.poll()})")
    targets = roles.targets
    wpids = workers.pids()
    cpu_w0 = sum(map(cpu_s, wpids))
    busy0 = machine_busy()
    t_go = time.time()
    for p, _ in procs:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()

    def failed_check() -> None:
        workers.check()
        for p, _ in procs:
            if p.poll() not in (None, 0):
                raise RuntimeError(f"a publisher exited with {p.returncode}")
        bad = DurableInstance.objects.filter(pk__in=targets, status__in=(Status.FAILED, Status.SUSPENDED)).count()
        if bad:
            raise RuntimeError(f"{bad} target instance(s) failed or were suspended")

    done = lambda: DurableInstance.objects.filter(pk__in=targets, status=Status.COMPLETED).count() == len(targets)  # noqa: E731
    wait_for(done, cfg.timeout_s, f"the {len(targets)} targets to complete", interval=0.1, check=failed_check)
    t_done = time.time()
    cpu_w1 = sum(map(cpu_s, wpids))
    busy1 = machine_busy()
    records, pub_cpu, waited = [], 0.0, 0.0
    for p, out_path in procs:
        assert p.stdin is not None
        p.stdin.close()
        if p.wait(timeout=120) != 0:
            raise RuntimeError(f"publisher exited with {p.returncode}")
        data = json.loads(out_path.read_text())
        records += data["records"]
        pub_cpu += data["cpu_s"]
        waited += data["waited_s"]

    # -- from the rows: publish -> completed ----------------------------------------
    with connection.cursor() as cur:
        cur.execute("""
            SELECT i.instance_id, e.id, e.created_at, e.consumed_at, i.finished_at,
                   (SELECT min(h.at) FROM durable_django_durablehistory h
                     WHERE h.instance_id = i.instance_id AND h.kind = 'resumed')
              FROM durable_django_durableinstance i
              JOIN durable_django_durableevent e ON e.instance_id = i.instance_id
             WHERE i.instance_id = ANY(%s)""", [targets])
        rows = cur.fetchall()
    by_target = {r[0]: r for r in rows}
    lat = [(r[4] - r[2]).total_seconds() for r in rows]
    to_resume = [(r[5] - r[2]).total_seconds() for r in rows if r[5] is not None]
    resume_to_done = [(r[4] - r[5]).total_seconds() for r in rows if r[5] is not None]
    first_call: dict[str, float] = {}
    for iid, _, t0, _, _, _ in records:
        first_call[iid] = min(t0, first_call.get(iid, t0))
    call_lat = [r[4].timestamp() - first_call[r[0]] for r in rows]

    t_first = min(r[2] for r in records)
    t_last_pub = max(r[3] for r in records)
    created = [r[2].timestamp() for r in rows]
    finished = [r[4].timestamp() for r in rows]
    outcomes = Counter(r[4] if not r[4].startswith("error") else "error" for r in records)
    kinds = Counter(r[1] for r in records)
    # concurrent duplicates whose two calls overlapped in time
    calls = defaultdict(list)
    for iid, kind, t0, t1, outcome, ev in records:
        calls[iid].append((kind, t0, t1, outcome, ev))
    overlapped = 0
    for cs in calls.values():
        conc = [c for c in cs if c[0] == "concurrent"]
        firsts = [c for c in cs if c[0] == "first"]
        if conc and firsts and conc[0][1] < firsts[0][2] and firsts[0][1] < conc[0][2]:
            overlapped += 1

    # -- invariants ----------------------------------------------------------------
    problems = []
    errors = [r for r in records if r[4].startswith("error")]
    if errors:
        problems.append(f"{len(errors)} publish call(s) raised: {errors[:3]}")
    if len(rows) != len(targets):
        problems.append(f"{len(rows)} (instance, event) rows for {len(targets)} targets: duplicates stored or lost")
    for iid, cs in calls.items():
        ids = {c[4] for c in cs if c[3] == "event"}
        if iid in by_target and ids and ids != {by_target[iid][1]}:
            problems.append(f"{iid}: publish calls returned events {sorted(ids)}, stored {by_target[iid][1]}")
        if not ids:
            problems.append(f"{iid}: no publish call returned its event")
    if any(r[3] is None for r in rows):
        problems.append("an event of a completed target is not consumed")

    total_events = len(created)
    res = {
        "publish_calls": len(records), "calls_by_kind": dict(kinds), "outcomes": dict(outcomes),
        "events_stored": len(rows), "duplicates_rejected": len(records) - len(rows),
        "duplicates_returned_existing": outcomes.get("event", 0) - len(rows),
        "duplicates_refused_finished": outcomes.get("finished", 0),
        "concurrent_pairs_overlapping": overlapped, "concurrent_pairs": kinds.get("concurrent", 0),
        "publish_window_s": t_last_pub - t_first, "rendezvous_wait_s": waited,
        "publish_calls_per_s": len(records) / (t_last_pub - t_first),
        "events_accepted_per_s": total_events / (max(created) - min(created)) if total_events > 1 else float("nan"),
        "publish_call_ms": summary_ms([r[3] - r[2] for r in records]),
        "end_to_end_s": max(finished) - min(created),
        "completed_per_s": total_events / (max(finished) - min(created)),
        "drain_per_s": (total_events - 1) / (max(finished) - min(finished)) if total_events > 1 else float("nan"),
        "latency_event_to_completed": summary_ms(lat),
        "latency_event_to_resumed": summary_ms(to_resume),
        "latency_resumed_to_completed": summary_ms(resume_to_done),
        "latency_publish_call_to_completed": summary_ms(call_lat),
        "cpu_ms_per_target": {"workers": (cpu_w1 - cpu_w0) * 1e3 / len(targets),
                              "publishers": pub_cpu * 1e3 / len(targets)},
        "machine_busy": (busy1[0] - busy0[0]) / max(1, busy1[1] - busy0[1]),
        "wall_s": t_done - t_go, "problems": problems,
    }
    return res

