"""The chart of the peer benchmark: resume cost against K, and per-step cost against the floor.

``draw(results, path)`` takes the JSON of ``python -m bench peers`` and writes
a PNG with two panels: (1) resume after K completed steps, ms, for every
system and database, both axes logarithmic, so a flat line (a checkpoint) and
a rising one (replay) are told apart at a glance; (2) µs per step of every
system next to its floor (one UPDATE+COMMIT of 2 KB on its database, an
fsync'd file write on disk, a plain ``await`` in memory), logarithmic. Systems
without a figure are named under the panel with "n/a". Needs matplotlib
(``.venv-bench``); ``python -m bench.chart results.json out.png`` redraws a chart.
"""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path
from typing import Any

#: One colour per family, one line style per database.
COLOURS = {"ours": "#1b7837", "dbos": "#2166ac", "dd": "#b2182b", "seed": "#8c510a"}
STYLES = {"memory": (":", "o"), "disk": ("-.", "D"), "sqlite": ("--", "s"), "pg": ("-", "^")}
DB_NAMES = {"memory": "memory", "disk": "disk", "sqlite": "SQLite", "pg": "PostgreSQL"}


def _num(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:.3g}"


def _name(s: dict[str, Any]) -> str:
    return f"{s['label']} / {DB_NAMES.get(s['db'], s['db'])}"


def draw(res: dict[str, Any], path: Path | str) -> Path:
    """Write the two-panel PNG of ``res`` to ``path``; return the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    systems = res["systems"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(16, 8.2), gridspec_kw={"width_ratios": [1, 1.15]})
    missing: list[str] = []

    for s in systems:
        rs = s.get("resume", {})
        if "na" in rs:
            missing.append(_name(s))
            continue
        ks = [p["k"] for p in rs["points"]]
        ms = [p["ms"] for p in rs["points"]]
        ls, marker = STYLES.get(s["db"], ("-", "o"))
        ax1.plot(ks, ms, linestyle=ls, marker=marker, color=COLOURS.get(s["family"], "grey"), label=_name(s),
                 linewidth=1.8, markersize=6)
    ax1.set_xscale("log")
    ax1.set_yscale("log")
    ax1.set_xlabel("K = steps completed before the crash / pause")
    ax1.set_ylabel("resume: event + continue + 1 step, ms (log)")
    ax1.set_title("Resume cost against K (flat = checkpoint, rising = replay)")
    ax1.grid(True, which="both", alpha=0.3)
    ax1.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=3)

    rows = [s for s in systems if "na" not in s.get("per_step", {})]
    names = [_name(s) for s in rows]
    y = list(range(len(rows)))
    step = [s["per_step"]["us"] for s in rows]
    floor = [s["per_step"]["floor_us"] for s in rows]
    ax2.barh([i + 0.2 for i in y], step, height=0.4, color=[COLOURS.get(s["family"], "grey") for s in rows],
             label="per step")
    ax2.barh([i - 0.2 for i in y], floor, height=0.4, color="#bbbbbb", label="floor of its store")
    for i, (a, b) in enumerate(zip(step, floor)):
        ax2.text(a * 1.12, i + 0.2, f"{_num(a)} µs = {a / b:,.1f}x floor ({_num(b)})", va="center", fontsize=8)
    ax2.set_yticks(y)
    ax2.set_yticklabels(names, fontsize=8)
    ax2.invert_yaxis()
    ax2.set_xscale("log")
    if step:
        ax2.set_xlim(min(floor + step) / 2, max(floor + step) * 300)
    ax2.set_xlabel("µs per step (log); floor: UPDATE 2 KB + COMMIT / fsync'd file / plain await")
    ax2.set_title("Per-step overhead against the floor")
    ax2.grid(True, axis="x", which="both", alpha=0.3)
    ax2.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=2)
    no_figures = sorted({_name(s) for s in systems if any("na" in s.get(f, {}) for f in ("per_step", "resume"))})
    if no_figures:
        reasons = "; ".join(f"{n}" for n in no_figures)
        fig.text(0.01, 0.01, textwrap.fill("n/a (reasons in the table and the JSON): " + reasons, 200),
                 fontsize=8, va="bottom")

    meta = res["meta"]
    fig.suptitle(f"durable vs peers ({'quick' if meta['quick'] else 'full'} run, {meta['date_utc']}, "
                 f"{meta['machine']['nproc']} cores, Python {meta['machine']['python']}, "
                 f"load {meta['load_start']} -> {meta['load_end']})", fontsize=10)
    fig.tight_layout(rect=(0, 0.05, 1, 0.96))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


if __name__ == "__main__":
    draw(json.loads(Path(sys.argv[1]).read_text()), sys.argv[2])
