"""The concurrency benchmark's results as a plain-text table."""

from __future__ import annotations

from typing import Any


def _cols(*cells: str) -> str:
    return "".join(c.rjust(13) for c in cells)


def _ok(flag: bool) -> str:
    return "PASS" if flag else "MISS"


def _label(key: str) -> str:
    return "no group (instance)" if key == "solo" else f"{int(key):,} live branch{'es' if key != '1' else ''}"


def _checkpoint_rows(part: dict[str, Any], unit: str = "µs") -> list[tuple[str, str]]:
    rows = [("variant", _cols(f"best {unit}", f"median {unit}", "spread", "ratio best", "ratio med"))]
    for key, fig in part["us_per_step"].items():
        rows.append((_label(key), _cols(f"{fig['best']:,.1f}", f"{fig['median']:,.1f}", f"{fig['spread']:.0%}",
                                        f"{part['ratios'][key]:.2f}x", f"{part['ratios_median'][key]:.2f}x")))
    lo, hi = part["branches"][0], part["branches"][-1]
    rows.append((f"{hi} branches / {lo} (best)",
                 f"{part['ratio']:.2f}x  target <= {part['target']:g}x: {_ok(part['meets_target'])}"))
    starts = part.get("start_us")
    if starts:
        rows.append(("start to the runner's first step (best)", "  ".join(
            f"{_label(key).split(' live')[0]}: {fig['best'] / 1e3:,.2f} ms" for key, fig in starts.items())))
    return rows


def format_table(res: dict[str, Any]) -> str:
    """Print-ready table of :func:`bench.concurrency.run.run`'s results."""
    meta = res["meta"]
    rows: list[tuple[str, str]] = []

    def section(title: str) -> None:
        rows.append(("", ""))
        rows.append((f"== {title}", ""))

    names = {"memory": "InMemoryStateStore", "disk": "DiskStateStore (fsync, signed)",
             "tmpfs": "DiskStateStore on tmpfs (no device fsync, signed)"}
    for store, part in res.get("checkpoint", {}).items():
        section(f"1. a branch's step + checkpoint with N live branches, core, {names[store]} "
                f"(runner: {part['runner_steps']:,} steps; median gap per run, best / median of {part['repeats']})")
        rows += _checkpoint_rows(part)
    for db, part in res.get("django", {}).items():
        if "skipped" in part or "error" in part:
            why = part.get("skipped") or part.get("error") or ""
            rows.append((f"Django/{db}", ("skipped: " if "skipped" in part else "ERROR: ")
                         + why.strip().splitlines()[-1][:110]))
            continue
        section(f"1'. the same on Django/{db} ({part['storage']}; runner: {part['runner_steps']:,} steps, "
                f"best / median of {part['repeats']})")
        rows += _checkpoint_rows(part)
        rows.append(("rows written per runner step (statements)", str(part.get("statements_per_step", "-"))))

    sz = res.get("sizes", {"points": []})
    if sz["points"] or any(part.get("rows") for part in res.get("django", {}).values()):
        section("2. saved state sizes (bytes; core: noted at every checkpoint of the running branch)")
    if sz["points"]:
        rows.append(("live branches", _cols("runner", "runner end", "parent run", "parent pause", "each held",
                                            "held total")))
    for p in sz["points"]:
        rb, held = p["runner_bytes"], p["held_branch_bytes"]
        paused = "-" if p["parent_bytes_paused"] is None else f"{p['parent_bytes_paused']:,}"
        rows.append((f"{p['branches']:,}", _cols(f"{rb['min']:,}-{rb['max']:,}", f"{rb['end']:,}",
                                                 f"{p['parent_bytes_during']['max']:,}", paused,
                                                 f"{held['max']:,}" if held["n"] else "-", f"{held['total']:,}")))
    if sz["points"]:
        rows += [("runner state: flat per checkpoint, parent unchanged",
                  "yes" if sz["flat_per_checkpoint"] else "NO"),
                 ("runner state at 100 / at 1 branch", f"{sz['runner_bytes_ratio']:.2f}x")]
    for db, part in res.get("django", {}).items():
        rs = part.get("rows")
        if rs:
            steps = " and ".join(f"{s:,}" for s in rs["runner_steps"])
            rows.append((f"Django/{db} rows at {rs['branches']} branches",
                         f"instance state {rs['instance_bytes']:,} B, runner branch (paused after {steps} steps) "
                         f"{' / '.join(f'{b:,}' for b in rs['runner_bytes']['by_steps'])} B, each held "
                         f"{rs['held_bytes_max']:,} B ({rs['branch_rows']} branch rows)"))

    fo = res.get("fanout")
    if fo is not None:
        if "skipped" in fo or "error" in fo:
            why = fo.get("skipped") or fo.get("error") or ""
            rows.append(("fan-out", ("skipped: " if "skipped" in fo else "ERROR: ")
                         + why.strip().splitlines()[-1][:110]))
        else:
            section(f"3. {fo['n_children']:,} children of one parent vs {fo['n_children']:,} independent instances "
                    f"({fo['child_steps']} steps each; {fo['workers']} Celery workers, PostgreSQL; "
                    f"{fo['rounds']} round(s))")
            rows.append(("variant", _cols("best s", "median s", "per s (best)")))
            for key, label in (("children", "fan-out/fan-in (start_child + gather)"),
                               ("independent", "independent instances (dd.start)")):
                f = fo[key]
                rows.append((label, _cols(f"{f['best']:.2f}", f"{f['median']:.2f}",
                                          f"{fo['n_children'] / f['best']:,.0f}")))
            ph = fo.get("phases_best")
            if ph:
                rows.append(("  of the best fan-out (row timestamps)",
                             f"starting the children {ph['spawn_s']:.2f} s, children ending after the last start "
                             f"{ph['children_after_spawn_s']:.2f} s, parent's end after theirs "
                             f"{ph['parent_after_children_s']:.2f} s"))
            rows.append(("children / independent (best)",
                         f"{fo['ratio']:.2f}x (medians {fo['ratio_median']:.2f}x)  target <= {fo['target']:g}x: "
                         f"{_ok(fo['meets_target'])}"))

    width = max(len(k) for k, v in rows if v) + 2
    head = (f"concurrency benchmark  {'(quick)' if meta['quick'] else '(full)'}  {meta['date_utc']}  "
            f"Python {meta['python']}  nproc={meta['nproc']}  git {meta['git']}  {meta['elapsed_s']:.1f} s")
    lines = [head]
    for k, v in rows:
        lines.append(k if not v else f"  {k.ljust(width)}{v}")
    return "\n".join(lines)
