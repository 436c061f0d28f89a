"""Set-up of the Django benchmark: sizes, targets, the run's database and broker, the floors (a bare
``UPDATE`` + ``COMMIT``), and the Celery worker variants."""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from ..common.processes import CeleryWorkers

BROKER = os.environ.get("DURABLE_BENCH_BROKER", "redis://127.0.0.1:6379/9")
#: A database of this run's own (inherited by its child processes): two runs on one server never collide.
PG_DB = os.environ.setdefault("DURABLE_BENCH_PG_NAME", f"durable_bench_{uuid.uuid4().hex[:10]}")
PG_DSN = "host=127.0.0.1 port=5432 user=postgres dbname={}"
BLOB_BYTES = 2048

#: Targets from the issue.
PG_RATIO_TARGET = 1.5
SQLITE_TARGET_US = 250.0
PUBLISH_P50_TARGET_MS = 3.0
PUBLISH_P99_TARGET_MS = 10.0
THROUGHPUT_TARGET = 1000.0
#: For scale: the peer DBOS, ms per step on the same PostgreSQL (from the issue).
DBOS_MS_PER_STEP = (1.7, 2.2)


@dataclass(frozen=True)
class DjangoConfig:
    quick: bool
    pg_steps: int          # N of the long run on PostgreSQL (per-step = slope between N and 1 steps)
    sqlite_steps: int      # N of the long run on SQLite
    step_repeats: int
    floor_batch: int       # UPDATE+COMMITs per floor sample
    latency_samples: int   # publish samples (and as many bare-task samples)
    tp_instances: int      # one-step processes per throughput burst
    tp_rounds: int
    warmup: int


FULL = DjangoConfig(quick=False, pg_steps=300, sqlite_steps=1000, step_repeats=9, floor_batch=300,
                    latency_samples=200, tp_instances=1000, tp_rounds=3, warmup=2)
QUICK = DjangoConfig(quick=True, pg_steps=40, sqlite_steps=150, step_repeats=3, floor_batch=100, latency_samples=30,
                     tp_instances=150, tp_rounds=1, warmup=1)


def truncate() -> None:
    """Empty the app's tables: each part starts without the previous part's rows."""
    from django.db import connection

    from durable_django.models import DurableEvent, DurableHistory, DurableInstance

    tables = [m._meta.db_table for m in (DurableHistory, DurableEvent, DurableInstance)]
    with connection.cursor() as cur:
        if connection.vendor == "postgresql":
            cur.execute(f"TRUNCATE {', '.join(tables)} CASCADE")
        else:
            for t in tables:
                cur.execute(f"DELETE FROM {t}")


def notes_redis():
    """The Redis client of the benchmark's notes (see :func:`bench.django_programs.note_key`)."""
    from ..django_programs import redis_client

    return redis_client()


# -- floors ---------------------------------------------------------------------
class Floor:
    """``UPDATE bench_floor SET data = <2 KB> WHERE id = 1`` + ``COMMIT`` on its own connection.

    ``autocommit`` (PostgreSQL): the UPDATE alone, committed by the server as it runs (one round trip
    instead of BEGIN, UPDATE and COMMIT): the floor of a checkpoint written as one statement.
    """

    def __init__(self, vendor: str, sqlite_path: str | None = None, autocommit: bool = False) -> None:
        self.vendor = vendor
        self.blobs = [os.urandom(BLOB_BYTES) for _ in range(16)]
        self.i = 0
        if vendor == "postgresql":
            import psycopg

            self.conn = psycopg.connect(PG_DSN.format(PG_DB), autocommit=autocommit)
            with self.conn.cursor() as cur:
                cur.execute("CREATE TABLE IF NOT EXISTS bench_floor (id int PRIMARY KEY, data bytea)")
                cur.execute("INSERT INTO bench_floor VALUES (1, %s) ON CONFLICT (id) DO NOTHING", (self.blobs[0],))
            self.conn.commit()
            self.sql = "UPDATE bench_floor SET data = %s WHERE id = 1"
            self.settings = {k: self.conn.execute(f"SHOW {k}").fetchone()[0]
                             for k in ("synchronous_commit", "fsync", "wal_sync_method", "server_version")}
        else:
            import sqlite3

            self.conn = sqlite3.connect(sqlite_path, isolation_level="DEFERRED")
            mode = self.conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            self.conn.execute("PRAGMA synchronous=NORMAL")
            self.conn.execute("CREATE TABLE IF NOT EXISTS bench_floor (id integer PRIMARY KEY, data blob)")
            self.conn.execute("INSERT OR IGNORE INTO bench_floor VALUES (1, ?)", (self.blobs[0],))
            self.conn.commit()
            self.sql = "UPDATE bench_floor SET data = ? WHERE id = 1"
            self.settings = {"journal_mode": mode, "synchronous": self.conn.execute("PRAGMA synchronous").fetchone()[0],
                             "sqlite_version": sqlite3.sqlite_version}

    def op(self) -> None:
        self.i += 1
        self.conn.execute(self.sql, (self.blobs[self.i & 15],))
        self.conn.commit()

    def batch_us(self, n: int) -> float:
        """Mean µs per UPDATE+COMMIT over ``n`` of them."""
        t0 = time.perf_counter()
        for _ in range(n):
            self.op()
        return (time.perf_counter() - t0) / n * 1e6

    def close(self) -> None:
        self.conn.close()


def django_floor_us(n: int) -> float:
    """The same UPDATE+COMMIT through Django's connection (its cursor wrapper and transaction API)."""
    from django.db import connection, transaction

    blobs = [os.urandom(BLOB_BYTES) for _ in range(16)]
    p = "%s"
    t0 = time.perf_counter()
    for i in range(n):
        with transaction.atomic(), connection.cursor() as cur:
            cur.execute(f"UPDATE bench_floor SET data = {p} WHERE id = 1", [blobs[i & 15]])
    return (time.perf_counter() - t0) / n * 1e6


#: Worker variants: Celery's default ("shipped": its Django fixup closes the DB connection around every
#: task), and with ``CELERY_DB_REUSE_MAX`` set so the worker keeps its connection (the example project's
#: setting, and what the README recommends).
VARIANTS = {"shipped": {}, "reuse": {"DURABLE_BENCH_DB_REUSE_MAX": "1000"}}
#: Throughput only: the "reuse" workers with one wake-up message per instance (``DURABLE["BATCH_SIZE"] = 1``
#: in the producer), against which the batched wake-ups of the app's defaults are compared.
TP_VARIANTS = {**VARIANTS, "unbatched": {"DURABLE_BENCH_DB_REUSE_MAX": "1000"}}
#: DURABLE settings the benchmark process (the producer) uses for a variant.
VARIANT_DURABLE = {"unbatched": {"BATCH_SIZE": 1}}


def queue_of(variant: str) -> str:
    """The queue of ``variant``'s workers: the run's queue name plus the variant."""
    from django.conf import settings

    return f"{settings.DURABLE['QUEUE']}-{variant}"


class Workers(CeleryWorkers):
    """Celery worker subprocesses (pool=solo) of ``bench.django_celery``, by variant; all stopped by :meth:`stop`."""

    def start_variant(self, count: int, variant: str, extra_env: dict[str, str] | None = None,
                      profile_dir: Path | None = None) -> None:
        """``count`` workers of ``variant`` on its queue; returns when they are ready."""
        queue = queue_of(variant)
        names = [f"bw{len(self.procs) + i + 1}-{variant}-{uuid.uuid4().hex[:6]}" for i in range(count)]
        self.start(names, queue, group=variant, env={**TP_VARIANTS[variant], "DURABLE_BENCH_QUEUE": queue,
                                                      **(extra_env or {})}, profile_dir=profile_dir)


def durable_queue(variant: str):
    """A context in which durable_django sends its wake-ups to ``variant``'s workers."""
    from django.test import override_settings

    from durable_django.conf import durable_settings

    return override_settings(DURABLE={**durable_settings.user_settings(), "QUEUE": queue_of(variant),
                                      **VARIANT_DURABLE.get(variant, {})})

