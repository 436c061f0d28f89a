"""Load suite of durable_django on PostgreSQL: 100,000 waiting instances, concurrent publishers, admin, sweep.

``python -m bench load [--instances N] [--targets T] [--publishers P] [--workers W] [--quick]``
(see ``bench/README.md``, section "Load suite"):

1. A database of its own (``durable_load``, dropped and created) holding N
   instances that really wait: one instance of each kind is run through the
   app until it pauses, then its row is cloned by ``COPY`` with new ids, the
   frame's locals and the start arguments re-signed for each clone.
2. P publisher processes send ``"go"`` to T of them, with duplicates (the same
   idempotency key again, and the same event from two publishers at once),
   while W Celery workers run the woken instances (each then does one
   database step and completes). Throughput, publish -> completed latency
   from the rows' timestamps, and the exactly-once invariants.
3. The admin changelist and detail page with N rows (Django's test client).
4. ``durable_resume`` over N rows with a few hundred due (expired leases,
   due timers, events without a wake-up), dry run and real, with EXPLAIN of
   every query it sends.

Speeds are reported, never asserted; the invariants are checked and a run
that breaks one fails.
"""

from __future__ import annotations

import argparse
import datetime
import io
import json
import os
import platform
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from durable import sleep, wait_for_event
from durable_django.steps import db_step

from .django_bench import _summary_ms

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "bench" / "results" / "load.json"
DEFAULT_DB = "durable_load"
DEFAULT_BROKER = "redis://127.0.0.1:6379/12"
DEFAULT_PG_URL = "postgres://postgres@127.0.0.1:5432/postgres"
EFFECT_TABLE = "bench_load_effect"
EVENT = "go"
#: A scan (sequential, or of a whole index) reading at least this many rows is reported as a finding
#: (sequential scans of smaller tables are the planner's right choice).
BIG_SCAN = 1000


# =============================================================================
# The programs (module level: workers import them by dotted path)
# =============================================================================
@db_step
def record_effect(key: str, payload: dict) -> None:
    """The exactly-once side effect: one row, written in the transaction of the checkpoint that follows."""
    from django.db import connection

    with connection.cursor() as cur:
        cur.execute(f"INSERT INTO {EFFECT_TABLE} (instance_key, target, at) VALUES (%s, %s, clock_timestamp())",
                    [key, (payload or {}).get("target")])


async def wait_then_record(key: str) -> str:
    """What the 100,000 instances run: wait for ``"go"``, record it in the database, complete."""
    payload = await wait_for_event(EVENT)
    await record_effect(key, payload)
    return key


async def sleep_then_record(key: str) -> str:
    """A timer wait (some instances wait for one; the sweep's due timers)."""
    await sleep(3600)
    await record_effect(key, {"target": key})
    return key


@db_step
def make_payload(key: str) -> dict:
    """A step that only computes something (its checkpoint is the one a dead worker leaves behind)."""
    return {"target": key}


async def prepare_then_record(key: str) -> str:
    """Two steps; the sweep's "expired lease" instances stopped between them (their worker died)."""
    payload = await make_payload(key)
    await record_effect(key, payload)
    return key


class _StopHere(BaseException):
    """Raised by :func:`stop_after_first_step`: the run ends as if its worker died (no exception handler of the
    executor runs, the lease stays taken), right after the checkpoint of the first step."""


def stop_after_first_step(instance_id: str, steps: int) -> None:
    """``DURABLE['ON_CHECKPOINT']`` while building the "running" template: the worker "dies" after step 1."""
    if instance_id == "load-template-running":
        raise _StopHere(instance_id)


# =============================================================================
# Sizes
# =============================================================================
@dataclass(frozen=True)
class Config:
    quick: bool
    instances: int        # rows in the database, all waiting
    targets: int          # instances the publishers send "go" to
    publishers: int
    workers: int
    due_each: int         # per kind of due row: expired lease, due timer, event without wake-up
    future_timers: int    # instances paused on a timer that is not due
    admin_repeats: int
    sweep_repeats: int
    timeout_s: float      # deadline for the workers to complete what was sent
    rate: float           # events/s over all publishers; 0: as fast as they can
    wakeup_samples: int   # instances woken in process (half with, half without the human-task receivers)
    repeat_share: float = 0.10      # targets sent twice in a row by one publisher (same idempotency key)
    concurrent_share: float = 0.10  # targets sent by two publishers at about the same moment
    late_share: float = 0.05        # targets sent again at the end (usually finished by then)


def make_config(args: argparse.Namespace) -> Config:
    quick = args.quick
    instances = args.instances or (5_000 if quick else 100_000)
    targets = args.targets or (200 if quick else 1_000)
    due = args.due or (20 if quick else 100)
    future = min(1_000 if not quick else 100, instances // 20)
    if targets + 3 * due + future > instances:
        raise SystemExit(f"--instances {instances} is too small for {targets} targets and {3 * due + future} "
                         "due/timer rows")
    return Config(quick=quick, instances=instances, targets=targets, publishers=args.publishers,
                  workers=args.workers, due_each=due, future_timers=future, admin_repeats=3 if quick else 7,
                  sweep_repeats=3 if quick else 5, timeout_s=args.timeout or (120.0 if quick else 900.0),
                  rate=args.rate, wakeup_samples=40 if quick else 200)


# =============================================================================
# Small helpers
# =============================================================================
def _wait_for(pred: Callable[[], Any], timeout: float, what: str, interval: float = 0.1,
              check: Callable[[], None] | None = None) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if check is not None:
            check()
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def _cpu_s(pid: int) -> float:
    """utime + stime of ``pid`` (and its waited-for children) in seconds, from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def _machine_busy() -> tuple[float, float]:
    vals = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = vals[3] + vals[4]
    return sum(vals) - idle, sum(vals)


class Timer:
    def __init__(self) -> None:
        self.t0 = time.perf_counter()

    @property
    def s(self) -> float:
        return time.perf_counter() - self.t0


def _log(msg: str) -> None:
    print(f"  [load] {msg}", file=sys.stderr, flush=True)


# =============================================================================
# Database, population
# =============================================================================
def _admin_dsn(pg_url: str) -> str:
    """The server of ``pg_url``, database ``postgres`` (where databases are dropped and created)."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(pg_url)
    return urlunsplit((parts.scheme, parts.netloc, "/postgres", parts.query, ""))


def _reset_database(pg_url: str, name: str) -> None:
    import psycopg

    with psycopg.connect(_admin_dsn(pg_url), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')


def _drop_database(pg_url: str, name: str) -> None:
    import psycopg

    with psycopg.connect(_admin_dsn(pg_url), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _setup_django(env: dict[str, str]) -> None:
    os.environ.update(env)
    import django

    django.setup()
    import bench.django_celery  # noqa: F401  (the Celery app the wake-ups are sent with)


@dataclass
class Roles:
    """Which instance ids play which part (fixed by the seed)."""

    targets: list[str]
    due_timers: list[str]
    expired_leases: list[str]
    lost_wakeups: list[str]
    future_timers: list[str]
    waiting: list[str]   # plain event waiters nobody touches

    @property
    def due(self) -> set[str]:
        return {*self.due_timers, *self.expired_leases, *self.lost_wakeups}


def _roles(cfg: Config, seed: int = 5) -> Roles:
    width = max(6, len(str(cfg.instances - 1)))
    ids = [f"load-{i:0{width}d}" for i in range(cfg.instances)]
    order = ids[:]
    random.Random(seed).shuffle(order)
    cut = [cfg.targets, cfg.due_each, cfg.due_each, cfg.due_each, cfg.future_timers]
    parts, at = [], 0
    for n in cut:
        parts.append(order[at:at + n])
        at += n
    rest = set(order[at:])
    return Roles(*parts, waiting=[i for i in ids if i in rest])


def _templates() -> dict[str, dict[str, Any]]:
    """Run one instance of each kind through the app until it waits; return their rows and decoded states.

    * ``event``: ``wait_then_record`` paused on ``"go"`` (started with ``start()``, run inline);
    * ``timer``: ``sleep_then_record`` paused on its timer;
    * ``running``: ``prepare_then_record`` stopped right after the checkpoint of its first step (its
      worker "died" between the two steps): status ``running``.
    """
    from django.db import connection
    from django.test import override_settings

    import durable_django as dd
    from durable_django.backend import STATE, blob_context, unsign
    from durable_django.conf import durable_settings
    from durable_django.models import DurableHistory, DurableInstance

    base = durable_settings.user_settings()
    with override_settings(DURABLE={**base, "RUN_INLINE": True}):
        dd.start(wait_then_record, "load-template-event", instance_id="load-template-event")
        dd.start(sleep_then_record, "load-template-timer", instance_id="load-template-timer")
    with override_settings(DURABLE={**base, "RUN_INLINE": True, "ON_CHECKPOINT": "bench.load.stop_after_first_step"}):
        try:
            dd.start(prepare_then_record, "load-template-running", instance_id="load-template-running")
        except _StopHere:
            pass
    out = {}
    for kind in ("event", "timer", "running"):
        iid = f"load-template-{kind}"
        row = DurableInstance.objects.filter(pk=iid).values().get()
        expected = {"event": "paused", "timer": "paused", "running": "running"}[kind]
        if row["status"] != expected:
            raise RuntimeError(f"template {iid} is {row['status']}, expected {expected}")
        history = list(DurableHistory.objects.filter(instance_id=iid).order_by("id").values("kind", "status",
                                                                                            "detail"))
        state = unsign(row["state"], blob_context(iid, row["program"], STATE))
        out[kind] = {"row": row, "state": state, "history": history}
    # The templates leave no rows behind: the database holds exactly the clones.
    DurableInstance.objects.filter(pk__startswith="load-template-").delete()
    with connection.cursor() as cur:
        cur.execute(f"TRUNCATE {EFFECT_TABLE}")
    return out


def _create_effect_table() -> None:
    from django.db import connection

    with connection.cursor() as cur:
        cur.execute(f"CREATE TABLE IF NOT EXISTS {EFFECT_TABLE} (id bigserial PRIMARY KEY, instance_key text NOT NULL, "
                    "target text, at timestamptz NOT NULL)")


def populate(cfg: Config, roles: Roles) -> dict[str, Any]:
    """Create ``cfg.instances`` waiting instances by cloning the template rows with ``COPY``; timed."""
    from django.db import connection, transaction
    from django.utils import timezone

    from durable_django.backend import ARGUMENTS, STATE, blob_context, sign
    from durable_django.models import DurableHistory, DurableInstance

    t_all = Timer()
    _create_effect_table()
    t = Timer()
    tpl = _templates()
    template_s = t.s

    kind_of: dict[str, str] = {}
    for iid in roles.due_timers + roles.future_timers:
        kind_of[iid] = "timer"
    for iid in roles.expired_leases:
        kind_of[iid] = "running"
    now = timezone.now()
    fields = [f for f in DurableInstance._meta.concrete_fields]
    columns = [f.column for f in fields]
    attnames = [f.attname for f in fields]
    due_timers = set(roles.due_timers)
    expired = set(roles.expired_leases)
    all_ids = sorted([*roles.targets, *roles.due_timers, *roles.expired_leases, *roles.lost_wakeups,
                      *roles.future_timers, *roles.waiting])
    assert len(all_ids) == cfg.instances and len(set(all_ids)) == cfg.instances, "roles overlap"

    sign_s = 0.0
    copy_t = Timer()
    raw_rows = 0
    with transaction.atomic():
        connection.ensure_connection()
        raw = connection.connection
        with raw.cursor() as cur:
            with cur.copy(f"COPY {DurableInstance._meta.db_table} ({', '.join(columns)}) FROM STDIN") as cp:
                for n, iid in enumerate(all_ids):
                    kind = kind_of.get(iid, "event")
                    t_sign = time.perf_counter()
                    state = tpl[kind]["state"]
                    for frame in state["stack"]:  # the key, and a payload computed from it (also in a temporary)
                        for name, value in list(frame.locals.items()):
                            if name == "key":
                                frame.locals[name] = iid
                            elif isinstance(value, dict) and "target" in value:
                                frame.locals[name] = {**value, "target": iid}
                    row = dict(tpl[kind]["row"])
                    if kind == "timer":
                        due = (now - datetime.timedelta(minutes=5) if iid in due_timers
                               else now + datetime.timedelta(hours=1, seconds=n % 3600))
                        state["wait"] = {**state["wait"], "due": due.timestamp()}
                        row["wake_at"] = due
                    row["state"] = sign(state, blob_context(iid, row["program"], STATE))
                    row["arguments"] = sign(((iid,), {}), blob_context(iid, row["program"], ARGUMENTS))
                    sign_s += time.perf_counter() - t_sign
                    created = now - datetime.timedelta(seconds=(cfg.instances - n) * 0.5)
                    row.update(instance_id=iid, created_at=created, updated_at=created, version=0)
                    if iid in expired:
                        row.update(lease_owner="load-dead-worker:1", lease_expires_at=now - datetime.timedelta(
                            minutes=10), attempts=1)
                    cp.write_row([row[a] for a in attnames])
                    raw_rows += 1
        hist_cols = ["instance_id", "kind", "status", "detail", "actor", "at"]
        with raw.cursor() as cur:
            with cur.copy(f"COPY {DurableHistory._meta.db_table} ({', '.join(hist_cols)}) FROM STDIN") as cp:
                for n, iid in enumerate(all_ids):
                    created = now - datetime.timedelta(seconds=(cfg.instances - n) * 0.5)
                    for h in tpl[kind_of.get(iid, "event")]["history"]:
                        cp.write_row([iid, h["kind"], h["status"], h["detail"], "load-clone", created])
    copy_s = copy_t.s - sign_s
    # Events whose wake-up was lost (the sweep must find them): rows only, no Celery message.
    from durable_django.models import DurableEvent

    DurableEvent.objects.bulk_create([DurableEvent(instance_id=iid, name=EVENT, payload={"target": iid},
                                                   idempotency_key=f"{EVENT}-{iid}") for iid in roles.lost_wakeups])
    t = Timer()
    with connection.cursor() as cur:
        cur.execute("VACUUM ANALYZE")  # what autovacuum does after a bulk load, now rather than at a random moment
    analyze_s = t.s
    counts = dict(Counter(DurableInstance.objects.values_list("status", flat=True).order_by()))
    return {"seconds": t_all.s, "template_runs_s": template_s, "sign_s": sign_s, "copy_s": copy_s,
            "analyze_s": analyze_s, "rows": raw_rows, "rows_per_s": raw_rows / t_all.s, "status_counts": counts,
            "history_rows": DurableHistory.objects.count(),
            "state_bytes": {k: len(v["row"]["state"]) for k, v in tpl.items()},
            "method": "one instance of each kind run through start()/the executor until it waits; its row and "
                      "history cloned with COPY, locals and arguments re-signed per clone (sign())"}


# =============================================================================
# Celery workers
# =============================================================================
class Workers:
    """``celery worker --pool=solo`` subprocesses of ``bench.django_celery`` on the load suite's settings."""

    def __init__(self, env: dict[str, str], logdir: Path) -> None:
        self.env, self.logdir = env, logdir
        self.procs: list[tuple[str, subprocess.Popen]] = []

    def start(self, count: int) -> None:
        from bench.django_programs import note_key, redis_client

        names = []
        for _ in range(count):
            name = f"load-{uuid.uuid4().hex[:8]}"
            env = {**os.environ, **self.env, "DURABLE_BENCH_WORKER": name}
            cmd = [sys.executable, "-m", "celery", "-A", "bench.django_celery", "worker", "--pool=solo",
                   "--without-gossip", "--without-mingle", "--without-heartbeat", "--loglevel=WARNING",
                   "-Q", self.env["DURABLE_BENCH_QUEUE"], "-n", f"{name}@%h"]
            with open(self.logdir / f"{name}.log", "wb") as log:
                proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
            self.procs.append((name, proc))
            names.append(name)
        r = redis_client()
        _wait_for(lambda: all(r.exists(note_key("ready", n)) for n in names), 90, "workers to be ready",
                  interval=0.05, check=self.check)

    def check(self) -> None:
        for name, p in self.procs:
            if p.poll() is not None:
                raise RuntimeError(f"worker {name} exited:\n{self.log(name)[-3000:]}")

    def log(self, name: str) -> str:
        path = self.logdir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def pids(self) -> list[int]:
        return [p.pid for _, p in self.procs if p.poll() is None]

    def stop(self) -> None:
        from bench.django_programs import note_key, redis_client

        for _, p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for name, p in self.procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=10)
            redis_client().delete(note_key("ready", name))
        self.procs = []


# =============================================================================
# Publishers
# =============================================================================
def publish_plan(cfg: Config, targets: list[str], seed: int = 7) -> list[list[tuple[str, str, bool, float]]]:
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


def run_publishers(cfg: Config, roles: Roles, env: dict[str, str], tmp: Path, workers: Workers) -> dict[str, Any]:
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


def _drive_publishers(cfg: Config, roles: Roles, procs: list[tuple[subprocess.Popen, Path]],
                      workers: Workers) -> dict[str, Any]:
    from django.db import connection

    from durable_django.models import DurableInstance, Status

    for p, _ in procs:
        line = p.stdout.readline().strip()
        if line != "ready":
            raise RuntimeError(f"publisher did not start (said {line!r}, exit {p.poll()})")
    targets = roles.targets
    wpids = workers.pids()
    cpu_w0 = sum(map(_cpu_s, wpids))
    busy0 = _machine_busy()
    t_go = time.time()
    for p, _ in procs:
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
    _wait_for(done, cfg.timeout_s, f"the {len(targets)} targets to complete", interval=0.1, check=failed_check)
    t_done = time.time()
    cpu_w1 = sum(map(_cpu_s, wpids))
    busy1 = _machine_busy()
    records, pub_cpu, waited = [], 0.0, 0.0
    for p, out_path in procs:
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
        "publish_call_ms": _summary_ms([r[3] - r[2] for r in records]),
        "end_to_end_s": max(finished) - min(created),
        "completed_per_s": total_events / (max(finished) - min(created)),
        "drain_per_s": (total_events - 1) / (max(finished) - min(finished)) if total_events > 1 else float("nan"),
        "latency_event_to_completed": _summary_ms(lat),
        "latency_event_to_resumed": _summary_ms(to_resume),
        "latency_resumed_to_completed": _summary_ms(resume_to_done),
        "latency_publish_call_to_completed": _summary_ms(call_lat),
        "cpu_ms_per_target": {"workers": (cpu_w1 - cpu_w0) * 1e3 / len(targets),
                              "publishers": pub_cpu * 1e3 / len(targets)},
        "machine_busy": (busy1[0] - busy0[0]) / max(1, busy1[1] - busy0[1]),
        "wall_s": t_done - t_go, "problems": problems,
    }
    return res


# =============================================================================
# Invariants over the whole table
# =============================================================================
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


# =============================================================================
# EXPLAIN
# =============================================================================
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


# =============================================================================
# Admin
# =============================================================================
def measure_admin(cfg: Config, roles: Roles) -> dict[str, Any]:
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


# =============================================================================
# Sweep
# =============================================================================
def measure_sweep(cfg: Config, roles: Roles, env: dict[str, str], workers: Workers) -> dict[str, Any]:
    """``durable_resume`` over the whole table: dry runs timed, EXPLAIN of its queries, then real sweeps.

    The real sweep is split with timestamps: the due queries and the wake-ups
    sent (Celery's ``after_task_publish`` in this process), then the
    ``sweep_finished`` receivers (the human-task app's repair), up to a
    receiver of ours connected after theirs.
    """
    from celery.signals import after_task_publish
    from django.core.management import call_command

    from durable_django import executor
    from durable_django.models import DurableInstance, Status
    from durable_django.signals import sweep_finished

    expected = roles.due
    res: dict[str, Any] = {"due_planted": {"due timers": len(roles.due_timers),
                                           "expired leases": len(roles.expired_leases),
                                           "events without wake-up": len(roles.lost_wakeups)}}
    ids, queries = _capture(executor.due_instances)
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
        executor.sweep(dry_run=True)
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
        _wait_for(lambda: swept.filter(status=Status.COMPLETED).count() == len(due_ids), cfg.timeout_s,
                  f"the {len(due_ids)} swept instances to complete", check=workers.check)
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
    res["after_sweep_due"] = len(executor.due_instances())
    return res


def measure_wakeup(cfg: Config, ids: list[str]) -> dict[str, Any]:
    """One wake-up run in this process (``executor.run_instance``) with and without the human-task receivers.

    Interleaved: the instances alternate between the two variants. Their
    events are rows inserted beforehand (no Celery). CPU is this process's
    (the ORM, durable, signals); the database's is not in it.
    """
    from durable_django import executor
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
            outcome = executor.run_instance(iid)
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


# =============================================================================
# Run
# =============================================================================
def _versions(pg_url: str, broker: str) -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("django", "celery", "kombu", "redis", "psycopg", "asgiref"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "-"
    try:
        import psycopg
        import redis

        with psycopg.connect(_admin_dsn(pg_url)) as conn:
            out["postgresql"] = conn.execute("SHOW server_version").fetchone()[0]
        out["redis-server"] = redis.Redis.from_url(broker).info("server")["redis_version"]
    except Exception as exc:  # the figures still say what they can
        out["services"] = f"unknown: {exc}"
    return out


def _app_changed() -> list[str] | None:
    """Files of durable_django (and durable) changed since the commit (``git status``), None without git."""
    try:
        out = subprocess.run(["git", "status", "--porcelain", "--", "durable_django", "durable"], cwd=ROOT,
                             capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return [line[3:] for line in out.splitlines()]


def _cleanup_redis(broker: str, queue: str) -> None:
    from .redis_keys import purge_queue

    purge_queue(broker, queue)


def run(cfg: Config, db: str, broker: str, keep: bool, pg_url: str = DEFAULT_PG_URL) -> dict[str, Any]:
    from .core import _git_revision

    t_run = Timer()

    def interrupted(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")  # so the finally blocks stop the workers and drop the database

    signal.signal(signal.SIGTERM, interrupted)
    queue = f"durable-load-{uuid.uuid4().hex[:8]}"
    env = {"DJANGO_SETTINGS_MODULE": "bench.load_settings", "DURABLE_BENCH_PG_NAME": db,
           "DURABLE_BENCH_BROKER": broker, "CELERY_BROKER_URL": broker, "DURABLE_BENCH_QUEUE": queue,
           "DURABLE_BENCH_RUN": queue,
           "DURABLE_BENCH_DB_REUSE_MAX": "1000", "DURABLE_BENCH_DB": "pg", "DURABLE_LOAD_PG_URL": pg_url,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    meta = {"date_utc": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "python": sys.version.split()[0], "platform": platform.platform(), "nproc": os.cpu_count(),
            "git": _git_revision(), "durable_django_changed": _app_changed(), "config": asdict(cfg),
            "database": db, "broker": broker,
            "versions": _versions(pg_url, broker), "loadavg_start": os.getloadavg()}
    res: dict[str, Any] = {"meta": meta}
    _log(f"database {db}: drop and create, migrate")
    _reset_database(pg_url, db)
    _setup_django(env)
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    roles = _roles(cfg)
    workers = None
    with tempfile.TemporaryDirectory(prefix="durable-load-") as tmpdir:
        tmp = Path(tmpdir)
        try:
            _log(f"creating {cfg.instances:,} waiting instances")
            res["populate"] = populate(cfg, roles)
            _log(f"  {res['populate']['seconds']:.1f} s; starting {cfg.workers} worker(s)")
            res["check_initial"] = check_state(roles, set(), "after creation")
            workers = Workers(env, tmp)
            workers.start(cfg.workers)
            _log(f"{cfg.publishers} publishers -> {cfg.targets:,} targets")
            res["publish"] = run_publishers(cfg, roles, env, tmp, workers)
            res["check_after_publish"] = check_state(roles, set(roles.targets), "after the publishers")
            _log("admin pages")
            res["admin"] = measure_admin(cfg, roles)
            _log("durable_resume sweep")
            res["sweep"] = measure_sweep(cfg, roles, env, workers)
            woken = roles.waiting[-cfg.wakeup_samples:]
            _log("wake-ups in process, with and without the human-task receivers")
            res["wakeup_in_process"] = measure_wakeup(cfg, woken)
            res["check_after_sweep"] = check_state(roles, set(roles.targets) | roles.due | set(woken),
                                                   "at the end")
        except BaseException:
            if workers is not None:
                for name, _ in workers.procs:
                    print(f"--- worker {name}\n{workers.log(name)[-3000:]}", file=sys.stderr)
            raise
        finally:
            if workers is not None:
                workers.stop()
            _cleanup_redis(broker, queue)
            from django.db import connections

            connections.close_all()
            if not keep:
                _drop_database(pg_url, db)
    meta["loadavg_end"] = os.getloadavg()
    meta["elapsed_s"] = t_run.s
    problems = [*res["publish"]["problems"], *res["check_initial"]["problems"],
                *res["check_after_publish"]["problems"], *res["check_after_sweep"]["problems"]]
    if not res["sweep"]["dry_run_exact"]:
        problems.append(f"the sweep's dry run found {res['sweep']['dry_run_found']} instances, "
                        f"{len(roles.due)} were due")
    if res["sweep"]["after_sweep_due"]:
        problems.append(f"{res['sweep']['after_sweep_due']} instance(s) still due after the sweep")
    res["problems"] = problems
    res["ok"] = not problems
    findings = []
    for name, d in res["admin"]["pages"].items():
        findings += [{"where": f"admin: {name}", **x} for x in d["scans"] if x["big"]]
    findings += [{"where": "sweep: due query", **x} for x in res["sweep"]["scans"] if x["big"]]
    findings += [{"where": "sweep: next sweep", **x} for x in res["sweep"]["next_sweep"]["scans"] if x["big"]]
    res["scan_findings"] = findings
    return res


# =============================================================================
# Table
# =============================================================================
def format_table(res: dict[str, Any]) -> str:
    m, cfg = res["meta"], res["meta"]["config"]
    v = m["versions"]
    lines = [f"durable_django load suite {'(quick)' if cfg['quick'] else '(full)'}  {m['date_utc']}  "
             f"Python {m['python']}  nproc={m['nproc']}  git {m['git']}"
             + (f" + {len(m['durable_django_changed'])} changed files" if m.get("durable_django_changed") else "")
             + f"  {m['elapsed_s']:.0f} s",
             f"  PostgreSQL {v.get('postgresql')}  Redis {v.get('redis-server')}  Django {v.get('django')}  "
             f"Celery {v.get('celery')}  psycopg {v.get('psycopg')}  load avg {m['loadavg_start'][0]:.2f} -> "
             f"{m['loadavg_end'][0]:.2f}"]
    rows: list[tuple[str, str]] = []

    def section(title: str) -> None:
        rows.append((title, ""))

    def lat(d: dict[str, float]) -> str:
        return (f"p50 {d['p50_ms']:8.1f}  p90 {d['p90_ms']:8.1f}  p99 {d['p99_ms']:8.1f}  "
                f"max {d['max_ms']:8.1f} ms")

    p = res["populate"]
    section(f"creating {cfg['instances']:,} waiting instances (clone of real paused rows, COPY)")
    rows += [("total", f"{p['seconds']:.1f} s  ({p['rows_per_s']:,.0f} rows/s; {p['history_rows']:,} history rows)"),
             ("  of which signing / COPY / VACUUM ANALYZE",
              f"{p['sign_s']:.1f} / {p['copy_s']:.1f} / {p['analyze_s']:.1f} s"),
             ("state blob bytes", ", ".join(f"{k} {b}" for k, b in p["state_bytes"].items()))]
    pb = res["publish"]
    section(f"{cfg['publishers']} publishers -> {cfg['targets']:,} of them, {cfg['workers']} solo workers"
            + (f", {cfg['rate']:g} events/s" if cfg["rate"] else ", as fast as they can"))
    rows += [
        ("publish calls", f"{pb['publish_calls']:,} ({', '.join(f'{k} {n}' for k, n in pb['calls_by_kind'].items())})"),
        ("events stored", f"{pb['events_stored']:,}"),
        ("duplicates rejected", f"{pb['duplicates_rejected']:,} (returned the stored event: "
                                f"{pb['duplicates_returned_existing']}, refused as finished: "
                                f"{pb['duplicates_refused_finished']}; concurrent pairs overlapping in time: "
                                f"{pb['concurrent_pairs_overlapping']}/{pb['concurrent_pairs']})"),
        ("publish throughput", f"{pb['publish_calls_per_s']:,.0f} calls/s, {pb['events_accepted_per_s']:,.0f} "
                               f"events accepted/s (window {pb['publish_window_s']:.2f} s)"),
        ("publish_event() call", lat(pb["publish_call_ms"])),
        ("end-to-end throughput", f"{pb['completed_per_s']:,.0f} completed/s (first event -> last completion "
                                  f"{pb['end_to_end_s']:.2f} s; drain {pb['drain_per_s']:,.0f}/s)"),
        ("event created -> completed", lat(pb["latency_event_to_completed"])),
        ("  event created -> resumed", lat(pb["latency_event_to_resumed"])),
        ("  resumed -> completed", lat(pb["latency_resumed_to_completed"])),
        ("CPU ms per target", f"workers {pb['cpu_ms_per_target']['workers']:.2f}, publishers "
                              f"{pb['cpu_ms_per_target']['publishers']:.2f}; machine busy "
                              f"{pb['machine_busy'] * 100:.0f}%"),
    ]
    for key in ("check_after_publish",):
        c = res[key]
        rows.append((f"invariants {c['phase']}",
                     f"{'OK' if c['ok'] else 'FAILED'}: {c['completed_checked']:,} completed once with one side "
                     f"effect, {c['untouched_checked']:,} untouched" + ("" if c["ok"] else f"; {c['problems'][:3]}")))
    a = res["admin"]
    section(f"admin with {a['rows']:,} instances (test client, median of {cfg['admin_repeats']})")
    for name, d in a["pages"].items():
        big = [x for x in d["scans"] if x["big"]]
        seq = ("  scans of " + ", ".join(f"{x['rows_read']:,}" for x in big) + " rows") if big else ""
        slow = d["slowest"]
        slow_txt = f", slowest SQL {slow['ms']:5.1f} ms" if slow and slow["ms"] is not None else ""
        rows.append((name, f"{d['median_ms']:8.1f} ms  {d['queries']:2d} queries, SQL {d['sql_ms']:5.1f} ms"
                           f"{slow_txt}{seq}"))
    s = res["sweep"]
    section(f"durable_resume over {a['rows']:,} rows, {sum(s['due_planted'].values())} due "
            f"({', '.join(f'{k} {n}' for k, n in s['due_planted'].items())})")
    fs, ns = s["first_sweep"], s["next_sweep"]
    rows += [
        ("dry run finds exactly the due rows", f"{'yes' if s['dry_run_exact'] else 'NO'} ({s['dry_run_found']})"),
        ("executor.sweep(dry_run=True)", f"{s['executor_sweep_dry_run_ms']['median']:.1f} ms "
                                          f"({s['queries']} queries)"),
        ("call_command durable_resume --dry-run", f"{s['command_dry_run_ms']['median']:.1f} ms"),
        ("manage.py durable_resume --dry-run", f"{s['command_process_dry_run_s']:.2f} s (new process)"),
        ("durable_resume, first in a process", f"{fs['total_ms']:,.1f} ms: queries + {sum(s['due_planted'].values())} "
                                               f"wake-ups sent {fs['query_and_send_ms']:,.1f} ms, sweep_finished "
                                               f"receivers {fs['sweep_finished_receivers_ms']:,.1f} ms"),
        ("  swept instances all completed after", f"{s['swept_completed_s']:.2f} s"),
        ("durable_resume, next in the process", f"{ns['total_ms']:,.1f} ms ({ns['queries']} queries, nothing due)"),
    ]
    for e in s["explains"]:
        rows.append((f"  due query {e['ms']:.2f} ms", "; ".join(e["nodes"][:4])))
    for e in ns["explains"]:
        if any(x["big"] for x in e["scans"]) or (e["ms"] or 0) > 1:
            rows.append((f"  next-sweep query {e['ms']:.2f} ms", "; ".join(e["nodes"][:5])))
    findings = res.get("scan_findings", [])
    section(f"scans reading >= {BIG_SCAN:,} rows: {len(findings)}")
    for f in findings:
        how = f["node"] + (f" ({f['index']})" if f["index"] else "")
        rows.append((f"  {f['where']}", f"{how}, {f['rows_read']:,} rows, {f['ms']:.1f} ms: {f['sql'][:110]}"))
    w = res["wakeup_in_process"]
    section("one wake-up run in process (executor.run_instance, median)")
    rows += [("with the human-task receivers", f"{w['with']['wall_ms']:.2f} ms wall, {w['with']['cpu_ms']:.2f} ms CPU"),
             ("without them", f"{w['without']['wall_ms']:.2f} ms wall, {w['without']['cpu_ms']:.2f} ms CPU")]
    c = res["check_after_sweep"]
    rows.append((f"invariants {c['phase']}",
                 f"{'OK' if c['ok'] else 'FAILED'}: {c['completed_checked']:,} completed once with one side "
                 f"effect, {c['untouched_checked']:,} untouched" + ("" if c["ok"] else f"; {c['problems'][:3]}")))
    rows.append(("RESULT", "OK" if res["ok"] else f"FAILED: {res['problems'][:5]}"))
    width = max(len(k) for k, val in rows if val) + 2
    for k, val in rows:
        lines.append(k if not val else f"  {k.ljust(width)}{val}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the load suite, print the table, write the JSON; exit 1 when an invariant broke."""
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(prog="python -m bench load", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="5,000 instances, 200 targets (< 60 s)")
    ap.add_argument("--instances", type=int, default=None, help="waiting instances (default 100,000)")
    ap.add_argument("--targets", type=int, default=None, help="instances the publishers wake (default 1,000)")
    ap.add_argument("--publishers", type=int, default=4)
    ap.add_argument("--workers", type=int, default=2, help="Celery worker processes (pool=solo)")
    ap.add_argument("--due", type=int, default=None, help="due rows of each kind for the sweep (default 100)")
    ap.add_argument("--rate", type=float, default=0.0, help="events/s over all publishers (default: unlimited)")
    ap.add_argument("--timeout", type=float, default=None, help="seconds the workers get to finish")
    ap.add_argument("--db", default=DEFAULT_DB, help=f"PostgreSQL database, dropped and created (default {DEFAULT_DB})")
    ap.add_argument("--broker", default=os.environ.get("DURABLE_LOAD_BROKER", DEFAULT_BROKER),
                    help=f"Redis URL of the Celery broker (default {DEFAULT_BROKER})")
    ap.add_argument("--pg-url", default=DEFAULT_PG_URL, help="PostgreSQL server, as a URL (the database name in it "
                                                             "is ignored; --db names it)")
    ap.add_argument("--keep", action="store_true", help="keep the database after the run (to inspect it)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args(argv)
    cfg = make_config(args)
    res = run(cfg, args.db, args.broker, args.keep, args.pg_url)
    print(format_table(res))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2, default=str) + "\n")
    print(f"\nwrote {args.out}")
    if not res["ok"]:
        raise SystemExit(1)
    return res


def _child(argv: list[str]) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--publisher", type=Path, required=True)
    ap.add_argument("--publisher-out", type=Path, required=True)
    ap.add_argument("--paced", action="store_true")
    a = ap.parse_args(argv)
    publisher_main(a.publisher, a.publisher_out, a.paced)


if __name__ == "__main__":
    _child(sys.argv[1:])
