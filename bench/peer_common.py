"""What every child of the peer benchmark shares: sizes, rounds, floors, byte counts, the JSON hand-over.

The peer benchmark (:mod:`bench.peers`) runs each system in a child process
of its own (DBOS keeps a process-wide singleton, Django's settings are fixed
per process, and the seed package and this project both install a top-level
``durable``). A child is started as a *script* (``python bench/peer_x.py``),
so ``sys.path[0]`` is ``bench/`` and it imports this file as
``peer_common``. Nothing here imports ``durable``: the seed's child must not
load this project's package. The statistics come from :mod:`bench.common.stats` (standard library only);
the checkout is appended to ``sys.path`` for it, after ``PYTHONPATH``, so the seed's ``durable`` still wins.

Every child measures the same figures the same way (see ``bench/README.md``,
"Peers"): medians over rounds that run the variants in rotating order after
warm-up rounds, with the floor of its database measured in the same rounds.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path.append(str(Path(__file__).resolve().parent.parent))

from bench.common.stats import median  # noqa: E402
from bench.common.stats import percentile_by_index as pct  # noqa: E402

__all__ = ["median", "pct"]  # the children use them as ``pc.median``, ``pc.pct``

PG_HOST = "127.0.0.1"
PG_PORT = 5432
PG_USER = "postgres"
#: PostgreSQL databases of this benchmark, one per family of systems (dropped and recreated by each child).
PG_DATABASES = {"ours": "peers_ours", "dbos": "peers_dbos", "dd": "peers_dd"}
BLOB_BYTES = 2048


@dataclass(frozen=True)
class Sizes:
    """Sizes and repeat counts of one run; the same for every system."""

    quick: bool
    steps_db: int          # N of the per-step slope on a database
    steps_mem: int         # N of the per-step slope in memory
    step_rounds: int
    floor_batch: int       # UPDATE+COMMITs per floor sample
    k_values: tuple[int, ...]
    resume_repeats: int    # instances resumed per K
    start_batch: int       # one-step instances per start-rate sample
    start_rounds: int
    latency_samples: int
    latency_per_instance: int
    warmup: int


FULL = Sizes(quick=False, steps_db=200, steps_mem=2000, step_rounds=7, floor_batch=100, k_values=(10, 1_000, 10_000),
             resume_repeats=3, start_batch=50, start_rounds=5, latency_samples=40, latency_per_instance=10, warmup=2)
QUICK = Sizes(quick=True, steps_db=40, steps_mem=300, step_rounds=3, floor_batch=30, k_values=(10, 100, 1_000),
              resume_repeats=3, start_batch=10, start_rounds=3, latency_samples=12, latency_per_instance=6, warmup=1)


def sizes(quick: bool) -> Sizes:
    return QUICK if quick else FULL


def now() -> float:
    return time.perf_counter()


def rotate(names: list[str], r: int) -> list[str]:
    """``names`` shifted by ``r``: the order of round ``r``, so drift hits every variant alike."""
    k = r % len(names)
    return names[k:] + names[:k]


def rounds(variants: dict[str, Callable[[], float]], n_rounds: int, warmup: int) -> dict[str, list[float]]:
    """Run every variant once per round in rotating order; keep the samples of the rounds after warm-up."""
    out: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    for r in range(warmup + n_rounds):
        for name in rotate(names, r):
            gc.collect()
            v = variants[name]()
            if r >= warmup:
                out[name].append(v)
    return out


def slope_us(t_long: list[float], t_short: list[float], n: int) -> list[float]:
    """µs per step from paired runs of ``n`` steps and of 1 step (the fixed cost of a run drops out)."""
    return [(a - b) / (n - 1) * 1e6 for a, b in zip(t_long, t_short)]


# -- floors -------------------------------------------------------------------
def blobs() -> list[bytes]:
    """16 different 2 KB values, so that no write is a no-op."""
    return [os.urandom(BLOB_BYTES) for _ in range(16)]


class Floor:
    """``UPDATE bench_floor SET data = <2 KB> WHERE id = 1`` + ``COMMIT`` with the bare driver.

    The least a checkpoint of one instance can cost on that database: one
    row, one write, one durable commit. PostgreSQL: psycopg 3 on its own
    connection (``synchronous_commit`` as the server has it, ``on``).
    SQLite: the ``sqlite3`` module given (WAL, ``synchronous=NORMAL`` unless
    ``pragmas`` says otherwise) on the file the system under test uses.
    """

    def __init__(self, db: str, *, pg_name: str = "", sqlite_path: str = "", sqlite_module: Any = None,
                 pragmas: tuple[str, ...] = ("PRAGMA journal_mode=WAL", "PRAGMA synchronous=NORMAL")) -> None:
        self.db, self.blobs, self.i = db, blobs(), 0
        if db == "pg":
            import psycopg

            self.conn = psycopg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname=pg_name)
            with self.conn.cursor() as cur:
                cur.execute("CREATE TABLE IF NOT EXISTS bench_floor (id int PRIMARY KEY, data bytea)")
                cur.execute("INSERT INTO bench_floor VALUES (1, %s) ON CONFLICT (id) DO NOTHING", (self.blobs[0],))
            self.conn.commit()
            self.sql = "UPDATE bench_floor SET data = %s WHERE id = 1"
            self.settings = "psycopg 3, synchronous_commit=on"
        else:
            mod = sqlite_module
            if mod is None:
                import sqlite3 as mod
            self.conn = mod.connect(sqlite_path, isolation_level=None)
            for p in pragmas:
                self.conn.execute(p)
            self.conn.execute("CREATE TABLE IF NOT EXISTS bench_floor (id integer PRIMARY KEY, data blob)")
            self.conn.execute("INSERT OR IGNORE INTO bench_floor VALUES (1, ?)", (self.blobs[0],))
            self.sql = "UPDATE bench_floor SET data = ? WHERE id = 1"
            self.settings = f"sqlite {mod.sqlite_version}, " + ", ".join(p.removeprefix("PRAGMA ") for p in pragmas)

    def op(self) -> None:
        self.i += 1
        if self.db == "pg":
            with self.conn.cursor() as cur:
                cur.execute(self.sql, (self.blobs[self.i & 15],))
            self.conn.commit()
        else:
            self.conn.execute("BEGIN IMMEDIATE")
            self.conn.execute(self.sql, (self.blobs[self.i & 15],))
            self.conn.execute("COMMIT")

    def batch_s(self, n: int) -> float:
        """Mean seconds of one UPDATE+COMMIT over a batch of ``n``."""
        t0 = now()
        for _ in range(n):
            self.op()
        return (now() - t0) / n

    def close(self) -> None:
        self.conn.close()


def recreate_pg_database(name: str) -> None:
    """Drop and create the PostgreSQL database ``name`` (only this benchmark's own databases)."""
    if name not in PG_DATABASES.values():
        raise ValueError(f"{name!r} is not a database of the peer benchmark")
    import psycopg

    with psycopg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname="postgres", autocommit=True) as c:
        c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        c.execute(f'CREATE DATABASE "{name}"')


def pg_url(name: str, driver: str = "postgresql") -> str:
    return f"{driver}://{PG_USER}@{PG_HOST}:{PG_PORT}/{name}"


def payload_bytes(rows: list[tuple[Any, ...]]) -> int:
    """Bytes of the values in ``rows`` as stored: strings in UTF-8, bytes as they are, 8 per number or date.

    The same count for every system and database (row headers and indexes
    are left out), so the figures compare what each system keeps per instance.
    """
    total = 0
    for row in rows:
        for v in row:
            if v is None:
                continue
            if isinstance(v, memoryview):
                total += v.nbytes
            elif isinstance(v, bytes | bytearray):
                total += len(v)
            elif isinstance(v, str):
                total += len(v.encode())
            elif isinstance(v, dict | list):
                total += len(json.dumps(v, separators=(",", ":")).encode())
            else:
                total += 8
    return total


# -- the child's command line and result --------------------------------------
def child_args(description: str, dbs: tuple[str, ...]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--db", choices=dbs, required=True)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--workdir", required=True, help="directory for SQLite files and state files")
    ap.add_argument("--out", required=True, help="JSON result file")
    return ap.parse_args()


def na(reason: str) -> dict[str, str]:
    """A figure the system cannot produce, with the reason shown in the table and the JSON."""
    return {"na": reason}


def write_result(path: str, res: dict[str, Any], sz: Sizes) -> None:
    res.setdefault("meta", {}).update(python=platform.python_version(), sizes=asdict(sz), pid=os.getpid(),
                                      executable=sys.executable)
    with open(path, "w") as f:
        json.dump(res, f, indent=1)


def check(got: Any, expected: Any, what: str) -> None:
    """Refuse a figure from a run that returned the wrong value."""
    if got != expected:
        raise AssertionError(f"{what}: got {got!r}, expected {expected!r}")
