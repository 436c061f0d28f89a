"""The core parts of the concurrency benchmark: a branch's checkpoint with 1, 10 and 100 live branches, and
the sizes of the saved states.

Everything runs in one process and one event loop. The variants (the runner
alone as an instance, and in groups of each size) run interleaved in rotating
order, so drift on a noisy machine hits them alike. A run's figure is the
median gap between the runner's consecutive steps (its first ``skip`` gaps
left out); a variant is reported as the best (minimum) and the median of its
runs, with their spread, and ratios use the best ones. Every run is then
finished (the events published, the instance run to its end) and its result
checked, so a fast but wrong runtime cannot produce a figure.
"""

from __future__ import annotations

import gc
import os
import tempfile
import time
from collections.abc import Callable
from typing import Any

from durable import DiskStateStore, DurableBackend, InMemoryStateStore
from durable.exceptions import PauseForEventException
from durable.state import branch_key, current_branch

from ..common.stats import median
from . import workloads
from .setup import BRANCHES_TARGET, INSTANCE, ConcConfig

#: A signing key for the disk store (as a user would pass one: the blobs are checked before unpickling).
DISK_KEY = b"durable-bench-concurrency-not-secret"
#: A memory file system for the "tmpfs" variant (None where there is none: the variant is left out).
TMPFS = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
#: The variant of the runner without a group (an instance of its own).
SOLO = "solo"


def _rotated(keys: list[Any], r: int) -> list[Any]:
    """``keys`` starting at a different one each repeat, so no variant always runs first."""
    shift = r % len(keys)
    return keys[shift:] + keys[:shift]


def step_gaps_us(skip: int) -> list[float]:
    """µs between consecutive runs of the runner's step noted in :data:`workloads.STAMPS` (first ``skip``
    gaps left out)."""
    s = workloads.STAMPS
    return [(b - a) * 1e6 for a, b in zip(s, s[1:])][skip:]


def figures(samples: list[float]) -> dict[str, Any]:
    """Best, median and spread (max - min, as a share of the best) of a variant's per-run figures."""
    best = min(samples)
    return {"best": best, "median": median(samples), "max": max(samples),
            "spread": (max(samples) - best) / best if best else float("nan"), "samples": samples}


def finish(backend: DurableBackend, n: int, k: int) -> int:
    """Publish the events the paused branches wait for (payload ``i``); the caller runs the instance again."""
    for i in range(n - 1):
        backend.publish_event(INSTANCE, workloads.event_name(i), i)
    return workloads.expected(n, k)


async def one_run(backend: DurableBackend, key: Any, k: int, skip: int) -> tuple[float, float]:
    """Run one variant (``SOLO`` or a branch count) with ``k`` runner steps: (its median step gap, µs from
    the call to the runner's first step: the group started, the other branches paused). The instance is
    finished and its result checked."""
    workloads.STAMPS.clear()
    t0 = time.perf_counter()
    if key == SOLO:
        got = await workloads.solo_program(k, orchestration_backend=backend, instance_id=INSTANCE)
        want = k * (k - 1) // 2
    else:
        n = int(key)
        try:
            got = await workloads.fan_program(n, k, orchestration_backend=backend, instance_id=INSTANCE)
        except PauseForEventException:  # paused on the other branches' events: the expected outcome for n > 1
            if n == 1:
                raise
            got = None
        want = finish(backend, n, k)
    gaps = step_gaps_us(skip)
    if not gaps:
        raise AssertionError(f"variant {key}: the runner noted {len(workloads.STAMPS)} steps of {k}")
    start_us = (workloads.STAMPS[0] - t0) * 1e6
    if got is None:
        got = await workloads.fan_program(int(key), k, orchestration_backend=backend, instance_id=INSTANCE)
    if got != want:
        raise AssertionError(f"variant {key} returned {got!r}, expected {want!r}")
    return median(gaps), start_us


async def part_checkpoint(cfg: ConcConfig, store: str) -> dict[str, Any]:
    """µs per step of the runner branch with each number of live branches, on ``store``: "memory"
    (InMemoryStateStore), "disk" (DiskStateStore in a temporary folder: the device's fsync) or "tmpfs"
    (DiskStateStore on /dev/shm: the store's own work, without the device's noisy fsync)."""
    k = {"memory": cfg.memory_steps, "disk": cfg.disk_steps}.get(store, max(cfg.disk_steps, cfg.memory_steps // 4))
    repeats = cfg.disk_repeats if store == "disk" else cfg.repeats
    folder = TMPFS if store == "tmpfs" else None
    keys: list[Any] = [SOLO, *cfg.branches]
    samples: dict[str, list[float]] = {str(key): [] for key in keys}
    starts: dict[str, list[float]] = {str(key): [] for key in keys}
    for r in range(cfg.warmup + repeats):
        gc.collect()
        for key in _rotated(keys, r):
            with tempfile.TemporaryDirectory(prefix="durable-conc-", dir=folder) as tmp:
                backend = (DurableBackend(InMemoryStateStore()) if store == "memory"
                           else DurableBackend(DiskStateStore(tmp), signing_key=DISK_KEY))
                us, start_us = await one_run(backend, key, k, cfg.skip)
            if r >= cfg.warmup:
                samples[str(key)].append(us)
                starts[str(key)].append(start_us)
    fig = {key: figures(v) for key, v in samples.items()}
    lo, hi = str(cfg.branches[0]), str(cfg.branches[-1])
    ratio = fig[hi]["best"] / fig[lo]["best"]
    return {
        "store": store, "folder": folder, "runner_steps": k, "repeats": repeats, "branches": list(cfg.branches),
        "us_per_step": fig,
        "ratios": {key: fig[key]["best"] / fig[lo]["best"] for key in fig},
        "ratios_median": {key: fig[key]["median"] / fig[lo]["median"] for key in fig},
        "ratio": ratio, "target": BRANCHES_TARGET, "meets_target": ratio <= BRANCHES_TARGET,
        "start_us": {key: figures(v) for key, v in starts.items()},
    }


# -- part 2: state sizes ---------------------------------------------------------------------------
def _size_hook(data: dict[str, bytes], path: str, runner_key: str, parent_key: str,
               seen: list[tuple[int, int]]) -> Callable[[str, int], None]:
    """An ``on_checkpoint`` hook noting (runner's state bytes, parent's state bytes) at each of the runner
    branch's checkpoints (the branch saving is the one ``current_branch`` names)."""
    def hook(_iid: str, _step: int) -> None:
        if current_branch.get() == path:
            seen.append((len(data[runner_key]), len(data[parent_key])))
    return hook


async def part_sizes(cfg: ConcConfig) -> dict[str, Any]:
    """Bytes of the parent's saved state and of each branch's, with each number of live branches, noted at
    every checkpoint of the runner branch (InMemoryStateStore: the blobs as stored)."""
    k = max(cfg.memory_steps, 20)
    out: list[dict[str, Any]] = []
    for n in cfg.branches:
        backend = DurableBackend(InMemoryStateStore())
        data = backend.store._data  # type: ignore[attr-defined]
        runner_path = f"0.{n - 1}"
        parent_key = f"state:{INSTANCE}"
        runner_key = f"state:{branch_key(INSTANCE, runner_path)}"
        seen: list[tuple[int, int]] = []  # (runner's state bytes, parent's state bytes) at each runner checkpoint

        hook = _size_hook(data, runner_path, runner_key, parent_key, seen)
        program = workloads.fan_program
        runtime = program.runtime(backend, INSTANCE, on_checkpoint=hook)
        workloads.STAMPS.clear()
        paused = False
        try:
            await runtime.run(program, (n, k), {})
        except PauseForEventException:
            if n == 1:
                raise
            paused = True
        holds = [len(data[f"state:{branch_key(INSTANCE, f'0.{i}')}"]) for i in range(n - 1)]
        at_pause = len(data[parent_key])
        runner_sizes = [s for s, _ in seen[:-1]]  # the last one is the branch's end (its result, no stack)
        parent_sizes = [p for _, p in seen]
        want = finish(backend, n, k)
        got = await program(n, k, orchestration_backend=backend, instance_id=INSTANCE)
        if got != want:
            raise AssertionError(f"fan({n}, {k}) returned {got!r}, expected {want!r}")
        left = sorted(key for key in data if "/branch:" in key)
        out.append({
            "branches": n, "runner_checkpoints": len(seen), "runner_steps": k,
            "runner_bytes": {"first": runner_sizes[0], "last": runner_sizes[-1], "min": min(runner_sizes),
                             "max": max(runner_sizes), "end": seen[-1][0]},
            "parent_bytes_during": {"min": min(parent_sizes), "max": max(parent_sizes)},
            "parent_bytes_paused": at_pause if paused else None,
            "held_branch_bytes": {"n": len(holds), "min": min(holds, default=0), "max": max(holds, default=0),
                                  "total": sum(holds)},
            "branch_states_left_after_end": len(left),
            "parent_bytes_end": len(data[parent_key]),
        })
    flat = all(p["runner_bytes"]["max"] - p["runner_bytes"]["min"] <= 16
               and p["parent_bytes_during"]["max"] == p["parent_bytes_during"]["min"] for p in out)
    runner = [p["runner_bytes"]["max"] for p in out]
    return {"points": out, "flat_per_checkpoint": flat,
            "runner_bytes_ratio": runner[-1] / runner[0], "ok": flat and all(
                p["branch_states_left_after_end"] == 0 for p in out)}
