"""Measurements of the durable core: step overhead, resume, compile, nesting.

Every figure is a median over repeats taken after warm-up runs, and every
ratio compares figures measured in the same process, interleaved, so that a
noisy machine shifts both sides alike. :func:`run` returns a JSON-ready dict;
``python -m bench`` prints it as a table and writes it to a file.
"""

from __future__ import annotations

import asyncio
import gc
import os
import pickle
import platform
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any

import cloudpickle

import durable
from durable import (
    DiskStateStore,
    DurableAstTransformer,
    DurableBackend,
    InMemoryStateStore,
    OrchestrationBackend,
    PauseForEventException,
    make_durable,
)
from durable import signing as ser

from . import workloads
from .common.environment import git_revision, utc_now
from .common.stats import median

STATE_KEY = "state:x"
INSTANCE = "x"
OVERHEAD_TARGET_US = 25.0
FLAT_TARGET_RATIO = 1.2
#: Figures of the seed package, for comparison (ms per checkpoint at a nesting depth).
SEED_CHECKPOINT_MS = {10: 3.2, 100: 17.0, 1000: 155.0}
SEED_STATE_BYTES_AT_1000 = 2_100_000


@dataclass(frozen=True)
class CoreConfig:
    """Sizes and repeat counts of one run."""

    quick: bool
    n_steps: int
    step_repeats: int
    disk_steps: int
    disk_repeats: int
    floor_loops: int
    floor_repeats: int
    k_values: tuple[int, ...]
    resume_repeats: int
    compile_repeats: int
    depths: tuple[int, ...]
    depth_steps: int
    depth_repeats: int
    warmup: int


FULL = CoreConfig(quick=False, n_steps=20_000, step_repeats=15, disk_steps=500, disk_repeats=7, floor_loops=50_000,
                    floor_repeats=11, k_values=(10, 1_000, 100_000), resume_repeats=101, compile_repeats=51,
                    depths=(10, 100, 1000), depth_steps=100, depth_repeats=5, warmup=2)
QUICK = CoreConfig(quick=True, n_steps=2_000, step_repeats=5, disk_steps=30, disk_repeats=3, floor_loops=5_000,
                     floor_repeats=5, k_values=(10, 1_000, 10_000), resume_repeats=21, compile_repeats=11,
                     depths=(10, 100), depth_steps=20, depth_repeats=2, warmup=1)


def _now() -> float:
    return time.perf_counter()


def _backend(store: Any = None) -> DurableBackend:
    return DurableBackend(store if store is not None else InMemoryStateStore())


async def _timed(coro: Awaitable[Any]) -> tuple[float, Any]:
    """Seconds taken by ``coro`` and its result."""
    t0 = _now()
    result = await coro
    return _now() - t0, result


def _loop_time(fn: Callable[[], Any], loops: int, repeats: int) -> float:
    """Median µs per call of ``fn`` over ``repeats`` batches of ``loops`` calls."""
    fn()
    per: list[float] = []
    for _ in range(repeats):
        t0 = _now()
        for _ in range(loops):
            fn()
        per.append((_now() - t0) / loops * 1e6)
    return median(per)


def sample_locals() -> dict[str, Any]:
    """A locals dict like the benchmark frame's: 10 small ints and 10 short strings."""
    d: dict[str, Any] = {f"a{i}": i for i in range(10)}
    d.update({f"s{i}": f"k-{i:04d}" for i in range(10)})
    return d


class NullBackend(OrchestrationBackend):
    """Saves nothing: running against it shows the runtime's own cost, without pickling or a store."""

    def __init__(self) -> None:
        self.saves = 0

    async def load_state(self, instance_id: str) -> dict | None:
        return None

    async def save_state(self, instance_id: str, state: dict) -> None:
        self.saves += 1

    async def wait_for_event(self, instance_id: str, event_name: str) -> Any:
        raise PauseForEventException(event_name, instance_id=instance_id)


async def _run_until_pause(program: Any, backend: DurableBackend, *args: Any) -> None:
    try:
        await program(*args, orchestration_backend=backend, instance_id=INSTANCE)
    except PauseForEventException:
        return
    raise RuntimeError(f"{program!r} completed instead of pausing")


# -- 1. per-step overhead ---------------------------------------------------
async def bench_per_step(cfg: CoreConfig) -> dict[str, Any]:
    """µs per awaited step: plain asyncio vs durable (memory), durable (disk), pickling floor."""
    program = make_durable(workloads.many_steps)
    n = cfg.n_steps
    expected = await workloads.many_steps(n)
    samples: dict[str, list[float]] = {"plain": [], "memory": [], "null": []}
    checkpoints = 0
    for r in range(cfg.warmup + cfg.step_repeats):
        gc.collect()
        # rotate the order so that drift of the machine hits every variant alike
        order = ["plain", "memory", "null"]
        order = order[r % 3:] + order[:r % 3]
        for which in order:
            if which == "plain":
                dt, got = await _timed(workloads.many_steps(n))
            elif which == "memory":
                backend = _backend()
                dt, got = await _timed(program(n, orchestration_backend=backend, instance_id=INSTANCE))
                final = ser.loads(backend.store.load_blob(STATE_KEY) or b"")
                checkpoints = final.get("steps", 0)
            else:
                null = NullBackend()
                dt, got = await _timed(program(n, orchestration_backend=null, instance_id=INSTANCE))
            if r >= cfg.warmup:
                samples[which].append(dt / n * 1e6)
            if got != expected:
                raise AssertionError(f"{which} run returned {got!r}, expected {expected!r}")

    disk: list[float] = []
    with tempfile.TemporaryDirectory(prefix="durable-bench-") as tmp:
        for r in range(1 + cfg.disk_repeats):
            backend = _backend(DiskStateStore(tmp))
            dt, got = await _timed(program(cfg.disk_steps, orchestration_backend=backend, instance_id=f"d{r}"))
            if r >= 1:
                disk.append(dt / cfg.disk_steps * 1e6)

    plain_us, mem_us, null_us = (median(samples[k]) for k in ("plain", "memory", "null"))
    disk_us = median(disk)
    shape, mid_blob = await _checkpoint_shape(program, n)
    return {
        "n_steps": n,
        "repeats": cfg.step_repeats,
        **shape,
        "plain_us_per_step": plain_us,
        "durable_memory_us_per_step": mem_us,
        "overhead_us_per_step": mem_us - plain_us,
        "ratio": mem_us / plain_us,
        "checkpoints_per_step": checkpoints / n,
        "durable_null_backend_us_per_step": null_us,
        "runtime_share_us_per_step": null_us - plain_us,
        "save_share_us_per_step": mem_us - null_us,
        "target_overhead_us": OVERHEAD_TARGET_US,
        "meets_target": (mem_us - plain_us) <= OVERHEAD_TARGET_US,
        "disk_steps": cfg.disk_steps,
        "durable_disk_us_per_step": disk_us,
        "disk_overhead_us_per_step": disk_us - plain_us,
        "samples_us": {**samples, "disk": disk},
        "floor": bench_floor(cfg, mid_blob),
    }


async def _checkpoint_shape(program: Any, n: int) -> tuple[dict[str, int], bytes]:
    """Locals in the looping frame and the size of its checkpoint, seen mid-run; and that checkpoint."""
    backend = _backend()
    seen: dict[str, int] = {}
    blob: list[bytes] = []
    runtime = program.runtime(backend, INSTANCE)

    def hook(_instance: str, step: int) -> None:
        if step == 2:
            try:
                seen["locals_in_frame"] = len(runtime.state["stack"].frames[-1].locals)
            except (AttributeError, KeyError, IndexError, TypeError):  # the state layout changed
                seen["locals_in_frame"] = -1
            blob.append(backend.store.load_blob(STATE_KEY) or b"")
            seen["checkpoint_bytes"] = len(blob[0])

    runtime.on_checkpoint = hook
    await runtime.run(program, (max(n, 3),), {})
    return seen, blob[0]


def bench_floor(cfg: CoreConfig, state_blob: bytes) -> dict[str, Any]:
    """What serialising a 20-value locals dict costs, and the checkpoint the runtime really writes."""
    loc = sample_locals()
    blob = pickle.dumps(loc, protocol=5)
    loops, reps = cfg.floor_loops, cfg.floor_repeats
    dumps_us = _loop_time(lambda: pickle.dumps(loc, protocol=5), loops, reps)
    loads_us = _loop_time(lambda: pickle.loads(blob), loops, reps)
    roundtrip_us = _loop_time(lambda: pickle.loads(pickle.dumps(loc, protocol=5)), loops, reps)
    cloud_us = _loop_time(lambda: cloudpickle.dumps(loc, protocol=5), max(1, loops // 4), reps)

    # the state saved mid-loop by many_steps (one frame, 25 locals incl. the range iterator)
    state = ser.loads(state_blob)
    state_dumps_us = _loop_time(lambda: ser.dumps(state), max(1, loops // 4), reps)
    state_loads_us = _loop_time(lambda: ser.loads(state_blob), max(1, loops // 4), reps)
    backend = _backend()

    async def save() -> None:
        await backend.save_state(INSTANCE, state)

    def save_sync() -> None:
        coro = save()
        try:
            coro.send(None)
        except StopIteration:
            return
        raise RuntimeError("save_state suspended")

    save_us = _loop_time(save_sync, max(1, loops // 4), reps)
    return {
        "locals_values": len(loc),
        "locals_pickle_bytes": len(blob),
        "pickle_dumps_us": dumps_us,
        "pickle_loads_us": loads_us,
        "pickle_roundtrip_us": roundtrip_us,
        "cloudpickle_dumps_us": cloud_us,
        "state_bytes": len(state_blob),
        "state_dumps_us": state_dumps_us,
        "state_loads_us": state_loads_us,
        "backend_save_state_us": save_us,
    }


# -- 2. resume time and state size against K ----------------------------------
def steps_then_wait_result(k: int, payload: int) -> int:
    """What :func:`workloads.steps_then_wait` returns for ``k`` and the event payload."""
    return k * (k - 1) // 2 + payload + 45 + len("alphabetagammadeltaeps")


async def bench_resume(cfg: CoreConfig) -> dict[str, Any]:
    """Size of the paused state and time to resume it, after K completed steps."""
    program = make_durable(workloads.steps_then_wait)
    snapshots: dict[int, dict[str, bytes]] = {}
    points: dict[int, dict[str, Any]] = {}
    for k in cfg.k_values:
        backend = _backend()
        t0 = _now()
        await _run_until_pause(program, backend, k)
        build = _now() - t0
        store = backend.store
        assert isinstance(store, InMemoryStateStore)
        snapshots[k] = dict(store._data)
        points[k] = {"k": k, "build_s": build, "build_us_per_step": build / max(k, 1) * 1e6,
                     "state_bytes": len(store._data[STATE_KEY]), "_total": [], "_publish": [], "_continue": []}

    payload = 7
    for r in range(cfg.warmup + cfg.resume_repeats):
        # round-robin over K, rotating the start, so no K always runs first
        ks = list(cfg.k_values)
        shift = r % len(ks)
        for k in ks[shift:] + ks[:shift]:
            store = InMemoryStateStore()
            store._data.update(snapshots[k])
            backend = _backend(store)
            gc.collect()
            t0 = _now()
            backend.publish_event(INSTANCE, "go", payload)
            t1 = _now()
            got = await program(k, orchestration_backend=backend, instance_id=INSTANCE)
            t2 = _now()
            if got != steps_then_wait_result(k, payload):
                raise AssertionError(f"resume at K={k} returned {got!r}")
            if r >= cfg.warmup:
                p = points[k]
                p["_total"].append((t2 - t0) * 1e6)
                p["_publish"].append((t1 - t0) * 1e6)
                p["_continue"].append((t2 - t1) * 1e6)

    out = []
    for k in cfg.k_values:
        p = points[k]
        total, pub, cont = p.pop("_total"), p.pop("_publish"), p.pop("_continue")
        p.update(resume_us=median(total), publish_us=median(pub), continue_us=median(cont))
        out.append(p)
    lo, hi = out[0], out[-1]
    ratio = hi["resume_us"] / lo["resume_us"]
    return {
        "k_values": list(cfg.k_values),
        "repeats": cfg.resume_repeats,
        "points": out,
        "time_ratio_kmax_kmin": ratio,
        "size_ratio_kmax_kmin": hi["state_bytes"] / lo["state_bytes"],
        "target_ratio": FLAT_TARGET_RATIO,
        "meets_target": ratio <= FLAT_TARGET_RATIO,
    }


# -- 3. compile time ----------------------------------------------------------
def bench_compile(cfg: CoreConfig) -> dict[str, Any]:
    """ms to compile :func:`workloads.medium` with a fresh transformer (no cache)."""
    import inspect

    fn = workloads.medium
    src_lines = len(inspect.getsource(fn).splitlines())
    compiled = DurableAstTransformer().compile(fn)
    times = []
    for r in range(cfg.warmup + cfg.compile_repeats):
        t0 = _now()
        DurableAstTransformer().compile(fn)
        if r >= cfg.warmup:
            times.append((_now() - t0) * 1e3)
    return {
        "function": f"{fn.__module__}.{fn.__qualname__}",
        "source_lines": src_lines,
        "blocks": len(compiled.blocks),
        "repeats": cfg.compile_repeats,
        "ms": median(times),
        "ms_min": min(times),
    }


# -- 4. nested calls -----------------------------------------------------------
async def bench_nested(cfg: CoreConfig) -> dict[str, Any]:
    """Checkpoint cost, state size and resume time with ``depth`` durable frames on the stack."""
    program = make_durable(workloads.nested)
    waiting = make_durable(workloads.nested_wait)
    out = []
    for depth in cfg.depths:
        per_step: list[float] = []
        totals: list[float] = []
        checkpoints = 0
        for r in range(1 + cfg.depth_repeats):
            stamps: list[float] = []
            runtime = program.runtime(_backend(), INSTANCE, on_checkpoint=lambda _i, _s, st=stamps: st.append(_now()))
            t0 = _now()
            got = await runtime.run(program, (depth, cfg.depth_steps), {})
            total = _now() - t0
            m = cfg.depth_steps
            if got != m * (m - 1) // 2 + depth:
                raise AssertionError(f"nested({depth}) returned {got!r}")
            if r >= 1:
                # checkpoints 1..m are the steps at the bottom, with depth+1 frames on the stack
                gaps = [(b - a) * 1e3 for a, b in zip(stamps[: m - 1], stamps[1:m])]
                per_step.extend(gaps)
                totals.append(total * 1e3)
                checkpoints = len(stamps)

        backend = _backend()
        await _run_until_pause(waiting, backend, depth)
        snap = dict(backend.store._data)  # type: ignore[attr-defined]
        resumes = []
        for r in range(1 + max(3, cfg.depth_repeats * 3)):
            store = InMemoryStateStore()
            store._data.update(snap)
            b = _backend(store)
            t0 = _now()
            b.publish_event(INSTANCE, "go", 1)
            got = await waiting(depth, orchestration_backend=b, instance_id=INSTANCE)
            if got != depth + 1:
                raise AssertionError(f"nested_wait({depth}) returned {got!r}")
            if r >= 1:
                resumes.append((_now() - t0) * 1e3)
        state_blob = snap[STATE_KEY]
        load_ms = _loop_time(lambda blob=state_blob: ser.loads(blob), 1, 1 + 2 * cfg.depth_repeats) / 1e3
        out.append({
            "depth": depth,
            "frames": depth + 1,
            "checkpoint_ms": median(per_step),
            "state_bytes": len(snap[STATE_KEY]),
            "load_ms": load_ms,
            "resume_ms": median(resumes),
            "run_ms": median(totals),
            "run_checkpoints": checkpoints,
            "seed_checkpoint_ms": SEED_CHECKPOINT_MS.get(depth),
        })
    return {"steps_at_bottom": cfg.depth_steps, "points": out, "seed_state_bytes_at_1000": SEED_STATE_BYTES_AT_1000}


# -- all ------------------------------------------------------------------------
def machine() -> dict[str, Any]:
    """Where and when the figures were taken."""
    return {
        "date_utc": utc_now(),
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "nproc": os.cpu_count(),
        "durable_version": durable.__version__,
        "cloudpickle_version": cloudpickle.__version__,
        "git": git_revision(),
    }


async def _run_async(cfg: CoreConfig) -> dict[str, Any]:
    t0 = _now()
    results: dict[str, Any] = {"meta": {**machine(), "quick": cfg.quick, "config": asdict(cfg)}}
    results["per_step"] = await bench_per_step(cfg)
    results["resume"] = await bench_resume(cfg)
    results["compile"] = bench_compile(cfg)
    results["nested"] = await bench_nested(cfg)
    results["meta"]["elapsed_s"] = _now() - t0
    return results


def run(quick: bool = False) -> dict[str, Any]:
    """Run every measurement (in a fresh event loop) and return the results."""
    return asyncio.run(_run_async(QUICK if quick else FULL))
