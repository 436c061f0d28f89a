"""Child of the peer benchmark: the seed package durable-python 0.1.x (in memory or on disk).

``python bench/peer_seed.py --db memory|disk --workdir DIR --out FILE [--quick]``
(started by :mod:`bench.peers` with ``PYTHONPATH`` set to the directory the
seed is installed in, ``.venv-bench/seed``: the seed's top-level package is
also called ``durable``, so it must come before this project's on the path;
this script checks it got the seed).

How the seed runs a program, as found by :func:`probe` in every run: one
call of a durable program advances it by **one awaited call** and saves its
state; it must be called again until its saved call stack is empty (what
:func:`drive` does). A ``for`` loop of awaited steps stops after its first
iteration, and the core benchmark's ``many_steps(n)`` returns None. Straight
-line code runs right, values passed between steps included. So the seed's
programs here are **straight-line**: N ``acc = await step(acc, i)`` lines,
generated into a module in the work directory (the seed needs the source),
and every figure checks the returned value. Its pause is ``raise
PauseForEventException(name)``, skipped when the program runs again after the
event; events carry no payload.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import sys
import uuid
from typing import Any

import peer_common as pc

import durable
from durable import DiskStateStore, DurableBackend, InMemoryStateStore, PauseForEventException, make_durable

if not hasattr(durable, "DurableAstTransformer") or hasattr(durable, "wait_for_event"):
    sys.exit(f"peer_seed.py must run with the seed package first on the path, got {durable.__file__}")

SEEN: list[int] = []
#: Largest K built by running it: each call of the program compiles the whole function again (its
#: transformed source is exec'd per call), so building K steps costs ~K² (K = 1,000: over 10 minutes here).
MAX_K = 100
#: Steps of the per-step program (each program call re-compiles the whole function, so N is kept small).
SEED_STEPS = 200


async def record(i: int) -> None:
    SEEN.append(i)


async def record_loop(n: int) -> int:
    for i in range(n):
        await record(i)
    return n


async def step(acc: int, i: int) -> int:
    return acc + i


async def loop_steps(n: int) -> int:
    acc = 0
    for i in range(n):
        acc = await step(acc, i)
    return acc


def generate(workdir: str, n: int, ks: list[int]) -> Any:
    """Write and import a module of straight-line programs: ``chain`` (n steps), ``wait_<k>``, ``one``, ``marker``."""
    lines = ["import time", "from durable import PauseForEventException", "", "MARKS = {}", "",
             "async def step(acc, i):", "    return acc + i", "",
             "async def mark(v):", "    MARKS[v] = time.perf_counter()", "    return v", "",
             "async def one(x):", "    acc = await step(x, 1)", "    return acc", "",
             "async def marker(v):", "    r = -1", "    raise PauseForEventException('go')", "    r = await mark(v)",
             "    return r", "", "async def chain(x):", "    acc = x"]
    lines += [f"    acc = await step(acc, {i})" for i in range(n)] + ["    return acc", ""]
    for k in ks:
        lines += [f"async def wait_{k}(x):", "    acc = x"] + [f"    acc = await step(acc, {i})" for i in range(k)]
        lines += ["    raise PauseForEventException('go')", "    acc = await step(acc, 7)", "    return acc", ""]
    name = f"seed_programs_{uuid.uuid4().hex[:8]}"
    with open(os.path.join(workdir, f"{name}.py"), "w") as f:
        f.write("\n".join(lines) + "\n")
    sys.path.insert(0, workdir)
    return importlib.import_module(name)


def drive(run: Any, program: Any, be: Any, iid: str, *args: Any) -> tuple[Any, int]:
    """Call the program until its saved call stack is empty: its result and the number of calls."""
    calls = 0
    while True:
        calls += 1
        got = run(program(*args, orchestration_backend=be, instance_id=iid))
        state = run(be.state_store.load(iid))
        if state is not None and not state["call_stack"]["calls"]:
            return got, calls


async def _publish(be: Any, iid: str) -> None:
    be.publish_event(iid, "go")  # the seed's publish_event needs a running event loop


def probe(run: Any, be: Any, n: int) -> str:
    """What the seed does with a loop of awaited steps (the reason loops are not used)."""
    got = run(make_durable(loop_steps)(n, orchestration_backend=be, instance_id=uuid.uuid4().hex))
    SEEN.clear()
    _, calls = drive(run, make_durable(record_loop), be, uuid.uuid4().hex, n)
    return (f"a for loop of {n} awaited steps returns {got!r} after one call (expected {sum(range(n))}); "
            f"called until its call stack was empty ({calls} calls) it ran {len(SEEN)} step(s)")


def main() -> None:
    args = pc.child_args(__doc__.splitlines()[0], ("memory", "disk"))
    sz = pc.sizes(args.quick)
    loop = asyncio.new_event_loop()
    run = loop.run_until_complete
    store_dir = os.path.join(args.workdir, f"seed-{args.db}")
    store = DiskStateStore(store_dir) if args.db == "disk" else InMemoryStateStore()
    be = DurableBackend(store)
    n = min(SEED_STEPS, sz.steps_db)
    ks = sorted({k for k in sz.k_values if k <= MAX_K} | {MAX_K})
    gen = generate(args.workdir, n, ks)
    chain, one, marker = make_durable(gen.chain), make_durable(gen.one), make_durable(gen.marker)
    from importlib.metadata import version

    res: dict[str, Any] = {
        "system": "seed: durable-python", "db": args.db, "version": version("durable-python"),
        "settings": {"store": "DiskStateStore (cloudpickle to a file, no fsync)" if args.db == "disk"
                     else "InMemoryStateStore", "floor": "plain await of the same step",
                     "programs": "straight-line (generated), driven by one program call per awaited call",
                     "loop_probe": probe(run, be, 50)}}

    def plain() -> float:
        t0 = pc.now()
        run(gen.chain(0))
        return (pc.now() - t0) / n

    short = make_durable(gen.one)

    def timed(m: int) -> float:
        t0 = pc.now()
        got, calls = drive(run, chain if m == n else short, be, uuid.uuid4().hex, 0)
        dt = pc.now() - t0
        pc.check((got, calls), (sum(range(n)), n + 1) if m == n else (1, 2), f"straight-line program of {m} steps")
        return dt

    s = pc.rounds({"plain": plain, "long": lambda: timed(n), "short": lambda: timed(1)}, sz.step_rounds, sz.warmup)
    per = pc.slope_us(s["long"], s["short"], n)
    plain_us = pc.median(s["plain"]) * 1e6
    res["per_step"] = {"n": n, "us": pc.median(per), "plain_us": plain_us, "floor_us": plain_us,
                       "floor_kind": "plain await of the same step", "run1_ms": pc.median(s["short"]) * 1e3,
                       "samples_us": per,
                       "note": f"straight-line program of {n} steps; every call re-compiles the whole function"}

    def start_batch() -> float:
        t0 = pc.now()
        for i in range(sz.start_batch):
            pc.check(drive(run, one, be, uuid.uuid4().hex, i)[0], i + 1, "one(i)")
        return sz.start_batch / (pc.now() - t0)

    st = pc.rounds({"batch": start_batch}, sz.start_rounds, 1)
    res["start"] = {"per_s": pc.median(st["batch"]), "samples": st["batch"],
                    "method": "one-step programs driven to completion (2 calls each), one after the other"}

    lat: list[float] = []
    for v in range(1, sz.latency_samples + 1):  # the seed drops a falsy return value (0 comes back as None)
        iid = uuid.uuid4().hex
        try:
            run(marker(v, orchestration_backend=be, instance_id=iid))
            raise AssertionError("marker did not pause")
        except PauseForEventException:
            pass
        t0 = pc.now()
        run(_publish(be, iid))
        got, _ = drive(run, marker, be, iid, v)
        lat.append(gen.MARKS[v] - t0)
        pc.check(got, v, "marker")
    res["latency"] = {"p50_ms": pc.median(lat) * 1e3, "p90_ms": pc.pct(lat, 90) * 1e3, "samples": len(lat),
                      "method": ("publish_event, then the paused program called again until done -> the step after "
                                 "the pause runs (one pause per instance: the seed skips a pause it has passed)")}

    waits = {k: make_durable(getattr(gen, f"wait_{k}")) for k in ks}
    ids = {k: [f"r{k}-{r}-{uuid.uuid4().hex[:6]}" for r in range(sz.resume_repeats)] for k in ks}
    build_s, state_b = {}, {}
    for k in ks:
        t0 = pc.now()
        for iid in ids[k]:
            try:
                drive(run, waits[k], be, iid, 0)
                raise AssertionError(f"wait_{k} completed instead of pausing")
            except PauseForEventException:
                pass
        build_s[k] = (pc.now() - t0) / len(ids[k])
        import cloudpickle

        state_b[k] = (os.path.getsize(os.path.join(store_dir, f"{ids[k][0]}.pkl")) if args.db == "disk"
                      else len(cloudpickle.dumps(run(store.load(ids[k][0])))))
    samples: dict[int, list[float]] = {k: [] for k in ks}
    for r in range(sz.resume_repeats):
        for name in pc.rotate([str(k) for k in ks], r):
            k = int(name)
            iid = ids[k][r]
            t0 = pc.now()
            run(_publish(be, iid))
            got, _ = drive(run, waits[k], be, iid, 0)
            samples[k].append(pc.now() - t0)
            pc.check(got, sum(range(k)) + 7, f"resumed wait_{k}")
    skipped = [k for k in sz.k_values if k > MAX_K]
    res["resume"] = {"points": [{"k": k, "ms": pc.median(samples[k]) * 1e3, "state_bytes": state_b[k],
                                 "build_s": build_s[k], "samples_ms": [x * 1e3 for x in samples[k]]}
                                for k in ks],
                     "method": "publish_event + the program called until done: loads the state, one step, completes"}
    if skipped:
        res["resume"]["na_k"] = {str(k): ("not built: every program call re-compiles the whole K-step function, "
                                          f"so building K steps costs ~K² ({build_s[ks[-1]]:.1f} s at K={ks[-1]:,}, "
                                          f"~{build_s[ks[-1]] * (k / ks[-1]) ** 2 / 60:,.0f} min at K={k:,})")
                                 for k in skipped}
    loop.close()
    pc.write_result(args.out, res, sz)


if __name__ == "__main__":
    main()
