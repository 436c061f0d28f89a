"""The failure-handling benchmark's results as a plain-text table."""

from __future__ import annotations

from typing import Any


def _us(x: float) -> str:
    return f"{x:,.2f} µs"


def _cols(*cells: str) -> str:
    return "".join(c.rjust(13) for c in cells)


def _ok(flag: bool) -> str:
    return "PASS" if flag else "MISS"


def format_table(res: dict[str, Any]) -> str:
    """Print-ready table of :func:`bench.failures.run.run`'s results."""
    meta, pol, hist, fork = res["meta"], res["policy"], res["history"], res["fork"]
    rows: list[tuple[str, str]] = []

    def section(title: str) -> None:
        rows.append(("", ""))
        rows.append((f"== {title}", ""))

    section(f"a. retry policy: µs per step (N={pol['n_steps']:,} steps per instance, best / median of "
            f"{pol['repeats']})")
    rows.append(("variant", _cols("memory best", "median", "no-op best", "median")))
    names = {"nested": "nested durable call", "bare": "durable.step, no policy",
             "retried": "durable.step(retry=policy)", "default": "make_durable(retry=policy)"}
    fig = pol["us_per_step"]
    for key, label in names.items():
        m, z = fig[f"{key}/memory"], fig[f"{key}/null"]
        rows.append((label, _cols(f"{m['best']:.2f}", f"{m['median']:.2f}", f"{z['best']:.2f}", f"{z['median']:.2f}")))
    rows += [
        ("plain asyncio (same loop, native)", _us(fig["plain"]["best"])),
        ("policy cost (retried - no policy, memory)",
         f"{_us(pol['policy_cost_us'])}/step  target <= {pol['target_us']:.0f} µs: {_ok(pol['meets_target'])}"),
        ("policy cost on the no-op backend", _us(pol["policy_cost_null_us"]) + "/step"),
        ("program default policy cost", _us(pol["default_policy_cost_us"]) + "/step"),
        ("policy cost, medians", _us(pol["policy_cost_median_us"]) + "/step"),
        ("checkpoints per step", f"{pol['checkpoints_per_step']:.4f}"),
    ]

    section(f"b. checkpoint history, core (InMemoryStateStore, N={hist['n_steps']:,}, best / median of "
            f"{hist['repeats']})")
    rows.append(("history", _cols("µs/step", "median", "ratio", "kept")))
    hf = hist["us_per_step"]
    off = hf["off"]["best"]
    for key, label in (("off", "off (None)"), ("10", "history=10"), ("all", "history=True")):
        rows.append((label, _cols(f"{hf[key]['best']:.2f}", f"{hf[key]['median']:.2f}",
                                  f"{hf[key]['best'] / off:.2f}x", f"{hist['kept'][key]:,}")))
    rows += [
        (f"bytes per stored checkpoint ({hist['history_blobs']:,} kept)",
         f"{hist['history_bytes_per_checkpoint']:,.0f} B (min {hist['history_bytes_min']:,}, "
         f"max {hist['history_bytes_max']:,})"),
        ("state blob at the end (completed)", f"{hist['state_blob_bytes']:,} B"),
    ]
    dj = res.get("django")
    if dj is not None:
        if "skipped" in dj:
            rows.append(("Django/SQLite", "skipped: " + dj["skipped"].strip().splitlines()[-1][:100]))
        else:
            section(f"b'. checkpoint history, Django/SQLite (N={dj['n_steps']:,}, best / median of {dj['repeats']})")
            rows.append(("history", _cols("µs/step", "median", "ratio", "kept")))
            df = dj["us_per_step"]
            for key, label in (("off", "off (None)"), ("10", "history=10"), ("all", "history=True")):
                rows.append((label, _cols(f"{df[key]['best']:.1f}", f"{df[key]['median']:.1f}",
                                          f"{df[key]['best'] / df['off']['best']:.2f}x", f"{dj['kept'][key]:,}")))
            per = dj["history_bytes_per_checkpoint"]
            rows.append(("bytes per stored checkpoint row", "-" if per is None else f"{per:,.0f} B"))

    section(f"c. fork (instance with {fork['checkpoints']} checkpoints; median of {fork['repeats']})")
    rows.append(("from checkpoint", _cols("fork µs", "best µs", "run on ms")))
    for p in fork["points"]:
        rows.append((f"{p['step']}", _cols(f"{p['fork_us']:,.1f}", f"{p['fork_us_best']:,.1f}",
                                           f"{p['run_to_end_ms']:.3f}")))
    rows.append(("list_checkpoints", _us(fork["list_checkpoints_us"])))

    width = max(len(k) for k, v in rows if v) + 2
    head = (f"failure handling benchmark  {'(quick)' if meta['quick'] else '(full)'}  {meta['date_utc']}  "
            f"Python {meta['python']}  nproc={meta['nproc']}  git {meta['git']}  {meta['elapsed_s']:.1f} s")
    lines = [head]
    for k, v in rows:
        lines.append(k if not v else f"  {k.ljust(width)}{v}")
    return "\n".join(lines)
