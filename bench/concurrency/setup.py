"""Sizes, repeat counts and targets of the concurrency benchmark."""

from __future__ import annotations

from dataclasses import dataclass

from ..common.environment import ROOT

DEFAULT_OUT = ROOT / "bench" / "results" / "concurrency.json"
INSTANCE = "x"
#: A checkpoint with 100 live branches may cost at most this many times the one with 1 (best of the repeats).
BRANCHES_TARGET = 2.0
#: 1,000 children fanned out and in may take at most this many times as long as 1,000 independent instances.
FANOUT_TARGET = 1.3


@dataclass(frozen=True)
class ConcConfig:
    """Sizes and repeat counts of one run."""

    quick: bool
    branches: tuple[int, ...]  # live branches of part 1 (the first is the reference)
    memory_steps: int          # steps of the runner branch, InMemoryStateStore
    disk_steps: int            # steps of the runner branch, DiskStateStore (fsync per checkpoint)
    repeats: int               # measured repeats per variant (best-of and median are reported)
    disk_repeats: int
    warmup: int
    skip: int                  # the runner's first gaps left out of each run (caches, the others' start)
    django: tuple[str, ...]    # databases of the Django part ("sqlite", "pg"); () leaves it out
    django_steps: int
    django_repeats: int
    children: int              # part 3: children of one parent, and as many independent instances
    child_steps: int           # checkpointed steps of each child
    workers: int               # Celery workers of part 3
    fanout_rounds: int         # part 3 rounds (fan-out and independent alternate); 0 leaves it out
    core: bool = True          # parts 1 and 2 on the core (False: only the Django parts)


FULL = ConcConfig(quick=False, branches=(1, 10, 100), memory_steps=2_000, disk_steps=200, repeats=15,
                  disk_repeats=7, warmup=2, skip=5, django=("sqlite", "pg"), django_steps=200, django_repeats=7,
                  children=1_000, child_steps=3, workers=2, fanout_rounds=3)
QUICK = ConcConfig(quick=True, branches=(1, 10, 100), memory_steps=500, disk_steps=50, repeats=5, disk_repeats=3,
                   warmup=1, skip=3, django=("sqlite", "pg"), django_steps=40, django_repeats=2, children=100,
                   child_steps=2, workers=2, fanout_rounds=1)


def tiny(django: tuple[str, ...] = (), fanout: bool = False) -> ConcConfig:
    """Sizes for the smoke test: every part asked for runs, in seconds."""
    return ConcConfig(quick=True, branches=(1, 10, 100), memory_steps=30, disk_steps=12, repeats=2, disk_repeats=1,
                      warmup=1, skip=2, django=django, django_steps=12, django_repeats=1, children=20, child_steps=1,
                      workers=2, fanout_rounds=1 if fanout else 0)
