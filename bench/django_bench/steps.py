"""Part ``steps`` of the Django benchmark: µs per checkpointed step on PostgreSQL or SQLite, against the floor."""

from __future__ import annotations

import time
from typing import Any

from ..common.stats import median
from .measure import hop_us, run_inline, statements_per_step, time_split
from .setup import PG_RATIO_TARGET, SQLITE_TARGET_US, DjangoConfig, Floor, django_floor_us, truncate


def part_steps(cfg: DjangoConfig, db: str) -> dict[str, Any]:
    import gc

    from django.db import connection
    from django.test import override_settings

    from durable_django.conf import durable_settings

    vendor = connection.vendor
    n = cfg.pg_steps if vendor == "postgresql" else cfg.sqlite_steps
    floor = Floor(vendor, connection.settings_dict["NAME"] if vendor == "sqlite" else None)
    floor_1 = Floor(vendor, autocommit=True) if vendor == "postgresql" else None
    samples: dict[str, list[float]] = {"floor": [], "floor_1": [], "django_floor": [], "long": [], "short": [],
                                       "hop": []}
    splits: list[dict[str, float]] = []
    with override_settings(DURABLE={**durable_settings.user_settings(), "RUN_INLINE": True}):
        truncate()
        for r in range(cfg.warmup + cfg.step_repeats):
            gc.collect()
            order = ["floor", "django_floor", "long", "short", "hop", "split"] + (["floor_1"] if floor_1 else [])
            order = order[r % len(order):] + order[:r % len(order)]
            for which in order:
                if which == "split":
                    if r >= cfg.warmup:
                        splits.append(time_split(n))
                    continue
                if which == "hop":
                    v = hop_us(500 if cfg.quick else 2000)
                elif which == "floor":
                    v = floor.batch_us(cfg.floor_batch)
                elif which == "floor_1":
                    assert floor_1 is not None  # "floor_1" is in the order only on PostgreSQL
                    v = floor_1.batch_us(cfg.floor_batch)
                elif which == "django_floor":
                    v = django_floor_us(cfg.floor_batch)
                else:
                    v = run_inline(n if which == "long" else 1)
                if r >= cfg.warmup:
                    samples[which].append(v)
        per_step = [(lg - sh) / (n - 1) * 1e6 for lg, sh in zip(samples["long"], samples["short"], strict=True)]
        statements = statements_per_step(min(n, 100))
        split = {k: median([sp.get(k, 0.0) for sp in splits]) for k in sorted({k for sp in splits for k in sp})}
    hot = None
    if vendor == "postgresql":  # are checkpoints HOT updates (no new index entries)? Stats lag up to ~1 s.
        time.sleep(1.5)
        with connection.cursor() as cur:
            cur.execute("SELECT relname, n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables "
                        "WHERE relname IN ('durable_django_durableinstance', 'bench_floor')")
            hot = {name: {"updates": upd, "hot_updates": hot_upd} for name, upd, hot_upd in cur.fetchall()}
            cur.execute("SELECT count(*) FROM pg_indexes WHERE tablename = 'durable_django_durableinstance'")
            hot["instance_indexes"] = cur.fetchone()[0]
    floor.close()
    if floor_1 is not None:
        floor_1.close()
    reconnect = []
    for _ in range(5 if cfg.quick else 21):  # what a worker pays per task when Celery closes the connection
        connection.close()
        t0 = time.perf_counter()
        connection.ensure_connection()
        reconnect.append(time.perf_counter() - t0)
    floor_us, step_us = median(samples["floor"]), median(per_step)
    res: dict[str, Any] = {
        "db": db, "vendor": vendor, "n_steps": n, "repeats": cfg.step_repeats,
        "floor_us": floor_us, "django_floor_us": median(samples["django_floor"]), "floor_settings": floor.settings,
        "step_us": step_us, "ratio": step_us / floor_us,
        "run_1_step_ms": median(samples["short"]) * 1e3, "run_n_steps_ms": median(samples["long"]) * 1e3,
        "statements": statements, "time_split": split, "asgiref_hop_us": median(samples["hop"]),
        "django_connect_ms": median(reconnect) * 1e3, "hot_updates": hot,
        "samples": {"floor_us": samples["floor"], "django_floor_us": samples["django_floor"], "step_us": per_step},
    }
    if floor_1 is not None:
        res["floor_one_statement_us"] = median(samples["floor_1"])
        res["ratio_one_statement"] = step_us / res["floor_one_statement_us"]
        res["samples"]["floor_one_statement_us"] = samples["floor_1"]
    if vendor == "postgresql":
        res.update(target=f"<= {PG_RATIO_TARGET}x floor", meets_target=res["ratio"] <= PG_RATIO_TARGET)
    else:
        res.update(target=f"<= {SQLITE_TARGET_US:.0f} µs", meets_target=step_us <= SQLITE_TARGET_US)
    return res

