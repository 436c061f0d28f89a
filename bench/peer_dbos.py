"""Child of the peer benchmark: DBOS Transact on SQLite or PostgreSQL.

``python bench/peer_dbos.py --db sqlite|pg --workdir DIR --out FILE [--quick]``
(started by :mod:`bench.peers`). The programs are the idiomatic DBOS
equivalents of the other systems': a ``@DBOS.workflow()`` whose loop calls a
``@DBOS.step()`` K times; events are DBOS messages (``DBOS.send`` /
``DBOS.recv``).

Resume after K steps is DBOS's recovery of a crashed workflow: a second
invocation of this script (``--build-crashed``) starts workflows that do K
steps and then wait on ``recv``, and ends with ``os._exit`` once every one of
them has its K steps recorded: a crash. This process then sends the message
and asks DBOS to resume each workflow (``DBOS.resume_workflow``); DBOS
re-runs the workflow function, which replays the K recorded steps from the
database, receives the message, runs one more step and returns.
"""

from __future__ import annotations

import os
import sys
import threading
import time
import uuid
from typing import Any

_DB = sys.argv[sys.argv.index("--db") + 1] if "--db" in sys.argv[:-1] else ""
if _DB == "sqlite":
    # DBOS 3.x needs SQLite >= 3.42; the system's is older. pysqlite3-binary brings its own.
    import pysqlite3
    import pysqlite3.dbapi2 as _sqlite

    sys.modules["sqlite3"] = pysqlite3
    sys.modules["sqlite3.dbapi2"] = _sqlite

import peer_common as pc  # noqa: E402
from dbos import DBOS, DBOSConfig, SetWorkflowID  # noqa: E402

#: Set in this process only: when the workflow body starts and when it returns, by workflow id.
ENTERED: dict[str, float] = {}
RETURNING: dict[str, float] = {}
MARKS: dict[int, float] = {}
#: In the ``--build-crashed`` child: workflows stop after their K steps and wait for the crash.
BUILDING = os.environ.get("PEERS_DBOS_BUILDING") == "1"
WAIT_SECONDS = 3600


@DBOS.step()
def step(acc: int, i: int) -> int:
    """One trivial recorded step."""
    return acc + i


@DBOS.step()
def mark(v: int) -> int:
    """Note when the step after a received message runs (event-to-resume latency)."""
    MARKS[v] = time.perf_counter()
    return v


@DBOS.workflow()
def many_steps(n: int) -> int:
    """``n`` recorded steps."""
    acc = 0
    for i in range(n):
        acc = step(acc, i)
    return acc


@DBOS.workflow()
def one_step(x: int) -> int:
    """One recorded step: the smallest instance (start rate)."""
    return step(x, 1)


@DBOS.workflow()
def steps_then_wait(k: int) -> int:
    """K recorded steps, a message ``go``, one more step."""
    wid = DBOS.workflow_id
    if wid is not None and wid not in ENTERED:
        ENTERED[wid] = time.perf_counter()
    acc = 0
    for i in range(k):
        acc = step(acc, i)
    if BUILDING:
        threading.Event().wait()  # the builder process is killed here, after K recorded steps
    extra = DBOS.recv("go", timeout_seconds=WAIT_SECONDS)
    acc = step(acc, extra)
    if wid is not None:
        RETURNING[wid] = time.perf_counter()
    return acc


@DBOS.workflow()
def event_loop(rounds: int) -> int:
    """``rounds`` times: wait for the message ``go``, then run the step ``mark``."""
    total = 0
    for _ in range(rounds):
        v = DBOS.recv("go", timeout_seconds=WAIT_SECONDS)
        total += mark(v)
    return total


def _sqlite_engine(url: str) -> Any:
    """DBOS's own SQLite connection set-up, plus WAL and synchronous=NORMAL (as the floor and durable_django)."""
    import sqlalchemy as sa

    engine = sa.create_engine(url)

    @sa.event.listens_for(engine, "connect")
    def setup(dbapi_conn: Any, record: Any) -> None:
        dbapi_conn.isolation_level = "IMMEDIATE"
        dbapi_conn.execute("PRAGMA busy_timeout=30000")
        dbapi_conn.execute("PRAGMA foreign_keys=ON")
        dbapi_conn.execute("PRAGMA journal_mode=WAL")
        dbapi_conn.execute("PRAGMA synchronous=NORMAL")

    return engine


def _config(db: str, workdir: str, executor_id: str) -> DBOSConfig:
    url = (f"sqlite:///{workdir}/dbos.sqlite3" if db == "sqlite" else pc.pg_url(pc.PG_DATABASES["dbos"]))
    cfg: DBOSConfig = {"name": "peers-bench", "system_database_url": url, "executor_id": executor_id,
                       "log_level": "WARNING", "application_version": "peers-bench-1"}
    if db == "sqlite":
        cfg["system_database_engine"] = _sqlite_engine(url)
    return cfg


def _launch(db: str, workdir: str, executor_id: str) -> None:
    DBOS(config=_config(db, workdir, executor_id))
    DBOS.launch()


def _steps_recorded(wid: str) -> int:
    return sum(1 for s in DBOS.list_workflow_steps(wid, load_output=False) if s["function_name"].endswith("step"))


def build_crashed(db: str, workdir: str, k: int, ids: list[str]) -> None:
    """Start ``steps_then_wait(k)`` under each id, wait until all have K recorded steps, then crash."""
    _launch(db, workdir, "peers-crashed")

    def run(wid: str) -> None:
        with SetWorkflowID(wid):
            steps_then_wait(k)

    # Called directly in threads of this process (not through a queue, which another process could serve).
    for wid in ids:
        threading.Thread(target=run, args=(wid,), daemon=True).start()
    deadline = time.monotonic() + 1800
    pending = list(ids)
    while pending:
        if time.monotonic() > deadline:
            raise TimeoutError(f"workflows did not reach {k} steps")
        pending = [w for w in pending if _steps_recorded(w) < k]
        time.sleep(0.05)
    sys.stdout.flush()
    os._exit(0)


def _expected_wait(k: int, extra: int) -> int:
    return sum(range(k)) + extra


def _state_bytes(db: str, workdir: str, wid: str) -> int:
    """Bytes DBOS keeps for a workflow: its status row and its recorded step outputs."""
    tables = ("workflow_status", "operation_outputs", "notifications")
    cols = {"workflow_status": "workflow_uuid", "operation_outputs": "workflow_uuid",
            "notifications": "destination_uuid"}
    rows: list[tuple[Any, ...]] = []
    if db == "pg":
        import psycopg

        with psycopg.connect(host=pc.PG_HOST, port=pc.PG_PORT, user=pc.PG_USER,
                             dbname=pc.PG_DATABASES["dbos"]) as c:
            for t in tables:
                rows += c.execute(f"SELECT * FROM dbos.{t} WHERE {cols[t]} = %s", (wid,)).fetchall()
    else:
        conn = _sqlite.connect(f"{workdir}/dbos.sqlite3")
        for t in tables:
            rows += conn.execute(f"SELECT * FROM {t} WHERE {cols[t]} = ?", (wid,)).fetchall()
        conn.close()
    return pc.payload_bytes(rows)


def part_steps(sz: pc.Sizes, floor: pc.Floor) -> dict[str, Any]:
    n = sz.steps_db

    def plain() -> float:
        acc, t0 = 0, pc.now()
        for i in range(n):
            acc = step.__wrapped__(acc, i) if hasattr(step, "__wrapped__") else acc + i
        return (pc.now() - t0) / n

    def run(m: int) -> float:
        t0 = pc.now()
        got = many_steps(m)
        dt = pc.now() - t0
        pc.check(got, sum(range(m)), f"many_steps({m})")
        return dt

    s = pc.rounds({"floor": lambda: floor.batch_s(sz.floor_batch), "long": lambda: run(n), "short": lambda: run(1),
                   "plain": plain}, sz.step_rounds, sz.warmup)
    per = pc.slope_us(s["long"], s["short"], n)
    return {"n": n, "us": pc.median(per), "floor_us": pc.median(s["floor"]) * 1e6,
            "plain_us": pc.median(s["plain"]) * 1e6, "run1_ms": pc.median(s["short"]) * 1e3,
            "samples_us": per}


def part_start(sz: pc.Sizes) -> dict[str, Any]:
    def batch() -> float:
        t0 = pc.now()
        for i in range(sz.start_batch):
            pc.check(one_step(i), i + 1, "one_step")
        return sz.start_batch / (pc.now() - t0)

    s = pc.rounds({"batch": batch}, sz.start_rounds, 1)
    return {"per_s": pc.median(s["batch"]), "samples": s["batch"],
            "method": "one-step workflows called one after the other in this thread"}


def build_all(sz: pc.Sizes, db: str, workdir: str) -> tuple[dict[int, list[str]], dict[int, float]]:
    """Crashed workflows for every K, built before this process launches DBOS.

    While a DBOS process runs, its queue thread may claim workflows that
    another process starts, so no DBOS runs here while the builders do.
    """
    import subprocess

    ids = {k: [f"crash-{k}-{r}-{uuid.uuid4().hex[:6]}" for r in range(sz.resume_repeats)] for k in sz.k_values}
    build_s: dict[int, float] = {}
    for k in sz.k_values:
        t0 = pc.now()
        env = dict(os.environ, PEERS_DBOS_BUILDING="1")
        subprocess.run([sys.executable, __file__, "--db", db, "--workdir", workdir, "--out", os.devnull,
                        "--build-crashed", str(k), *ids[k]], env=env, check=True)
        build_s[k] = (pc.now() - t0) / len(ids[k])
    return ids, build_s


def part_resume(sz: pc.Sizes, db: str, workdir: str, ids: dict[int, list[str]],
                build_s: dict[int, float]) -> dict[str, Any]:
    DBOS.register_queue(QUEUE_NAME, polling_interval_sec=QUEUE_POLL_S)
    time.sleep(2.5)  # DBOS's queue thread looks for new queues once a second
    state_b = {k: _state_bytes(db, workdir, ids[k][0]) for k in sz.k_values}
    samples: dict[int, dict[str, list[float]]] = {k: {"replay": [], "send": [], "e2e": []} for k in sz.k_values}
    names = [str(k) for k in sz.k_values]
    for r in range(sz.resume_repeats):
        for name in pc.rotate(names, r):
            k = int(name)
            wid = ids[k][r]
            pc.check(DBOS.get_workflow_status(wid).status, "PENDING", f"crashed workflow {wid}")
            t0 = pc.now()
            DBOS.send(wid, 7, "go")
            t1 = pc.now()
            handle = DBOS.resume_workflow(wid, queue_name=QUEUE_NAME)
            got = handle.get_result(polling_interval_sec=0.001)
            t2 = pc.now()
            pc.check(got, _expected_wait(k, 7), f"recovered steps_then_wait({k})")
            if not t1 < ENTERED[wid] < RETURNING[wid] < t2:
                raise AssertionError(f"workflow {wid} did not run between resume and result")
            samples[k]["send"].append(t1 - t0)
            samples[k]["replay"].append(RETURNING[wid] - ENTERED[wid])
            samples[k]["e2e"].append(t2 - t0)
    points = []
    for k in sz.k_values:
        s = samples[k]
        resume = [a + b for a, b in zip(s["send"], s["replay"])]
        points.append({"k": k, "ms": pc.median(resume) * 1e3, "send_ms": pc.median(s["send"]) * 1e3,
                       "replay_ms": pc.median(s["replay"]) * 1e3, "e2e_ms": pc.median(s["e2e"]) * 1e3,
                       "state_bytes": state_b[k], "build_s": build_s[k], "samples_ms": [x * 1e3 for x in resume]})
    return {"points": points,
            "method": ("workflows crashed (os._exit of the process that ran them) after K recorded steps; "
                       "ms = DBOS.send of the message + the recovered workflow body from its start to its return "
                       "(replay of K steps, recv, one step); e2e_ms: from the send to get_result() returning, "
                       "adding DBOS.resume_workflow, its queue dispatch "
                       f"(a queue polled every {QUEUE_POLL_S} s) and the final status write")}


def part_latency(sz: pc.Sizes) -> dict[str, Any]:
    lat: list[float] = []
    per, v = sz.latency_per_instance, 0
    while len(lat) < sz.latency_samples:
        handle = DBOS.start_workflow(event_loop, per)
        time.sleep(0.05)
        expected = 0
        for i in range(per):
            v += 1
            expected += v
            t0 = pc.now()
            DBOS.send(handle.workflow_id, v, "go")
            deadline = time.monotonic() + 30
            while v not in MARKS:
                if time.monotonic() > deadline:
                    raise TimeoutError("the step after recv did not run")
                time.sleep(0.0002)
            if i >= 1:  # the first round of an instance includes starting it
                lat.append(MARKS[v] - t0)
            time.sleep(0.005)
        pc.check(handle.get_result(), expected, "event_loop")
    lat = lat[: sz.latency_samples]
    return {"p50_ms": pc.median(lat) * 1e3, "p90_ms": pc.pct(lat, 90) * 1e3, "samples": len(lat),
            "method": "DBOS.send to a workflow blocked in DBOS.recv (another thread) -> the next step runs"}


QUEUE_NAME = "peers_bench_recovery"
QUEUE_POLL_S = 0.01


def main() -> None:
    if "--build-crashed" in sys.argv:
        i = sys.argv.index("--build-crashed")
        db = sys.argv[sys.argv.index("--db") + 1]
        workdir = sys.argv[sys.argv.index("--workdir") + 1]
        build_crashed(db, workdir, int(sys.argv[i + 1]), sys.argv[i + 2:])
        return
    args = pc.child_args(__doc__.splitlines()[0], ("sqlite", "pg"))
    sz = pc.sizes(args.quick)
    if args.db == "pg":
        pc.recreate_pg_database(pc.PG_DATABASES["dbos"])
        floor = pc.Floor("pg", pg_name=pc.PG_DATABASES["dbos"])
    else:
        for suffix in ("", "-wal", "-shm", "-journal"):
            if os.path.exists(f"{args.workdir}/dbos.sqlite3{suffix}"):
                os.remove(f"{args.workdir}/dbos.sqlite3{suffix}")
        floor = pc.Floor("sqlite", sqlite_path=f"{args.workdir}/floor.sqlite3", sqlite_module=_sqlite)
    ids, build_s = build_all(sz, args.db, args.workdir)
    _launch(args.db, args.workdir, "local")
    from importlib.metadata import version

    res: dict[str, Any] = {"system": "DBOS Transact", "db": args.db, "version": version("dbos"),
                           "settings": {"floor": floor.settings,
                                        "dbos": ("DBOS's SQLite set-up (IMMEDIATE, busy_timeout, foreign_keys) "
                                                        "plus journal_mode=WAL, synchronous=NORMAL; SQLite "
                                                        f"{_sqlite.sqlite_version} (pysqlite3-binary)")
                                        if args.db == "sqlite" else "DBOS defaults, LISTEN/NOTIFY"}}
    res["per_step"] = part_steps(sz, floor)
    floor.close()
    res["start"] = part_start(sz)
    res["latency"] = part_latency(sz)
    res["resume"] = part_resume(sz, args.db, args.workdir, ids, build_s)
    pc.write_result(args.out, res, sz)
    sys.stdout.flush()
    os._exit(0)  # DBOS.destroy() can wait long on its background threads; nothing is left to save


if __name__ == "__main__":
    main()
