"""Part ``latency`` of the Django benchmark: ``publish_event`` until the next step runs in a real worker,
against a bare task, one worker variant at a time."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

from ..common.processes import wait_for
from ..common.stats import median, summary_ms
from ..django_programs import note_key
from .measure import counting_sql
from .setup import (
    BROKER,
    PUBLISH_P50_TARGET_MS,
    PUBLISH_P99_TARGET_MS,
    VARIANTS,
    DjangoConfig,
    Floor,
    Workers,
    durable_queue,
    notes_redis,
    queue_of,
    truncate,
)


def _publish_sample(iid: str, key: str) -> tuple[float, float, float]:
    """(publish -> step runs, publish call, publish -> task starts) in seconds."""
    import durable_django as dd

    r = notes_redis()
    t0 = time.time()
    dd.publish_event(iid, "go")
    t1 = time.time()
    got = r.blpop(key, timeout=10)
    if got is None:
        raise TimeoutError(f"the step after the event did not run ({iid})")
    started = r.blpop(note_key("started", iid), timeout=10)  # pushed once the task has returned
    if started is None:
        raise TimeoutError("no task start note")
    return float(got[1]) - t0, t1 - t0, float(started[1]) - t0


def _ping_sample(ping_key: str, queue: str) -> float:
    from ..django_celery import ping

    t0 = time.time()
    ping.apply_async((ping_key,), queue=queue)
    got = notes_redis().blpop(ping_key, timeout=10)
    if got is None:
        raise TimeoutError("bare task did not run")
    return float(got[1]) - t0


def _inprocess_rounds(k: int) -> dict[str, Any]:
    """publish_event + ``worker.run_instance`` of the latency program in this process, no Celery.

    The app's own share of the latency: ms per publish_event call and per wake-up run (claim, load, the
    checkpoint that consumes the event, the step, the pause), and the SQL statements of one round.
    """

    import durable_django as dd
    from durable_django import wakeups, worker

    from .. import django_programs as progs

    orig, wakeups.send_task = wakeups.send_task, lambda *a, **kw: None  # rows only: nothing goes to the broker
    try:
        iid, key = f"ipl-{uuid.uuid4().hex[:8]}", note_key("mark", uuid.uuid4().hex[:8])
        dd.start(progs.event_loop, key, k + 10, instance_id=iid)
        worker.run_instance(iid)
        pub, run = [], []
        kinds: dict[str, int] = {}

        for i in range(k + 3):
            t0 = time.perf_counter()
            dd.publish_event(iid, "go")
            t1 = time.perf_counter()
            if i == k + 2:
                with counting_sql(kinds):
                    status = worker.run_instance(iid)
            else:
                status = worker.run_instance(iid)
            t2 = time.perf_counter()
            if status != "paused":
                raise AssertionError(f"round ended {status}")
            if i >= 2 and i < k + 2:
                pub.append(t1 - t0)
                run.append(t2 - t1)
        notes_redis().delete(key)
    finally:
        wakeups.send_task = orig
    return {"rounds": k, "publish_call_ms": median(pub) * 1e3, "run_instance_ms": median(run) * 1e3,
            "statements_per_wakeup": kinds}


def part_latency(cfg: DjangoConfig, db: str, logdir: Path) -> dict[str, Any]:
    import gc

    import durable_django as dd
    from durable_django.models import DurableInstance, Status

    from .. import django_programs as progs

    truncate()
    res: dict[str, Any] = {"db": db, "workers_per_variant": 1, "pool": "solo", "broker": BROKER,
                           "in_process": _inprocess_rounds(20 if cfg.quick else 100)}
    out: dict[str, dict[str, list[float]]] = {
        v: {"floor": [], "publish": [], "publish_call": [], "to_task_start": []} for v in VARIANTS}
    commit_floor, commits = Floor("postgresql"), []
    ping_key = note_key("ping", uuid.uuid4().hex[:8])
    try:
        # One variant at a time: its worker alone, so one configuration's work (a new database
        # connection per task, as shipped) does not land in the other's samples on 2 cores.
        for v in VARIANTS:
            workers = Workers(logdir)
            try:
                workers.start_variant(1, v, {"DURABLE_BENCH_NOTE_STARTS": "1"})
                iid, key = f"lat-{v}-{uuid.uuid4().hex[:8]}", note_key("mark", uuid.uuid4().hex[:8])
                with durable_queue(v):
                    dd.start(progs.event_loop, key, cfg.latency_samples + cfg.warmup + 10, instance_id=iid)
                wait_for(lambda iid=iid: DurableInstance.objects.filter(
                    pk=iid, status=Status.PAUSED, lease_owner="").exists(), 30, "the instance to pause", 0.01)
                if notes_redis().blpop(note_key("started", iid), timeout=30) is None:  # the first run's note
                    raise TimeoutError("no task start note of the first run")
                kinds, queue = ["floor", "publish", "commit"], queue_of(v)
                gc.collect()
                with durable_queue(v):
                    for i in range(cfg.warmup + 3 + cfg.latency_samples):
                        keep = i >= cfg.warmup + 3
                        for which in kinds[i % 3:] + kinds[:i % 3]:
                            time.sleep(0.005)  # the worker is idle on the broker again (it acks after the task)
                            if which == "commit":  # the database's own latency in the same rounds
                                t0 = time.perf_counter()
                                commit_floor.op()
                                if keep:
                                    commits.append(time.perf_counter() - t0)
                            elif which == "floor":
                                lat = _ping_sample(ping_key, queue)
                                if keep:
                                    out[v]["floor"].append(lat)
                            else:
                                a, b, c = _publish_sample(iid, key)
                                if keep:
                                    out[v]["publish"].append(a)
                                    out[v]["publish_call"].append(b)
                                    out[v]["to_task_start"].append(c)
            finally:
                workers.stop()
    finally:
        commit_floor.close()
    res["commit_floor"] = summary_ms(commits)
    for v, got in out.items():
        pub, fl = summary_ms(got["publish"]), summary_ms(got["floor"])
        res[v] = {
            "samples": len(got["publish"]), "floor": fl, "publish_to_step": pub,
            "publish_call": summary_ms(got["publish_call"]),
            "publish_to_task_start": summary_ms(got["to_task_start"]),
            "task_start_to_step_p50_ms": median([(a - b) * 1e3 for a, b in
                                                  zip(got["publish"], got["to_task_start"], strict=True)]),
            "ratio_p50": pub["p50_ms"] / fl["p50_ms"], "ratio_p99": pub["p99_ms"] / fl["p99_ms"],
            "meets_target": pub["p50_ms"] <= PUBLISH_P50_TARGET_MS and pub["p99_ms"] <= PUBLISH_P99_TARGET_MS,
            "raw_ms": {k: [round(x * 1e3, 4) for x in xs] for k, xs in got.items()},
        }
    res["target"] = f"p50 <= {PUBLISH_P50_TARGET_MS} ms, p99 <= {PUBLISH_P99_TARGET_MS} ms"
    return res

