"""Part ``throughput`` of the Django benchmark: one-step processes completed per second by 2 workers per
variant, against bare tasks, with the CPU each side spent; and the app's share measured without Celery."""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path
from typing import Any

from ..common.environment import cpu_s, machine_busy, pids_named
from ..common.processes import wait_for
from ..common.stats import median
from ..django_programs import note_key
from .measure import counting_sql, fixed_costs_us, package_of, profile_text
from .setup import THROUGHPUT_TARGET, TP_VARIANTS, DjangoConfig, Workers, durable_queue, notes_redis, queue_of, truncate


def _burst_ping(n: int, queue: str) -> dict[str, float]:
    from ..django_celery import ping

    r = notes_redis()
    key = note_key("tp", uuid.uuid4().hex[:8])
    t0 = time.time()
    for _ in range(n):
        ping.apply_async((key,), queue=queue)
    t_sent = time.time()
    wait_for(lambda: r.llen(key) >= n, 120, f"{n} bare tasks", 0.02)
    ts = sorted(float(x) for x in r.lrange(key, 0, -1))
    r.delete(key)
    return {"per_s": n / (ts[-1] - t0), "send_s": t_sent - t0, "elapsed_s": ts[-1] - t0}


def _burst_durable(n: int, tag: str, variant: str) -> dict[str, float]:
    from django.db import transaction
    from django.db.models import Max, Min

    import durable_django as dd
    from durable_django.models import DurableInstance, Status

    from .. import django_programs as progs

    ids = [f"{tag}-{i}" for i in range(n)]
    c0 = time.time()
    with durable_queue(variant):
        with transaction.atomic():  # the wake-ups are sent when this commits: a burst of n messages
            for i, iid in enumerate(ids):
                dd.start(progs.one_step, i, instance_id=iid)
            t0 = time.time()
        t_sent = time.time()
    rows = DurableInstance.objects.filter(pk__startswith=f"{tag}-")
    wait_for(lambda: rows.filter(status=Status.COMPLETED).count() >= n, 300, f"{n} instances", 0.05)
    agg = rows.aggregate(first=Min("finished_at"), last=Max("finished_at"))
    first, last = agg["first"].timestamp(), agg["last"].timestamp()
    bad = sum(1 for iid, result in rows.values_list("instance_id", "result")
              if result != int(iid.rsplit("-", 1)[1]) + 1)
    if bad:
        raise AssertionError(f"{bad} instances with a wrong result")
    return {"per_s": n / (last - t0), "drain_per_s": (n - 1) / (last - first) if last > first else float("nan"),
            "create_s": t0 - c0, "send_s": t_sent - t0, "elapsed_s": last - t0}


def _inprocess(n: int) -> dict[str, Any]:
    """One-step instances run by ``worker.run_instance`` in this process, no Celery: the app's own share.

    CPU and wall ms per instance, SQL statements per instance, and a CPU-time cProfile grouped by package.
    """
    import cProfile
    import pstats

    import durable_django as dd
    from durable_django import wakeups, worker

    from .. import django_programs as progs

    def make(k: int) -> list[str]:
        orig, wakeups.send_task = wakeups.send_task, lambda *a, **kw: None  # rows only: nothing goes to the broker
        try:
            tag = uuid.uuid4().hex[:8]
            return [dd.start(progs.one_step, i, instance_id=f"ip-{tag}-{i}").instance_id for i in range(k)]
        finally:
            wakeups.send_task = orig

    for iid in make(10):
        worker.run_instance(iid)
    ids = make(n)
    c0, w0 = time.process_time(), time.perf_counter()
    for iid in ids:
        if worker.run_instance(iid) != "completed":
            raise AssertionError(f"{iid} did not complete")
    cpu, wall = (time.process_time() - c0) / n * 1e3, (time.perf_counter() - w0) / n * 1e3
    kinds: dict[str, int] = {}
    ids = make(n + 1)
    with counting_sql(kinds):
        worker.run_instance(ids[0])
    prof = cProfile.Profile(time.process_time)
    prof.enable()
    for iid in ids[1:]:
        worker.run_instance(iid)
    prof.disable()
    st = pstats.Stats(prof)
    groups: dict[str, float] = {}
    funcs = []
    for (fname, line, func), (_cc, _nc, tt, ct, _callers) in st.stats.items():  # type: ignore[attr-defined]
        g = package_of(fname)
        groups[g] = groups.get(g, 0.0) + tt
        funcs.append((ct, f"{Path(fname).name}:{line}({func})"))
    total = sum(groups.values()) or 1.0
    return {"instances": n, "cpu_ms_per_instance": cpu, "wall_ms_per_instance": wall, **fixed_costs_us(),
            "statements_per_instance": kinds,
            "cpu_profile_share": {g: round(t / total, 3) for g, t in sorted(groups.items(), key=lambda x: -x[1])},
            "cpu_profile_ms_per_instance": total / n * 1e3,
            "top_cumulative": [f"{ct / n * 1e3:.3f} ms  {name}" for ct, name in sorted(funcs, reverse=True)[:25]]}


def part_throughput(cfg: DjangoConfig, db: str, logdir: Path, profile: bool = False) -> dict[str, Any]:
    import gc

    truncate()
    workers = Workers(logdir)
    prof_dir = logdir if profile else None
    kinds = ["floor", *TP_VARIANTS]
    samples: dict[str, list[dict[str, float]]] = {k: [] for k in kinds}
    inproc = _inprocess(30 if cfg.quick else 200)
    try:
        for v in TP_VARIANTS:
            workers.start_variant(2, v, profile_dir=prof_dir)
        pg, rd = pids_named("postgres"), pids_named("redis-server")
        _burst_ping(50, queue_of("shipped"))
        for v in TP_VARIANTS:
            _burst_durable(50, f"warm-{v}-{uuid.uuid4().hex[:6]}", v)
        for r in range(cfg.tp_rounds):
            order = kinds[r % len(kinds):] + kinds[:r % len(kinds)]
            for which in order:
                gc.collect()
                wpids = workers.pids("shipped" if which == "floor" else which)
                cpu0 = {"workers": sum(map(cpu_s, wpids)), "postgres": sum(map(cpu_s, pg)),
                        "redis": sum(map(cpu_s, rd)), "bench": sum(os.times()[:2])}
                busy0, tot0 = machine_busy()
                if which == "floor":
                    s = _burst_ping(cfg.tp_instances, queue_of("shipped"))
                else:
                    s = _burst_durable(cfg.tp_instances, f"tp{r}-{which}-{uuid.uuid4().hex[:6]}", which)
                busy1, tot1 = machine_busy()
                cpu1 = {"workers": sum(map(cpu_s, wpids)), "postgres": sum(map(cpu_s, pg)),
                        "redis": sum(map(cpu_s, rd)), "bench": sum(os.times()[:2])}
                s.update({f"cpu_ms_per_item_{k}": (cpu1[k] - cpu0[k]) / cfg.tp_instances * 1e3 for k in cpu0})
                s["machine_busy"] = (busy1 - busy0) / max(1, tot1 - tot0)
                samples[which].append(s)
    finally:
        workers.stop()
    med = {w: {k: median([s[k] for s in samples[w]]) for k in samples[w][0]} for w in samples}
    res: dict[str, Any] = {"db": db, "workers": 2, "pool": "solo", "instances": cfg.tp_instances,
                           "rounds": cfg.tp_rounds, "floor": med["floor"], "samples": samples, "in_process": inproc,
                           "target": f">= {THROUGHPUT_TARGET:.0f}/s"}
    for v in TP_VARIANTS:
        res[v] = {**med[v], "ratio_to_floor": med[v]["per_s"] / med["floor"]["per_s"],
                  "meets_target": med[v]["per_s"] >= THROUGHPUT_TARGET}
    if profile:
        res["profile"] = {v: profile_text(logdir, v) for v in TP_VARIANTS}
    return res

