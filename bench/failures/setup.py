"""Sizes, repeat counts and targets of the failure-handling benchmark."""

from __future__ import annotations

from dataclasses import dataclass

from ..common.environment import ROOT

DEFAULT_OUT = ROOT / "bench" / "results" / "failures.json"
INSTANCE = "x"
STATE_KEY = f"state:{INSTANCE}"
#: A retry policy that is never used may cost at most this much per step (µs), against a step without one.
POLICY_TARGET_US = 1.0


@dataclass(frozen=True)
class FailuresConfig:
    """Sizes and repeat counts of one run."""

    quick: bool
    n_steps: int          # steps per instance, part (a) and (b)
    repeats: int          # measured repeats per variant (best-of and median are reported)
    warmup: int
    fork_checkpoints: int  # checkpoints of the instance that is forked, part (c)
    fork_points: tuple[int, ...]  # the checkpoints forked from
    fork_repeats: int
    django: bool          # part (b) also on Django/SQLite, in a child process
    django_steps: int
    django_repeats: int


FULL = FailuresConfig(quick=False, n_steps=20_000, repeats=15, warmup=2, fork_checkpoints=100,
                      fork_points=(1, 50, 100), fork_repeats=201, django=True, django_steps=500, django_repeats=7)
QUICK = FailuresConfig(quick=True, n_steps=2_000, repeats=5, warmup=1, fork_checkpoints=100,
                       fork_points=(1, 50, 100), fork_repeats=21, django=True, django_steps=50, django_repeats=2)


def tiny(django: bool = False) -> FailuresConfig:
    """Sizes for the smoke test: every part runs, in about a second (without Django unless asked)."""
    return FailuresConfig(quick=True, n_steps=50, repeats=2, warmup=1, fork_checkpoints=10, fork_points=(1, 5, 10),
                          fork_repeats=3, django=django, django_steps=12, django_repeats=1)
