"""The core parts of the failure-handling benchmark: what a retry policy, checkpoint history and a fork cost.

Everything runs in one process and one event loop. Variants that get compared
run interleaved in rotating order and every figure is taken in the same run,
so a noisy machine shifts both sides of a ratio alike. Each variant's figure
is reported as the best (minimum) and the median of its repeats; a ratio or a
difference uses the best (the least-disturbed run of each variant). Every run
checks its result, so a fast but wrong runtime cannot produce a figure.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Awaitable
from typing import Any

import durable
from durable import DurableBackend, InMemoryStateStore
from durable import signing as ser

from ..common.stats import median
from ..core import NullBackend
from . import workloads
from .setup import INSTANCE, POLICY_TARGET_US, STATE_KEY, FailuresConfig


def _backend() -> DurableBackend:
    return DurableBackend(InMemoryStateStore())


def _store(backend: DurableBackend) -> InMemoryStateStore:
    store = backend.store
    assert isinstance(store, InMemoryStateStore)
    return store


async def _timed(coro: Awaitable[Any]) -> tuple[float, Any]:
    """Seconds taken by ``coro`` and its result."""
    t0 = time.perf_counter()
    result = await coro
    return time.perf_counter() - t0, result


def _rotated(keys: list[Any], r: int) -> list[Any]:
    """``keys`` starting at a different one each repeat, so no variant always runs first."""
    shift = r % len(keys)
    return keys[shift:] + keys[:shift]


def _check(what: str, got: Any, n: int) -> None:
    if got != workloads.expected(n):
        raise AssertionError(f"{what} returned {got!r}, expected {workloads.expected(n)!r}")


def _figures(samples: list[float]) -> dict[str, Any]:
    return {"best": min(samples), "median": median(samples), "samples": samples}


def history_keys(store: InMemoryStateStore, instance_id: str) -> list[str]:
    """The keys of ``instance_id``'s stored checkpoints (``history:{id}:{step:012d}``), oldest first."""
    prefix = f"history:{instance_id}:"
    return sorted(k for k in store._data if k.startswith(prefix))


# -- (a) a step with a retry policy against the same step without one ------------------------------
async def part_policy(cfg: FailuresConfig) -> dict[str, Any]:
    """µs per step of each step variant, on InMemoryStateStore and on a backend that saves nothing."""
    n = cfg.n_steps
    keys = [f"{v}/{b}" for v in workloads.STEP_VARIANTS for b in ("memory", "null")] + ["plain"]
    samples: dict[str, list[float]] = {k: [] for k in keys}
    checkpoints = 0
    for r in range(cfg.warmup + cfg.repeats):
        gc.collect()
        for key in _rotated(keys, r):
            if key == "plain":  # the same loop natively: a Step called outside durable code is the bare call
                dt, got = await _timed(workloads.bare_steps(n))
            else:
                variant, where = key.split("/")
                program = workloads.STEP_VARIANTS[variant]
                backend = _backend() if where == "memory" else NullBackend()
                dt, got = await _timed(program(n, orchestration_backend=backend, instance_id=INSTANCE))
                if key == "bare/memory":
                    final = ser.loads(_store(backend).load_blob(STATE_KEY) or b"")  # type: ignore[arg-type]
                    checkpoints = final.get("steps", 0)
            _check(key, got, n)
            if r >= cfg.warmup:
                samples[key].append(dt / n * 1e6)
    fig = {k: _figures(v) for k, v in samples.items()}
    best = {k: v["best"] for k, v in fig.items()}
    cost = best["retried/memory"] - best["bare/memory"]
    return {
        "n_steps": n, "repeats": cfg.repeats, "us_per_step": fig,
        "policy_cost_us": cost,
        "policy_cost_null_us": best["retried/null"] - best["bare/null"],
        "default_policy_cost_us": best["default/memory"] - best["bare/memory"],
        "policy_cost_median_us": fig["retried/memory"]["median"] - fig["bare/memory"]["median"],
        "leaf_vs_nested_us": best["bare/memory"] - best["nested/memory"],
        "checkpoints_per_step": checkpoints / n,
        "target_us": POLICY_TARGET_US, "meets_target": cost <= POLICY_TARGET_US,
    }


# -- (b) checkpoint history on against off ------------------------------------------------------------
async def part_history(cfg: FailuresConfig) -> dict[str, Any]:
    """µs per checkpoint with history off, the last 10 kept, and all kept; the bytes each stored checkpoint
    takes."""
    n = cfg.n_steps
    keys = list(workloads.HISTORY_VARIANTS)
    samples: dict[str, list[float]] = {k: [] for k in keys}
    kept: dict[str, int] = {}
    state_bytes: dict[str, int] = {}
    for r in range(cfg.warmup + cfg.repeats):
        gc.collect()
        for key in _rotated(keys, r):
            backend = _backend()
            dt, got = await _timed(workloads.HISTORY_VARIANTS[key](n, orchestration_backend=backend,
                                                                  instance_id=INSTANCE))
            _check(f"history={key}", got, n)
            if r >= cfg.warmup:
                samples[key].append(dt / n * 1e6)
            store = _store(backend)
            kept[key] = len(history_keys(store, INSTANCE))
            state_bytes[key] = len(store._data[STATE_KEY])
            del backend, store
    fig = {k: _figures(v) for k, v in samples.items()}
    sizes = await _history_sizes(min(n, 1000))
    off = fig["off"]["best"]
    return {
        "n_steps": n, "repeats": cfg.repeats, "us_per_step": fig,
        "ratio_10": fig["10"]["best"] / off, "ratio_all": fig["all"]["best"] / off,
        "extra_us_10": fig["10"]["best"] - off, "extra_us_all": fig["all"]["best"] - off,
        "kept": kept, "state_bytes": state_bytes, **sizes,
    }


async def _history_sizes(n: int) -> dict[str, Any]:
    """Sizes of the checkpoints stored by an instance of ``n`` steps with every checkpoint kept."""
    backend = _backend()
    await workloads.hist_all_program(n, orchestration_backend=backend, instance_id=INSTANCE)
    store = _store(backend)
    blobs = [len(store._data[k]) for k in history_keys(store, INSTANCE)]
    if not blobs:
        raise AssertionError("history=True stored no checkpoint under history:{id}:...")
    return {"history_steps": n, "history_blobs": len(blobs),
            "history_bytes_per_checkpoint": median([float(b) for b in blobs]),
            "history_bytes_min": min(blobs), "history_bytes_max": max(blobs), "history_bytes_total": sum(blobs),
            "state_blob_bytes": len(store._data[STATE_KEY])}


def _nearest(steps: list[int], k: int) -> int:
    """The step of ``steps`` closest to ``k``."""
    return min(steps, key=lambda s: abs(s - k))


# -- (c) fork --------------------------------------------------------------------------------------
async def part_fork(cfg: FailuresConfig) -> dict[str, Any]:
    """Time of ``durable.fork`` from checkpoint k of an instance with ``fork_checkpoints`` checkpoints, and of
    running the fork to its end."""
    n = cfg.fork_checkpoints
    backend = _backend()
    program = workloads.hist_all_program
    _check("history=True", await program(n, orchestration_backend=backend, instance_id=INSTANCE), n)
    listed = await durable.list_checkpoints(backend, INSTANCE)
    # a fork starts from a running or paused checkpoint (not from the instance's end)
    steps = [c["step"] for c in listed if c["status"] in ("running", "paused")]
    if not steps:
        raise AssertionError(f"no checkpoint to fork from after a history=True run: {listed!r}")
    list_us = []
    for _ in range(max(3, cfg.fork_repeats // 10)):
        dt, _listed = await _timed(durable.list_checkpoints(backend, INSTANCE))
        list_us.append(dt * 1e6)
    # the checkpoints asked for, as the nearest listed steps
    points = sorted({_nearest(steps, k) for k in cfg.fork_points})
    fork_us: dict[int, list[float]] = {k: [] for k in points}
    counter = 0
    for r in range(cfg.warmup + cfg.fork_repeats):
        for point in _rotated(points, r):
            counter += 1
            dt, _ = await _timed(durable.fork(backend, INSTANCE, f"fork-{counter}", step=point))
            if r >= cfg.warmup:
                fork_us[point].append(dt * 1e6)
    out = []
    for k in points:
        runs = []
        for j in range(3):  # the fork runs on from checkpoint k to the same result
            new = f"run-{k}-{j}"
            await durable.fork(backend, INSTANCE, new, step=k)
            dt, got = await _timed(program(n, orchestration_backend=backend, instance_id=new))
            _check(f"fork at {k}", got, n)
            runs.append(dt * 1e3)
        out.append({"step": k, "fork_us": median(fork_us[k]), "fork_us_best": min(fork_us[k]),
                    "run_to_end_ms": median(runs), "samples_us": fork_us[k]})
    return {"checkpoints": len(listed), "instance_steps": n, "repeats": cfg.fork_repeats, "points": out,
            "list_checkpoints_us": median(list_us)}
