"""Statistics of samples: medians and percentiles (standard library only: the peers' children import it)."""

from __future__ import annotations

import statistics


def median(xs: list[float]) -> float:
    """The median of ``xs``; NaN when there is no sample (a figure that could not be taken)."""
    return statistics.median(xs) if xs else float("nan")


def percentile(xs: list[float], p: float) -> float:
    """The ``p``-th percentile (nearest rank) of ``xs``; NaN without samples."""
    if not xs:
        return float("nan")
    s = sorted(xs)
    k = max(0, min(len(s) - 1, int(round(p / 100 * len(s) + 0.5)) - 1))
    return s[k]


def percentile_by_index(xs: list[float], p: float) -> float:
    """The sample at ``p`` % of the sorted positions (``round(p / 100 * (n - 1))``): the peers' table uses it."""
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(p / 100 * (len(s) - 1))))]


def summary_ms(xs_s: list[float]) -> dict[str, float]:
    """Count, p50/p90/p99, min and max in ms of samples given in seconds."""
    ms = [x * 1e3 for x in xs_s]
    return {"n": len(ms), "p50_ms": percentile(ms, 50), "p90_ms": percentile(ms, 90), "p99_ms": percentile(ms, 99),
            "min_ms": min(ms) if ms else float("nan"), "max_ms": max(ms) if ms else float("nan")}
