"""Child of the peer benchmark: this project, the core (memory, disk) or durable_django (SQLite, PostgreSQL).

``python bench/peer_ours.py --db memory|disk|sqlite|pg --workdir DIR --out FILE [--quick]``
(started by :mod:`bench.peers`). ``memory`` and ``disk`` run the core with
``InMemoryStateStore`` / ``DiskStateStore``; ``sqlite`` and ``pg`` run
durable_django in this process (``DURABLE["RUN_INLINE"]``: ``start()`` and
``publish_event()`` run the instance through ``worker.run_instance``, the
code a Celery worker's task runs, without Celery).

Resume after K steps: the instance has done K steps and is paused on
``wait_for_event("go")``, its checkpoint in the store; resume = publishing
the event and running it to completion (load the checkpoint, one more step).
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import peer_common as pc  # noqa: E402


def expected_wait(k: int, extra: int) -> int:
    """What ``workloads.steps_then_wait(k)`` returns when the event carries ``extra``."""
    return sum(range(k)) + extra + sum(range(10)) + len("alpha" + "beta" + "gamma" + "delta" + "eps")


_EXPECTED: dict[int, int] = {}


def expected_steps(n: int) -> int:
    """What ``workloads.many_steps(n)`` returns, run natively."""
    from bench import workloads

    if n not in _EXPECTED:
        _EXPECTED[n] = asyncio.run(workloads.many_steps(n))
    return _EXPECTED[n]


def plain_s_per_step(loop: asyncio.AbstractEventLoop, n: int) -> float:
    """The floor of a step in Python: ``many_steps(n)`` awaited natively, seconds per step."""
    from bench import workloads

    t0 = pc.now()
    loop.run_until_complete(workloads.many_steps(n))
    return (pc.now() - t0) / n


class FileFloor:
    """The floor of a checkpoint on disk: 2 KB to a temporary file, fsync, rename, directory fsync."""

    settings = "write 2 KB to a temp file, fsync, rename, fsync the directory"

    def __init__(self, path: str) -> None:
        self.path, self.blobs, self.i = path, pc.blobs(), 0
        os.makedirs(path, exist_ok=True)

    def op(self) -> None:
        self.i += 1
        tmp = os.path.join(self.path, ".floor.tmp")
        with open(tmp, "wb") as fh:
            fh.write(self.blobs[self.i & 15])
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, os.path.join(self.path, "floor.state"))
        fd = os.open(self.path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def batch_s(self, n: int) -> float:
        t0 = pc.now()
        for _ in range(n):
            self.op()
        return (pc.now() - t0) / n

    def close(self) -> None:
        pass


# -- the core -----------------------------------------------------------------
def run_core(db: str, sz: pc.Sizes, workdir: str) -> dict[str, Any]:
    from bench import peer_programs, workloads
    from durable import DiskStateStore, DurableBackend, InMemoryStateStore, PauseForEventException, make_durable

    loop = asyncio.new_event_loop()
    run = loop.run_until_complete
    store_dir = os.path.join(workdir, "ours-disk")

    def backend() -> DurableBackend:
        return DurableBackend(DiskStateStore(store_dir) if db == "disk" else InMemoryStateStore())

    steps, wait, events = (make_durable(workloads.many_steps), make_durable(workloads.steps_then_wait),
                           make_durable(peer_programs.event_loop))
    n = sz.steps_db if db == "disk" else sz.steps_mem
    floor = FileFloor(os.path.join(workdir, "ours-disk-floor")) if db == "disk" else None
    be = backend()

    def timed_steps(m: int) -> float:
        iid = uuid.uuid4().hex
        t0 = pc.now()
        got = run(steps(m, orchestration_backend=be, instance_id=iid))
        dt = pc.now() - t0
        pc.check(got, expected_steps(m), f"many_steps({m})")
        return dt

    variants = {"plain": lambda: plain_s_per_step(loop, n), "long": lambda: timed_steps(n),
                "short": lambda: timed_steps(1)}
    if floor is not None:
        variants["floor"] = lambda: floor.batch_s(sz.floor_batch)
    s = pc.rounds(variants, sz.step_rounds, sz.warmup)
    per = pc.slope_us(s["long"], s["short"], n)
    plain_us = pc.median(s["plain"]) * 1e6
    res: dict[str, Any] = {"per_step": {
        "n": n, "us": pc.median(per), "plain_us": plain_us,
        "floor_us": pc.median(s["floor"]) * 1e6 if floor is not None else plain_us,
        "floor_kind": FileFloor.settings if floor is not None else "plain await of the same step",
        "run1_ms": pc.median(s["short"]) * 1e3, "samples_us": per}}

    def start_batch() -> float:
        t0 = pc.now()
        for _ in range(sz.start_batch):
            pc.check(run(steps(1, orchestration_backend=be, instance_id=uuid.uuid4().hex)), expected_steps(1),
                     "many_steps(1)")
        return sz.start_batch / (pc.now() - t0)

    st = pc.rounds({"batch": start_batch}, sz.start_rounds, 1)
    res["start"] = {"per_s": pc.median(st["batch"]), "samples": st["batch"],
                    "method": "one-step instances (many_steps(1)) run one after the other"}

    # resume after K steps: R instances per K, each built by running it until it pauses
    ids = {k: [f"r{k}-{r}-{uuid.uuid4().hex[:6]}" for r in range(sz.resume_repeats)] for k in sz.k_values}
    build_s, state_b = {}, {}
    for k in sz.k_values:
        t0 = pc.now()
        for iid in ids[k]:
            try:
                run(wait(k, orchestration_backend=be, instance_id=iid))
                raise AssertionError("steps_then_wait completed instead of pausing")
            except PauseForEventException:
                pass
        build_s[k] = (pc.now() - t0) / len(ids[k])
        state_b[k] = len(be.store.load_blob(f"state:{ids[k][0]}"))
    samples: dict[int, list[float]] = {k: [] for k in sz.k_values}
    for r in range(sz.resume_repeats):
        for name in pc.rotate([str(k) for k in sz.k_values], r):
            k = int(name)
            iid = ids[k][r]
            t0 = pc.now()
            be.publish_event(iid, "go", 7)
            got = run(wait(k, orchestration_backend=be, instance_id=iid))
            samples[k].append(pc.now() - t0)
            pc.check(got, expected_wait(k, 7), f"resumed steps_then_wait({k})")
    res["resume"] = {"points": [{"k": k, "ms": pc.median(samples[k]) * 1e3, "state_bytes": state_b[k],
                                 "build_s": build_s[k], "samples_ms": [x * 1e3 for x in samples[k]]}
                                for k in sz.k_values],
                     "method": "publish_event + the program called again: loads the checkpoint, one step, completes"}

    lat: list[float] = []
    v = 0
    while len(lat) < sz.latency_samples:
        iid, per_i, expected = uuid.uuid4().hex, sz.latency_per_instance, 0
        try:
            run(events(per_i, orchestration_backend=be, instance_id=iid))
        except PauseForEventException:
            pass
        for i in range(per_i):
            v += 1
            expected += v
            t0 = pc.now()
            be.publish_event(iid, "go", v)
            try:
                got = run(events(per_i, orchestration_backend=be, instance_id=iid))
                pc.check(got, expected, "event_loop")
            except PauseForEventException:
                pass
            if i >= 1:
                lat.append(peer_programs.MARKS[v] - t0)
    lat = lat[: sz.latency_samples]
    res["latency"] = {"p50_ms": pc.median(lat) * 1e3, "p90_ms": pc.pct(lat, 90) * 1e3, "samples": len(lat),
                      "method": "publish_event, then the paused program called again -> the step after the wait runs"}
    res["settings"] = {"floor": res["per_step"]["floor_kind"], "store": "DiskStateStore (fsync per checkpoint)"
                       if db == "disk" else "InMemoryStateStore"}
    loop.close()
    return res


# -- durable_django -----------------------------------------------------------
def _django(db: str, workdir: str) -> None:
    os.environ["DJANGO_SETTINGS_MODULE"] = "bench.peer_ours_settings"
    os.environ["DURABLE_BENCH_DB"] = db
    os.environ["DURABLE_BENCH_PG_NAME"] = pc.PG_DATABASES["ours"]
    os.environ["DURABLE_BENCH_SQLITE"] = os.path.join(workdir, "ours.sqlite3")
    if db == "pg":
        pc.recreate_pg_database(pc.PG_DATABASES["ours"])
    else:
        for suffix in ("", "-wal", "-shm"):
            p = os.environ["DURABLE_BENCH_SQLITE"] + suffix
            if os.path.exists(p):
                os.remove(p)
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0)


def _instance_bytes(iid: str) -> int:
    from durable_django.models import DurableEvent, DurableHistory, DurableInstance

    rows: list[tuple[Any, ...]] = []
    for model, field in ((DurableInstance, "pk"), (DurableEvent, "instance_id"), (DurableHistory, "instance_id")):
        names = [f.attname for f in model._meta.concrete_fields]
        rows += list(model.objects.filter(**{field: iid}).values_list(*names))
    return pc.payload_bytes(rows)


def run_django(db: str, sz: pc.Sizes, workdir: str) -> dict[str, Any]:
    _django(db, workdir)
    import durable_django as dd
    from bench import peer_programs, workloads
    from durable_django.models import DurableInstance, Status

    floor = (pc.Floor("pg", pg_name=pc.PG_DATABASES["ours"]) if db == "pg"
             else pc.Floor("sqlite", sqlite_path=os.path.join(workdir, "floor.sqlite3")))
    loop = asyncio.new_event_loop()
    n = sz.steps_db

    def status_of(iid: str) -> str:
        return DurableInstance.objects.filter(pk=iid).values_list("status", flat=True).first()

    def timed_steps(m: int) -> float:
        iid = uuid.uuid4().hex
        t0 = pc.now()
        dd.start(workloads.many_steps, m, instance_id=iid)
        dt = pc.now() - t0
        pc.check(status_of(iid), Status.COMPLETED, f"status of many_steps({m})")
        pc.check(dd.result(iid), expected_steps(m), f"many_steps({m})")
        return dt

    s = pc.rounds({"floor": lambda: floor.batch_s(sz.floor_batch), "plain": lambda: plain_s_per_step(loop, n),
                   "long": lambda: timed_steps(n), "short": lambda: timed_steps(1)}, sz.step_rounds, sz.warmup)
    per = pc.slope_us(s["long"], s["short"], n)
    res: dict[str, Any] = {"per_step": {
        "n": n, "us": pc.median(per), "plain_us": pc.median(s["plain"]) * 1e6, "floor_us": pc.median(s["floor"]) * 1e6,
        "floor_kind": "UPDATE 2 KB + COMMIT, bare driver", "run1_ms": pc.median(s["short"]) * 1e3,
        "samples_us": per}}
    res["settings"] = {"floor": floor.settings, "durable": "RUN_INLINE (worker.run_instance in this process)"}
    floor.close()

    def start_batch() -> float:
        t0 = pc.now()
        ids = [uuid.uuid4().hex for _ in range(sz.start_batch)]
        for iid in ids:
            dd.start(workloads.many_steps, 1, instance_id=iid)
        dt = pc.now() - t0
        for iid in ids:
            pc.check(dd.result(iid), expected_steps(1), "many_steps(1)")
        return sz.start_batch / dt

    st = pc.rounds({"batch": start_batch}, sz.start_rounds, 1)
    res["start"] = {"per_s": pc.median(st["batch"]), "samples": st["batch"],
                    "method": "durable_django.start(many_steps, 1) run inline to completion, one after the other"}

    ids = {k: [f"r{k}-{r}-{uuid.uuid4().hex[:6]}" for r in range(sz.resume_repeats)] for k in sz.k_values}
    build_s, state_b = {}, {}
    for k in sz.k_values:
        t0 = pc.now()
        for iid in ids[k]:
            dd.start(workloads.steps_then_wait, k, instance_id=iid)
            pc.check(status_of(iid), Status.PAUSED, f"status of steps_then_wait({k}) before the event")
        build_s[k] = (pc.now() - t0) / len(ids[k])
        state_b[k] = _instance_bytes(ids[k][0])
    samples: dict[int, list[float]] = {k: [] for k in sz.k_values}
    for r in range(sz.resume_repeats):
        for name in pc.rotate([str(k) for k in sz.k_values], r):
            k = int(name)
            iid = ids[k][r]
            t0 = pc.now()
            dd.publish_event(iid, "go", 7)
            samples[k].append(pc.now() - t0)
            pc.check(dd.result(iid), expected_wait(k, 7), f"resumed steps_then_wait({k})")
    res["resume"] = {"points": [{"k": k, "ms": pc.median(samples[k]) * 1e3, "state_bytes": state_b[k],
                                 "build_s": build_s[k], "samples_ms": [x * 1e3 for x in samples[k]]}
                                for k in sz.k_values],
                     "method": "publish_event (inline: claim, load the checkpoint, one step, complete, commit)"}

    lat: list[float] = []
    v = 0
    while len(lat) < sz.latency_samples:
        iid, per_i, expected = uuid.uuid4().hex, sz.latency_per_instance, 0
        dd.start(peer_programs.event_loop, per_i, instance_id=iid)
        for i in range(per_i):
            v += 1
            expected += v
            t0 = pc.now()
            dd.publish_event(iid, "go", v)
            if i >= 1:
                lat.append(peer_programs.MARKS[v] - t0)
        pc.check(dd.result(iid), expected, "event_loop")
    lat = lat[: sz.latency_samples]
    res["latency"] = {"p50_ms": pc.median(lat) * 1e3, "p90_ms": pc.pct(lat, 90) * 1e3, "samples": len(lat),
                      "method": "publish_event (inline run) -> the step after the wait runs"}
    loop.close()
    return res


def main() -> None:
    args = pc.child_args(__doc__.splitlines()[0], ("memory", "disk", "sqlite", "pg"))
    sz = pc.sizes(args.quick)
    from importlib.metadata import version

    if args.db in ("memory", "disk"):
        res = run_core(args.db, sz, args.workdir)
        res.update(system="ours: durable core", db=args.db, version=version("durable-django"))
    else:
        res = run_django(args.db, sz, args.workdir)
        import django

        res.update(system="ours: durable_django", db=args.db, version=version("durable-django"),
                   django=django.get_version())
    pc.write_result(args.out, res, sz)


if __name__ == "__main__":
    t_start = time.time()
    main()
