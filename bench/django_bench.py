"""Benchmarks of durable_django: checkpoint cost, publish-to-running latency, throughput.

``python -m bench django [--quick] [--out PATH] [--profile]`` runs every part
and prints a table (see ``bench/README.md``). Each part runs in a child process
of its own (``python -m bench.django_bench --child PART --db pg|sqlite``),
because Django's default database is fixed per process; every figure is
measured against its floor in the same child, interleaved.

Parts:

* ``steps``: µs per awaited step of ``bench.workloads.many_steps`` run by
  ``durable_django``'s executor in this process (``RUN_INLINE``), against
  one ``UPDATE`` + ``COMMIT`` of a 2 KB blob on the same database;
* ``latency``: ``publish_event`` until the program's next step runs in a
  real Celery worker (Redis broker), against ``.delay()`` until a bare task
  starts in the same worker;
* ``throughput``: one-step processes completed per second by 2 workers,
  against bare tasks per second on the same workers.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .django_programs import note_key

ROOT = Path(__file__).resolve().parent.parent
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
class Config:
    quick: bool
    pg_steps: int          # N of the long run on PostgreSQL (per-step = slope between N and 1 steps)
    sqlite_steps: int      # N of the long run on SQLite
    step_repeats: int
    floor_batch: int       # UPDATE+COMMITs per floor sample
    latency_samples: int   # publish samples (and as many bare-task samples)
    tp_instances: int      # one-step processes per throughput burst
    tp_rounds: int
    warmup: int


FULL = Config(quick=False, pg_steps=300, sqlite_steps=1000, step_repeats=9, floor_batch=300, latency_samples=200,
              tp_instances=1000, tp_rounds=3, warmup=2)
QUICK = Config(quick=True, pg_steps=40, sqlite_steps=150, step_repeats=3, floor_batch=100, latency_samples=30,
               tp_instances=150, tp_rounds=1, warmup=1)


def _median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def _pct(xs: list[float], p: float) -> float:
    """The ``p``-th percentile (nearest rank) of ``xs``."""
    if not xs:
        return float("nan")
    s = sorted(xs)
    k = max(0, min(len(s) - 1, int(round(p / 100 * len(s) + 0.5)) - 1))
    return s[k]


def _summary_ms(xs_s: list[float]) -> dict[str, float]:
    ms = [x * 1e3 for x in xs_s]
    return {"n": len(ms), "p50_ms": _pct(ms, 50), "p90_ms": _pct(ms, 90), "p99_ms": _pct(ms, 99),
            "min_ms": min(ms) if ms else float("nan"), "max_ms": max(ms) if ms else float("nan")}


# =============================================================================
# Child side (Django is set up here)
# =============================================================================
def _setup_django() -> None:
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def _truncate() -> None:
    from django.db import connection

    from durable_django.models import DurableEvent, DurableHistory, DurableInstance

    tables = [m._meta.db_table for m in (DurableHistory, DurableEvent, DurableInstance)]
    with connection.cursor() as cur:
        if connection.vendor == "postgresql":
            cur.execute(f"TRUNCATE {', '.join(tables)} CASCADE")
        else:
            for t in tables:
                cur.execute(f"DELETE FROM {t}")


def _redis():
    from .django_programs import redis_client

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


def _django_floor_us(n: int) -> float:
    """The same UPDATE+COMMIT through Django's connection (its cursor wrapper and transaction API)."""
    from django.db import connection, transaction

    blobs = [os.urandom(BLOB_BYTES) for _ in range(16)]
    p = "%s"
    t0 = time.perf_counter()
    for i in range(n):
        with transaction.atomic(), connection.cursor() as cur:
            cur.execute(f"UPDATE bench_floor SET data = {p} WHERE id = 1", [blobs[i & 15]])
    return (time.perf_counter() - t0) / n * 1e6


# -- part: steps ----------------------------------------------------------------
_EXPECTED: dict[int, int] = {}


def _expected(n: int) -> int:
    """What ``many_steps(n)`` returns, run natively."""
    if n not in _EXPECTED:
        import asyncio

        from . import workloads

        _EXPECTED[n] = asyncio.run(workloads.many_steps(n))
    return _EXPECTED[n]


def _run_inline(n: int) -> float:
    """Seconds for ``start(many_steps, n)`` run to completion in this process (RUN_INLINE), checked."""
    import durable_django as dd
    from durable_django.models import DurableInstance, Status

    from . import workloads

    iid = uuid.uuid4().hex
    t0 = time.perf_counter()
    dd.start(workloads.many_steps, n, instance_id=iid)
    dt = time.perf_counter() - t0
    row = DurableInstance.objects.filter(pk=iid).values_list("status", "steps").first()
    if row is None or row[0] != Status.COMPLETED:
        raise AssertionError(f"instance {iid} ({n} steps) ended as {row!r}, not completed")
    got, expected = dd.result(iid), _expected(n)
    if got != expected:
        raise AssertionError(f"instance {iid} returned {got!r}, expected {expected!r}")
    return dt


@contextlib.contextmanager
def _counting_sql(kinds: dict[str, int], spent: dict[str, float] | None = None,
                  example: dict[str, str] | None = None):
    """Count the statements sent on the default connection by their first word, and the commits.

    ``COMMIT`` counts explicit commits (``transaction.commit``, the end of an outermost ``atomic``: a
    round trip of their own); ``implicit COMMIT`` the writes sent in autocommit mode outside any
    transaction (each commits as it runs, in its own round trip). ``WITH`` is a statement that writes
    through a CTE (the claim, ``publish_event`` on PostgreSQL).
    """
    from django.db import connection

    def wrapper(execute, sql, params, many, context):
        parts = [p.strip() for p in sql.split(";") if p.strip()] if sql.lstrip().upper().startswith("BEGIN;") else [sql]
        word = "+".join(p.lstrip().split(None, 1)[0].upper() for p in parts)  # BEGIN+SET+UPDATE+COMMIT: one trip
        kinds[word] = kinds.get(word, 0) + 1
        raw = connection.connection  # PostgreSQL: the app runs some statements in autocommit on its own
        auto = raw.autocommit if connection.vendor == "postgresql" and raw is not None else connection.get_autocommit()
        if word in ("UPDATE", "INSERT", "DELETE", "WITH") and auto and not connection.in_atomic_block:
            kinds["implicit COMMIT"] = kinds.get("implicit COMMIT", 0) + 1
        if example is not None:
            example[word] = sql[:400]  # the last one: a checkpoint's
        t0 = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            if spent is not None:
                spent[word] = spent.get(word, 0.0) + time.perf_counter() - t0

    orig_commit = connection.commit

    def commit():
        kinds["COMMIT"] = kinds.get("COMMIT", 0) + 1
        return orig_commit()

    connection.commit = commit
    try:
        with connection.execute_wrapper(wrapper):
            yield kinds
    finally:
        del connection.commit


def _statements_per_step(n: int) -> dict[str, Any]:
    """SQL statements per step (slope between runs of ``n`` and 1 steps), by kind; not timed."""

    def count(steps: int) -> tuple[dict[str, int], dict[str, float], dict[str, str]]:
        kinds: dict[str, int] = {}
        spent: dict[str, float] = {}
        example: dict[str, str] = {}
        with _counting_sql(kinds, spent, example):
            _run_inline(steps)
        return kinds, spent, example

    (one, t_one, _), (big, t_big, example) = count(1), count(n)
    words = sorted(set(one) | set(big))
    per = {k: (big.get(k, 0) - one.get(k, 0)) / (n - 1) for k in words}
    us = {k: (t_big.get(k, 0.0) - t_one.get(k, 0.0)) / (n - 1) * 1e6 for k in words}
    return {"per_step": {k: round(v, 3) for k, v in per.items() if v},
            "us_per_step": {k: round(v, 1) for k, v in us.items() if per[k] and k != "COMMIT"},
            "whole_run_1_step": one, "example_sql": {k: example[k] for k in words if per[k] and k in example}}


def _time_split(n: int) -> dict[str, float]:
    """Where a step's time goes (µs per step): the backend's save_state_sync, and sign() inside it; not timed."""
    from durable_django import backend as be

    spent = {"save_state_sync": 0.0, "sign": 0.0, "commit": 0.0, "sql": 0.0}
    orig_save, orig_sign = be.DjangoOrchestrationBackend.save_state_sync, be.sign
    from django.db import transaction

    orig_commit = transaction.commit

    def save(self, *a, **k):
        t0 = time.perf_counter()
        try:
            return orig_save(self, *a, **k)
        finally:
            spent["save_state_sync"] += time.perf_counter() - t0

    def sign(obj, context):
        t0 = time.perf_counter()
        try:
            return orig_sign(obj, context)
        finally:
            spent["sign"] += time.perf_counter() - t0

    def commit(*a, **k):
        t0 = time.perf_counter()
        try:
            return orig_commit(*a, **k)
        finally:
            spent["commit"] += time.perf_counter() - t0

    def sql(execute, sql, params, many, context):
        word = "sql:" + sql.lstrip().split(None, 1)[0].upper()
        t0 = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            dt = time.perf_counter() - t0
            spent["sql"] += dt
            spent[word] = spent.get(word, 0.0) + dt

    from django.db import connection

    spent["sql"] = 0.0
    be.DjangoOrchestrationBackend.save_state_sync, be.sign, be.transaction.commit = save, sign, commit
    try:
        whole: dict[int, float] = {}
        parts: dict[int, dict[str, float]] = {}
        for steps in (1, n):
            for k in list(spent):
                spent[k] = 0.0
            with connection.execute_wrapper(sql):
                whole[steps] = _run_inline(steps)
            parts[steps] = dict(spent)
    finally:
        be.DjangoOrchestrationBackend.save_state_sync, be.sign = orig_save, orig_sign
        be.transaction.commit = orig_commit
    per = {k: (parts[n].get(k, 0.0) - parts[1].get(k, 0.0)) / (n - 1) * 1e6 for k in parts[n]}
    total = (whole[n] - whole[1]) / (n - 1) * 1e6
    by_kind = {f"sql_{k[4:]}_us": v for k, v in per.items() if k.startswith("sql:") and v > 1.0}
    return {"total_us": total, "save_state_sync_us": per["save_state_sync"], "of_which_commit_us": per["commit"],
            "of_which_sign_us": per["sign"], "of_which_sql_us": per["sql"],
            "of_which_orm_python_us": per["save_state_sync"] - per["commit"] - per["sign"] - per["sql"],
            "outside_save_state_us": total - per["save_state_sync"], **by_kind}


def _hop_us(n: int = 2000) -> float:
    """µs per ``await sync_to_async(noop, thread_sensitive=True)()`` inside ``async_to_sync``: the thread hop
    every backend call of the executor makes (the loop thread hands the call to the worker's thread and back)."""
    from asgiref.sync import async_to_sync, sync_to_async

    def noop() -> None:
        return None

    async def hops(k: int) -> float:
        f = sync_to_async(noop, thread_sensitive=True)
        await f()
        t0 = time.perf_counter()
        for _ in range(k):
            await f()
        return (time.perf_counter() - t0) / k * 1e6

    return async_to_sync(hops)(n)


def part_steps(cfg: Config, db: str) -> dict[str, Any]:
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
        _truncate()
        for r in range(cfg.warmup + cfg.step_repeats):
            gc.collect()
            order = ["floor", "django_floor", "long", "short", "hop", "split"] + (["floor_1"] if floor_1 else [])
            order = order[r % len(order):] + order[:r % len(order)]
            for which in order:
                if which == "split":
                    if r >= cfg.warmup:
                        splits.append(_time_split(n))
                    continue
                if which == "hop":
                    v = _hop_us(500 if cfg.quick else 2000)
                elif which == "floor":
                    v = floor.batch_us(cfg.floor_batch)
                elif which == "floor_1":
                    v = floor_1.batch_us(cfg.floor_batch)
                elif which == "django_floor":
                    v = _django_floor_us(cfg.floor_batch)
                else:
                    v = _run_inline(n if which == "long" else 1)
                if r >= cfg.warmup:
                    samples[which].append(v)
        per_step = [(lg - sh) / (n - 1) * 1e6 for lg, sh in zip(samples["long"], samples["short"], strict=True)]
        statements = _statements_per_step(min(n, 100))
        split = {k: _median([sp.get(k, 0.0) for sp in splits]) for k in sorted({k for sp in splits for k in sp})}
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
    floor_us, step_us = _median(samples["floor"]), _median(per_step)
    res: dict[str, Any] = {
        "db": db, "vendor": vendor, "n_steps": n, "repeats": cfg.step_repeats,
        "floor_us": floor_us, "django_floor_us": _median(samples["django_floor"]), "floor_settings": floor.settings,
        "step_us": step_us, "ratio": step_us / floor_us,
        "run_1_step_ms": _median(samples["short"]) * 1e3, "run_n_steps_ms": _median(samples["long"]) * 1e3,
        "statements": statements, "time_split": split, "asgiref_hop_us": _median(samples["hop"]),
        "django_connect_ms": _median(reconnect) * 1e3, "hot_updates": hot,
        "samples": {"floor_us": samples["floor"], "django_floor_us": samples["django_floor"], "step_us": per_step},
    }
    if floor_1 is not None:
        res["floor_one_statement_us"] = _median(samples["floor_1"])
        res["ratio_one_statement"] = step_us / res["floor_one_statement_us"]
        res["samples"]["floor_one_statement_us"] = samples["floor_1"]
    if vendor == "postgresql":
        res.update(target=f"<= {PG_RATIO_TARGET}x floor", meets_target=res["ratio"] <= PG_RATIO_TARGET)
    else:
        res.update(target=f"<= {SQLITE_TARGET_US:.0f} µs", meets_target=step_us <= SQLITE_TARGET_US)
    return res


# -- workers ---------------------------------------------------------------------
#: Worker variants: Celery's default ("shipped": its Django fixup closes the DB connection around every
#: task), and with ``CELERY_DB_REUSE_MAX`` set so the worker keeps its connection (the example project's
#: setting, and what the README recommends).
VARIANTS = {"shipped": {}, "reuse": {"DURABLE_BENCH_DB_REUSE_MAX": "1000"}}
#: Throughput only: the "reuse" workers with one wake-up message per instance (``DURABLE["BATCH_SIZE"] = 1``
#: in the producer), against which the batched wake-ups of the app's defaults are compared.
TP_VARIANTS = {**VARIANTS, "unbatched": {"DURABLE_BENCH_DB_REUSE_MAX": "1000"}}
#: DURABLE settings the benchmark process (the producer) uses for a variant.
VARIANT_DURABLE = {"unbatched": {"BATCH_SIZE": 1}}


def _queue(variant: str) -> str:
    from django.conf import settings

    return f"{settings.DURABLE['QUEUE']}-{variant}"


class Workers:
    """Celery worker subprocesses (pool=solo) of ``bench.django_celery``; all stopped by :meth:`stop`."""

    def __init__(self, logdir: Path) -> None:
        self.logdir = logdir
        self.procs: list[tuple[str, str, subprocess.Popen]] = []

    def start(self, count: int, variant: str, extra_env: dict[str, str] | None = None,
              profile_dir: Path | None = None) -> None:
        queue = _queue(variant)
        names = []
        for i in range(count):
            name = f"bw{len(self.procs) + 1}-{variant}-{uuid.uuid4().hex[:6]}"
            env = {**os.environ, **TP_VARIANTS[variant], "DURABLE_BENCH_WORKER": name, "DURABLE_BENCH_QUEUE": queue,
                   **(extra_env or {})}
            prefix = [sys.executable]
            if profile_dir is not None:
                prefix += ["-m", "cProfile", "-o", str(profile_dir / f"worker-{variant}-{i + 1}.prof")]
            cmd = [*prefix, "-m", "celery", "-A", "bench.django_celery", "worker", "--pool=solo",
                   "--without-gossip", "--without-mingle", "--without-heartbeat", "--loglevel=WARNING",
                   "-Q", queue, "-n", f"{name}@%h"]
            log = open(self.logdir / f"{name}.log", "wb")
            proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
            log.close()
            self.procs.append((name, variant, proc))
            names.append(name)
        deadline = time.monotonic() + 60
        r = _redis()
        while not all(r.exists(note_key("ready", nm)) for nm in names):
            for nm, _, p in self.procs:
                if p.poll() is not None:
                    raise RuntimeError(f"worker {nm} exited:\n{(self.logdir / f'{nm}.log').read_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError("workers not ready after 60 s")
            time.sleep(0.05)

    def pids(self, variant: str) -> list[int]:
        return [p.pid for _, v, p in self.procs if v == variant and p.poll() is None]

    def stop(self) -> None:
        for _, _, p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)  # warm shutdown (lets cProfile write its file)
        for name, _, p in self.procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=10)
            _redis().delete(note_key("ready", name))
        self.procs = []


def _durable_queue(variant: str):
    """A context in which durable_django sends its wake-ups to ``variant``'s workers."""
    from django.test import override_settings

    from durable_django.conf import durable_settings

    return override_settings(DURABLE={**durable_settings.user_settings(), "QUEUE": _queue(variant),
                                      **VARIANT_DURABLE.get(variant, {})})


def _cpu_s(pid: int) -> float:
    """utime + stime of ``pid`` in seconds, from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    tick = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / tick


def _pids_named(name: str) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if (d / "comm").read_text().strip() == name:
                    out.append(int(d.name))
            except OSError:
                continue
    return out


def _machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine."""
    vals = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = vals[3] + vals[4]
    return sum(vals) - idle, sum(vals)


def _wait_for(pred: Callable[[], Any], timeout: float, what: str, interval: float = 0.001) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


# -- part: latency ---------------------------------------------------------------
def _publish_sample(iid: str, key: str) -> tuple[float, float, float]:
    """(publish -> step runs, publish call, publish -> task starts) in seconds."""
    import durable_django as dd

    r = _redis()
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
    from .django_celery import ping

    t0 = time.time()
    ping.apply_async((ping_key,), queue=queue)
    got = _redis().blpop(ping_key, timeout=10)
    if got is None:
        raise TimeoutError("bare task did not run")
    return float(got[1]) - t0


def _inprocess_rounds(k: int) -> dict[str, Any]:
    """publish_event + ``executor.run_instance`` of the latency program in this process, no Celery.

    The app's own share of the latency: ms per publish_event call and per wake-up run (claim, load, the
    checkpoint that consumes the event, the step, the pause), and the SQL statements of one round.
    """

    import durable_django as dd
    from durable_django import api, executor

    from . import django_programs as progs

    orig, api.send_task = api.send_task, lambda *a, **kw: None  # rows only: nothing goes to the broker
    try:
        iid, key = f"ipl-{uuid.uuid4().hex[:8]}", note_key("mark", uuid.uuid4().hex[:8])
        dd.start(progs.event_loop, key, k + 10, instance_id=iid)
        executor.run_instance(iid)
        pub, run = [], []
        kinds: dict[str, int] = {}

        for i in range(k + 3):
            t0 = time.perf_counter()
            dd.publish_event(iid, "go")
            t1 = time.perf_counter()
            if i == k + 2:
                with _counting_sql(kinds):
                    status = executor.run_instance(iid)
            else:
                status = executor.run_instance(iid)
            t2 = time.perf_counter()
            if status != "paused":
                raise AssertionError(f"round ended {status}")
            if i >= 2 and i < k + 2:
                pub.append(t1 - t0)
                run.append(t2 - t1)
        _redis().delete(key)
    finally:
        api.send_task = orig
    return {"rounds": k, "publish_call_ms": _median(pub) * 1e3, "run_instance_ms": _median(run) * 1e3,
            "statements_per_wakeup": kinds}


def part_latency(cfg: Config, db: str, logdir: Path) -> dict[str, Any]:
    import gc

    import durable_django as dd
    from durable_django.models import DurableInstance, Status

    from . import django_programs as progs

    _truncate()
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
                workers.start(1, v, {"DURABLE_BENCH_NOTE_STARTS": "1"})
                iid, key = f"lat-{v}-{uuid.uuid4().hex[:8]}", note_key("mark", uuid.uuid4().hex[:8])
                with _durable_queue(v):
                    dd.start(progs.event_loop, key, cfg.latency_samples + cfg.warmup + 10, instance_id=iid)
                _wait_for(lambda iid=iid: DurableInstance.objects.filter(
                    pk=iid, status=Status.PAUSED, lease_owner="").exists(), 30, "the instance to pause", 0.01)
                if _redis().blpop(note_key("started", iid), timeout=30) is None:  # the first run's note
                    raise TimeoutError("no task start note of the first run")
                kinds, queue = ["floor", "publish", "commit"], _queue(v)
                gc.collect()
                with _durable_queue(v):
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
    res["commit_floor"] = _summary_ms(commits)
    for v, got in out.items():
        pub, fl = _summary_ms(got["publish"]), _summary_ms(got["floor"])
        res[v] = {
            "samples": len(got["publish"]), "floor": fl, "publish_to_step": pub,
            "publish_call": _summary_ms(got["publish_call"]),
            "publish_to_task_start": _summary_ms(got["to_task_start"]),
            "task_start_to_step_p50_ms": _median([(a - b) * 1e3 for a, b in
                                                  zip(got["publish"], got["to_task_start"], strict=True)]),
            "ratio_p50": pub["p50_ms"] / fl["p50_ms"], "ratio_p99": pub["p99_ms"] / fl["p99_ms"],
            "meets_target": pub["p50_ms"] <= PUBLISH_P50_TARGET_MS and pub["p99_ms"] <= PUBLISH_P99_TARGET_MS,
            "raw_ms": {k: [round(x * 1e3, 4) for x in xs] for k, xs in got.items()},
        }
    res["target"] = f"p50 <= {PUBLISH_P50_TARGET_MS} ms, p99 <= {PUBLISH_P99_TARGET_MS} ms"
    return res


# -- part: throughput ------------------------------------------------------------
def _burst_ping(n: int, queue: str) -> dict[str, float]:
    from .django_celery import ping

    r = _redis()
    key = note_key("tp", uuid.uuid4().hex[:8])
    t0 = time.time()
    for _ in range(n):
        ping.apply_async((key,), queue=queue)
    t_sent = time.time()
    _wait_for(lambda: r.llen(key) >= n, 120, f"{n} bare tasks", 0.02)
    ts = sorted(float(x) for x in r.lrange(key, 0, -1))
    r.delete(key)
    return {"per_s": n / (ts[-1] - t0), "send_s": t_sent - t0, "elapsed_s": ts[-1] - t0}


def _burst_durable(n: int, tag: str, variant: str) -> dict[str, float]:
    from django.db import transaction
    from django.db.models import Max, Min

    import durable_django as dd
    from durable_django.models import DurableInstance, Status

    from . import django_programs as progs

    ids = [f"{tag}-{i}" for i in range(n)]
    c0 = time.time()
    with _durable_queue(variant):
        with transaction.atomic():  # the wake-ups are sent when this commits: a burst of n messages
            for i, iid in enumerate(ids):
                dd.start(progs.one_step, i, instance_id=iid)
            t0 = time.time()
        t_sent = time.time()
    rows = DurableInstance.objects.filter(pk__startswith=f"{tag}-")
    _wait_for(lambda: rows.filter(status=Status.COMPLETED).count() >= n, 300, f"{n} instances", 0.05)
    agg = rows.aggregate(first=Min("finished_at"), last=Max("finished_at"))
    first, last = agg["first"].timestamp(), agg["last"].timestamp()
    bad = sum(1 for iid, result in rows.values_list("instance_id", "result")
              if result != int(iid.rsplit("-", 1)[1]) + 1)
    if bad:
        raise AssertionError(f"{bad} instances with a wrong result")
    return {"per_s": n / (last - t0), "drain_per_s": (n - 1) / (last - first) if last > first else float("nan"),
            "create_s": t0 - c0, "send_s": t_sent - t0, "elapsed_s": last - t0}


def _group(filename: str) -> str:
    """The package a profiled function belongs to."""
    if filename.startswith("~") or filename.startswith("<"):
        return "builtins (C: sockets, locks, pickle...)"
    parts = Path(filename).parts
    if "site-packages" in parts:
        return parts[parts.index("site-packages") + 1].split(".")[0].split("-")[0]
    for pkg in ("durable_django", "durable", "bench"):
        if str(ROOT / pkg) + os.sep in filename:
            return pkg + (" (core)" if pkg == "durable" else "")
    return "stdlib (asyncio, threading...)"


def _fixed_costs_us(k: int = 300) -> dict[str, float]:
    """Wall µs of two things every ``run_instance`` does once: ``async_to_sync`` called from a sync thread
    (asgiref starts a thread and an event loop for it), and starting, stopping and joining a thread (the
    lease heartbeat)."""
    import threading

    from asgiref.sync import async_to_sync

    async def noop() -> int:
        return 1

    def thread() -> None:
        ev = threading.Event()
        t = threading.Thread(target=ev.wait, args=(20,), daemon=True)
        t.start()
        ev.set()
        t.join()

    out = {}
    for name, fn in (("async_to_sync_call_us", lambda: async_to_sync(noop)()), ("thread_start_join_us", thread)):
        fn()
        t0 = time.perf_counter()
        for _ in range(k):
            fn()
        out[name] = (time.perf_counter() - t0) / k * 1e6
    return out


def _inprocess(n: int) -> dict[str, Any]:
    """One-step instances run by ``executor.run_instance`` in this process, no Celery: the app's own share.

    CPU and wall ms per instance, SQL statements per instance, and a CPU-time cProfile grouped by package.
    """
    import cProfile
    import pstats

    import durable_django as dd
    from durable_django import api, executor

    from . import django_programs as progs

    def make(k: int) -> list[str]:
        orig, api.send_task = api.send_task, lambda *a, **kw: None  # rows only: nothing goes to the broker
        try:
            tag = uuid.uuid4().hex[:8]
            return [dd.start(progs.one_step, i, instance_id=f"ip-{tag}-{i}").instance_id for i in range(k)]
        finally:
            api.send_task = orig

    for iid in make(10):
        executor.run_instance(iid)
    ids = make(n)
    c0, w0 = time.process_time(), time.perf_counter()
    for iid in ids:
        if executor.run_instance(iid) != "completed":
            raise AssertionError(f"{iid} did not complete")
    cpu, wall = (time.process_time() - c0) / n * 1e3, (time.perf_counter() - w0) / n * 1e3
    kinds: dict[str, int] = {}
    ids = make(n + 1)
    with _counting_sql(kinds):
        executor.run_instance(ids[0])
    prof = cProfile.Profile(time.process_time)
    prof.enable()
    for iid in ids[1:]:
        executor.run_instance(iid)
    prof.disable()
    st = pstats.Stats(prof)
    groups: dict[str, float] = {}
    funcs = []
    for (fname, line, func), (_cc, _nc, tt, ct, _callers) in st.stats.items():  # type: ignore[attr-defined]
        g = _group(fname)
        groups[g] = groups.get(g, 0.0) + tt
        funcs.append((ct, f"{Path(fname).name}:{line}({func})"))
    total = sum(groups.values()) or 1.0
    return {"instances": n, "cpu_ms_per_instance": cpu, "wall_ms_per_instance": wall, **_fixed_costs_us(),
            "statements_per_instance": kinds,
            "cpu_profile_share": {g: round(t / total, 3) for g, t in sorted(groups.items(), key=lambda x: -x[1])},
            "cpu_profile_ms_per_instance": total / n * 1e3,
            "top_cumulative": [f"{ct / n * 1e3:.3f} ms  {name}" for ct, name in sorted(funcs, reverse=True)[:25]]}


def part_throughput(cfg: Config, db: str, logdir: Path, profile: bool = False) -> dict[str, Any]:
    import gc

    _truncate()
    workers = Workers(logdir)
    prof_dir = logdir if profile else None
    kinds = ["floor", *TP_VARIANTS]
    samples: dict[str, list[dict[str, float]]] = {k: [] for k in kinds}
    inproc = _inprocess(30 if cfg.quick else 200)
    try:
        for v in TP_VARIANTS:
            workers.start(2, v, profile_dir=prof_dir)
        pg, rd = _pids_named("postgres"), _pids_named("redis-server")
        _burst_ping(50, _queue("shipped"))
        for v in TP_VARIANTS:
            _burst_durable(50, f"warm-{v}-{uuid.uuid4().hex[:6]}", v)
        for r in range(cfg.tp_rounds):
            order = kinds[r % len(kinds):] + kinds[:r % len(kinds)]
            for which in order:
                gc.collect()
                wpids = workers.pids("shipped" if which == "floor" else which)
                cpu0 = {"workers": sum(map(_cpu_s, wpids)), "postgres": sum(map(_cpu_s, pg)),
                        "redis": sum(map(_cpu_s, rd)), "bench": sum(os.times()[:2])}
                busy0, tot0 = _machine_busy()
                if which == "floor":
                    s = _burst_ping(cfg.tp_instances, _queue("shipped"))
                else:
                    s = _burst_durable(cfg.tp_instances, f"tp{r}-{which}-{uuid.uuid4().hex[:6]}", which)
                busy1, tot1 = _machine_busy()
                cpu1 = {"workers": sum(map(_cpu_s, wpids)), "postgres": sum(map(_cpu_s, pg)),
                        "redis": sum(map(_cpu_s, rd)), "bench": sum(os.times()[:2])}
                s.update({f"cpu_ms_per_item_{k}": (cpu1[k] - cpu0[k]) / cfg.tp_instances * 1e3 for k in cpu0})
                s["machine_busy"] = (busy1 - busy0) / max(1, tot1 - tot0)
                samples[which].append(s)
    finally:
        workers.stop()
    med = {w: {k: _median([s[k] for s in samples[w]]) for k in samples[w][0]} for w in samples}
    res: dict[str, Any] = {"db": db, "workers": 2, "pool": "solo", "instances": cfg.tp_instances,
                           "rounds": cfg.tp_rounds, "floor": med["floor"], "samples": samples, "in_process": inproc,
                           "target": f">= {THROUGHPUT_TARGET:.0f}/s"}
    for v in TP_VARIANTS:
        res[v] = {**med[v], "ratio_to_floor": med[v]["per_s"] / med["floor"]["per_s"],
                  "meets_target": med[v]["per_s"] >= THROUGHPUT_TARGET}
    if profile:
        res["profile"] = {v: _profile_text(logdir, v) for v in TP_VARIANTS}
    return res


def _profile_text(logdir: Path, variant: str) -> str:
    import io
    import pstats

    files = [str(p) for p in sorted(logdir.glob(f"worker-{variant}-*.prof"))]
    if not files:
        return "(no profile written)"
    buf = io.StringIO()
    st = pstats.Stats(files[0], stream=buf)
    for f in files[1:]:
        st.add(f)
    st.sort_stats("cumulative").print_stats(60)
    st.sort_stats("tottime").print_stats(30)
    return buf.getvalue()


def child_main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--child", required=True, choices=["steps", "latency", "throughput"])
    ap.add_argument("--db", required=True, choices=["pg", "sqlite"])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--json", type=Path, required=True)
    ap.add_argument("--logdir", type=Path, required=True)
    a = ap.parse_args(argv)
    cfg = QUICK if a.quick else FULL
    _setup_django()
    t0 = time.perf_counter()
    if a.child == "steps":
        res = part_steps(cfg, a.db)
    elif a.child == "latency":
        res = part_latency(cfg, a.db, a.logdir)
    else:
        res = part_throughput(cfg, a.db, a.logdir, a.profile)
    res["elapsed_s"] = time.perf_counter() - t0
    a.json.write_text(json.dumps(res, indent=2, default=str) + "\n")


# =============================================================================
# Parent side (no Django here)
# =============================================================================
def _reset_pg() -> None:
    import psycopg

    with psycopg.connect(PG_DSN.format("postgres"), autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {PG_DB} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {PG_DB}")


def _drop_pg() -> None:
    import psycopg

    with psycopg.connect(PG_DSN.format("postgres"), autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {PG_DB} WITH (FORCE)")


def _settle_pg() -> None:
    """``CHECKPOINT`` before a part: the previous part's dirty pages are written now, not by the
    background checkpointer in the middle of the next part's commits."""
    import psycopg

    with psycopg.connect(PG_DSN.format("postgres"), autocommit=True) as conn:
        conn.execute("CHECKPOINT")


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("django", "celery", "kombu", "redis", "psycopg", "asgiref", "durable-django"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "-"
    try:
        import psycopg

        with psycopg.connect(PG_DSN.format("postgres")) as conn:
            out["postgresql"] = conn.execute("SHOW server_version").fetchone()[0]
        import redis

        out["redis-server"] = redis.Redis.from_url(BROKER).info("server")["redis_version"]
    except Exception as exc:  # the figures still say what they can
        out["services"] = f"unknown: {exc}"
    import sqlite3

    out["sqlite"] = sqlite3.sqlite_version
    return out


def _run_child(part: str, db: str, quick: bool, tmp: Path, profile: bool = False) -> dict[str, Any]:
    out = tmp / f"{part}-{db}.json"
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "bench.django_settings", "DURABLE_BENCH_DB": db,
           "DURABLE_BENCH_SQLITE": str(tmp / "bench.sqlite3"), "DURABLE_BENCH_BROKER": BROKER,
           "CELERY_BROKER_URL": BROKER, "DURABLE_BENCH_QUEUE": f"durable-bench-{uuid.uuid4().hex[:8]}"}
    env["DURABLE_BENCH_RUN"] = env["DURABLE_BENCH_QUEUE"]  # names the notes (variant queues extend the name)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    cmd = [sys.executable, "-m", "bench.django_bench", "--child", part, "--db", db, "--json", str(out),
           "--logdir", str(tmp)]
    if quick:
        cmd.append("--quick")
    if profile:
        cmd.append("--profile")
    print(f"  running {part} on {db} ...", file=sys.stderr, flush=True)
    _settle_pg()
    proc = subprocess.run(cmd, cwd=ROOT, env=env)
    _cleanup_queue(env["DURABLE_BENCH_QUEUE"])
    if proc.returncode != 0:
        logs = "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-2000:]}" for p in tmp.glob("bw*.log"))
        raise RuntimeError(f"benchmark part {part} on {db} failed (exit {proc.returncode})\n{logs}")
    return json.loads(out.read_text())


def _cleanup_queue(queue: str) -> None:
    from .redis_keys import purge_queue

    purge_queue(BROKER, queue)  # the queue, kombu's bindings of it, our notes (see django_programs.note_key)


def run(quick: bool = False, profile: bool = False) -> dict[str, Any]:
    from .core import _git_revision

    t0 = time.perf_counter()
    cfg = QUICK if quick else FULL
    _reset_pg()
    meta = {"date_utc": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "python": sys.version.split()[0], "platform": platform.platform(), "nproc": os.cpu_count(),
            "git": _git_revision(), "quick": quick, "config": asdict(cfg), "versions": _versions(),
            "loadavg_start": os.getloadavg()}
    res: dict[str, Any] = {"meta": meta}
    try:
        with tempfile.TemporaryDirectory(prefix="durable-django-bench-") as tmpdir:
            tmp = Path(tmpdir)
            if profile:
                res["throughput"] = _run_child("throughput", "pg", quick, tmp, profile=True)
                for v, text in res["throughput"]["profile"].items():
                    print(f"===== cProfile of the 2 workers, variant {v} =====\n{text}")
                return res
            res["steps_pg"] = _run_child("steps", "pg", quick, tmp)
            res["steps_sqlite"] = _run_child("steps", "sqlite", quick, tmp)
            res["latency"] = _run_child("latency", "pg", quick, tmp)
            res["throughput"] = _run_child("throughput", "pg", quick, tmp)
    finally:
        _drop_pg()
    meta["elapsed_s"] = time.perf_counter() - t0
    meta["loadavg_end"] = os.getloadavg()
    return res


# -- table ------------------------------------------------------------------------
def _ok(flag: bool) -> str:
    return "PASS" if flag else "MISS"


def format_table(res: dict[str, Any]) -> str:
    meta = res["meta"]
    v = meta["versions"]
    lines = [f"durable_django benchmark  {'(quick)' if meta['quick'] else '(full)'}  {meta['date_utc']}  "
             f"Python {meta['python']}  nproc={meta['nproc']}  git {meta['git']}  {meta.get('elapsed_s', 0):.0f} s",
             f"  Django {v.get('django')}  Celery {v.get('celery')}  PostgreSQL {v.get('postgresql')}  "
             f"Redis {v.get('redis-server')}  SQLite {v.get('sqlite')}  load avg "
             f"{meta['loadavg_start'][0]:.2f} -> {meta.get('loadavg_end', [0])[0]:.2f}"]
    rows: list[tuple[str, str]] = []

    def section(title: str) -> None:
        rows.append(("", ""))
        rows.append((f"== {title}", ""))

    for key, label in (("steps_pg", "PostgreSQL"), ("steps_sqlite", "SQLite WAL, synchronous=NORMAL")):
        s = res.get(key)
        if not s:
            continue
        sp, st = s["time_split"], s["statements"]["per_step"]
        section(f"per-step checkpoint, {label} (N={s['n_steps']:,} steps, slope N vs 1, median of {s['repeats']})")
        rows += [
            ("floor: UPDATE 2 KB + COMMIT (driver)", f"{s['floor_us']:,.1f} µs"),
            ("floor through Django's cursor + atomic()", f"{s['django_floor_us']:,.1f} µs"),
            ("durable_django per step", f"{s['step_us']:,.1f} µs   ratio {s['ratio']:.2f}x floor   "
                                        f"target {s['target']}: {_ok(s['meets_target'])}"),
        ]
        if "floor_one_statement_us" in s:
            rows.append(("  against the UPDATE alone in autocommit (driver)",
                         f"{s['floor_one_statement_us']:,.1f} µs   ratio {s['ratio_one_statement']:.2f}x"))
        rows += [
            ("  in save_state_sync", f"{sp['save_state_sync_us']:,.1f} µs"),
            ("    COMMIT statements", f"{sp['of_which_commit_us']:,.1f} µs"),
            ("    SQL statements (execute)", f"{sp['of_which_sql_us']:,.1f} µs  ("
             + ", ".join(f"{k[4:-3]} {us:,.0f}" for k, us in sp.items() if k.startswith("sql_")) + ")"),
            ("    sign (pickle + HMAC)", f"{sp['of_which_sign_us']:,.1f} µs"),
            ("    ORM query building, Python", f"{sp['of_which_orm_python_us']:,.1f} µs"),
            ("  outside it (runtime, thread hops)", f"{sp['outside_save_state_us']:,.1f} µs  (one asgiref hop: "
             f"{s['asgiref_hop_us']:,.1f} µs)"),
            ("  SQL statements per step", ", ".join(f"{k} {n:g}" for k, n in st.items())),
            ("whole run of 1 step (start + run)", f"{s['run_1_step_ms']:,.2f} ms"),
        ]
        if s["vendor"] == "postgresql":
            rows.append(("for scale: DBOS on this PostgreSQL", f"{DBOS_MS_PER_STEP[0]}-{DBOS_MS_PER_STEP[1]} ms/step"))
            h = s.get("hot_updates") or {}
            if "durable_django_durableinstance" in h:
                di, bf = h["durable_django_durableinstance"], h.get("bench_floor", {})
                rows.append(("HOT updates: instance rows / floor rows",
                             f"{di['hot_updates']:,} of {di['updates']:,} / {bf.get('hot_updates', 0):,} of "
                             f"{bf.get('updates', 0):,}  (instance table: {h['instance_indexes']} indexes)"))
            rows.append(("Django opening a new connection", f"{s['django_connect_ms']:.2f} ms (what a worker pays per "
                                                            "task by Celery's default, see below)"))

    lat = res.get("latency")
    if lat:
        n = lat["shipped"]["samples"]
        section(f"publish_event -> next step runs (1 solo worker, one variant at a time, Redis broker, "
                f"{n} samples each)")
        rows.append(("", "".join(c.rjust(10) for c in ("p50 ms", "p90 ms", "p99 ms", "max ms"))))

        def lrow(name: str, d: dict[str, float]) -> None:
            rows.append((name, "".join(f"{d[k]:10.3f}" for k in ("p50_ms", "p90_ms", "p99_ms", "max_ms"))))

        lrow("floor: UPDATE 2 KB + COMMIT, same rounds", lat["commit_floor"])
        for v, title in (("shipped", "Celery's default: the DB connection is closed per task"),
                         ("reuse", "worker keeps its DB connection (CELERY_DB_REUSE_MAX)")):
            p = lat[v]
            rows.append((f"- {title}", " "))
            lrow("floor: bare task .delay() -> task starts", p["floor"])
            lrow("publish_event -> step runs", p["publish_to_step"])
            lrow("  publish_event() call returns", p["publish_call"])
            lrow("  publish_event -> run_instance task starts", p["publish_to_task_start"])
            rows.append(("  task start -> step runs (p50)", f"{p['task_start_to_step_p50_ms']:.3f} ms"))
            rows.append(("ratio to floor", f"p50 {p['ratio_p50']:.2f}x  p99 {p['ratio_p99']:.2f}x   target "
                                           f"{lat['target']}: {_ok(p['meets_target'])}"))

        ip = lat["in_process"]
        rows.append(("without Celery (in process, median)", f"publish_event {ip['publish_call_ms']:.2f} ms, wake-up "
                                                             f"run_instance {ip['run_instance_ms']:.2f} ms"))
        rows.append(("  SQL statements of one wake-up", ", ".join(f"{k} {n}" for k, n in
                                                                 ip["statements_per_wakeup"].items())
                     ))

    tp = res.get("throughput")
    if tp:
        f = tp["floor"]
        section(f"throughput ({tp['instances']:,} per burst, 2 solo workers, PostgreSQL, median of {tp['rounds']})")
        rows.append(("", "".join(c.rjust(11) for c in ("per s", "drain/s", "worker ms", "pg ms", "bench ms",
                                                        "busy"))))

        def trow(name: str, d: dict[str, float]) -> None:
            drain = f"{d['drain_per_s']:11,.0f}" if "drain_per_s" in d else f"{'-':>11}"
            rows.append((name, f"{d['per_s']:11,.0f}{drain}{d['cpu_ms_per_item_workers']:11.2f}"
                               f"{d['cpu_ms_per_item_postgres']:11.2f}{d['cpu_ms_per_item_bench']:11.2f}"
                               f"{d['machine_busy']:11.0%}"))

        trow("floor: bare tasks", f)
        for v, title in (("shipped", "one-step processes, connection closed per task"),
                         ("reuse", "one-step processes, CELERY_DB_REUSE_MAX"),
                         ("unbatched", "  same, BATCH_SIZE=1 (a message per instance)")):
            if v not in tp:
                continue
            d = tp[v]
            trow(title, d)
            rows.append(("  ratio to floor", f"{d['ratio_to_floor']:.2f}x   target {tp['target']}: "
                                             f"{_ok(d['meets_target'])}"))
        d = tp["shipped"]
        rows.append(("creating the rows / sending the wake-ups", f"{d['create_s']:.2f} s / {d['send_s']:.2f} s "
                                                                 "(bench process; sending is inside per s)"))
        rows.append(("(worker/pg/bench ms = CPU ms per item; busy = whole machine)", " "))
        ip = tp["in_process"]
        rows.append(("without Celery: run_instance of a one-step", f"{ip['cpu_ms_per_instance']:.2f} ms CPU, "
                                                                   f"{ip['wall_ms_per_instance']:.2f} ms wall"))
        rows.append(("  SQL statements", ", ".join(f"{k} {n}" for k, n in ip["statements_per_instance"].items())
                     ))
        rows.append(("  once per run: async_to_sync / heartbeat thread", f"{ip['async_to_sync_call_us']:.0f} µs / "
                                                                         f"{ip['thread_start_join_us']:.0f} µs"))
        rows.append(("  CPU profile by package", ", ".join(f"{k.split(' (')[0]} {v:.0%}" for k, v in
                                                           list(ip["cpu_profile_share"].items())[:6])))

    width = max(len(k) for k, val in rows if val) + 2
    for k, val in rows:
        lines.append(k if not val else f"  {k.ljust(width)}{val}")
    return "\n".join(lines)


DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "django.json"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(prog="python -m bench django", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, a smoke run (< 60 s)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON output (default {DEFAULT_OUT})")
    ap.add_argument("--profile", action="store_true",
                    help="run the throughput part with every worker under cProfile and print the profiles")
    args = ap.parse_args(argv)
    res = run(quick=args.quick, profile=args.profile)
    if args.profile:
        return res
    print(format_table(res))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2, default=str) + "\n")
    print(f"\nwrote {args.out}")
    return res


if __name__ == "__main__":
    if "--child" in sys.argv[1:]:
        child_main(sys.argv[1:])
    else:
        main()
