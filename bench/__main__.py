"""``python -m bench [--quick] [--out PATH] [--profile]``: run the core benchmark.

Prints a table and writes the figures as JSON (default
``bench/results/core.json``). ``--quick`` is a smoke run with small sizes.
``--profile`` prints a cProfile of the durable step loop instead.

``python -m bench django [--quick] [--out PATH] [--profile]`` runs the
benchmark of the Django app instead (:mod:`bench.django_bench`; needs
PostgreSQL and Redis, writes ``bench/results/django.json``). The other
suites: ``peers`` (against DBOS, django-durable and the seed package),
``faults`` (fault injection: killed workers, broker restart), ``failures`` (what retry policies, checkpoint
history and forks cost), ``load``
(100,000 waiting instances on PostgreSQL), ``soak`` (1,000,000 one-step
processes through 2 workers: memory, throughput, rows left after
``durable_purge``) and ``telemetry`` (per-step cost with spans, metrics and
logs on against off; :mod:`bench.telemetry`); see ``bench/README.md``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from . import core
from .common.results import report

#: ``python -m bench <name> ...`` runs ``bench.<module>.main(argv)``.
SUITES = {"django": "django_bench", "peers": "peers", "faults": "faults", "load": "load", "soak": "soak",
          "telemetry": "telemetry", "schedules": "schedules", "progress": "progress_bench",
          "flow": "flowcontrol", "failures": "failures", "concurrency": "concurrency"}

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "core.json"


def _us(x: float) -> str:
    return f"{x:,.2f} µs"


def _ms(x: float) -> str:
    return f"{x:,.3f} ms"


def _bytes(n: int) -> str:
    return f"{n:,} B"


def _ok(flag: bool) -> str:
    return "PASS" if flag else "MISS"


def _cols(*cells: str) -> str:
    return "".join(c.rjust(12) for c in cells)


def format_table(res: dict[str, Any]) -> str:
    """The results as a plain-text table."""
    meta, ps, fl = res["meta"], res["per_step"], res["per_step"]["floor"]
    rs, cp, ns = res["resume"], res["compile"], res["nested"]
    rows: list[tuple[str, str]] = []

    def section(title: str) -> None:
        rows.append(("", ""))
        rows.append((f"== {title}", ""))

    section(f"1. per-step overhead (N={ps['n_steps']:,} steps, {ps['locals_in_frame']} locals, "
            f"median of {ps['repeats']})")
    rows += [
        ("plain asyncio", _us(ps["plain_us_per_step"]) + "/step"),
        ("durable, InMemoryStateStore", _us(ps["durable_memory_us_per_step"]) + "/step"),
        ("overhead (durable - plain)",
         f"{_us(ps['overhead_us_per_step'])}/step  target <= {ps['target_overhead_us']:.0f} µs: "
         f"{_ok(ps['meets_target'])}"),
        ("ratio durable / plain", f"{ps['ratio']:,.1f}x"),
        ("  of which runtime (no-op backend - plain)", _us(ps["runtime_share_us_per_step"]) + "/step"),
        ("  of which pickling + store (memory - no-op)", _us(ps["save_share_us_per_step"]) + "/step"),
        ("checkpoints per step", f"{ps['checkpoints_per_step']:.4f}"),
        (f"durable, DiskStateStore (fsync, N={ps['disk_steps']})", _us(ps["durable_disk_us_per_step"]) + "/step"),
        ("checkpoint blob mid-loop", _bytes(ps["checkpoint_bytes"])),
        (f"floor: pickle dumps+loads, {fl['locals_values']}-value dict", _us(fl["pickle_roundtrip_us"])),
        ("floor: pickle dumps / loads", f"{_us(fl['pickle_dumps_us'])} / {_us(fl['pickle_loads_us'])}"),
        ("floor: cloudpickle.dumps", _us(fl["cloudpickle_dumps_us"])),
        (f"real state ({_bytes(fl['state_bytes'])}): dumps / loads",
         f"{_us(fl['state_dumps_us'])} / {_us(fl['state_loads_us'])}"),
        ("real state: DurableBackend.save_state (memory)", _us(fl["backend_save_state_us"])),
    ]

    section(f"2. resume after K steps (median of {rs['repeats']}; resume = publish event + run to completion)")
    rows.append(("K", _cols("resume µs", "publish µs", "run µs", "state B", "built in s")))
    for p in rs["points"]:
        rows.append((f"{p['k']:,}", _cols(f"{p['resume_us']:,.1f}", f"{p['publish_us']:,.1f}",
                                          f"{p['continue_us']:,.1f}", f"{p['state_bytes']:,}", f"{p['build_s']:.2f}")))
    rows += [
        (f"resume ratio K={rs['k_values'][-1]:,} / K={rs['k_values'][0]:,}",
         f"{rs['time_ratio_kmax_kmin']:.2f}x  target <= {rs['target_ratio']}x: {_ok(rs['meets_target'])}"),
        ("state size ratio", f"{rs['size_ratio_kmax_kmin']:.3f}x"),
    ]

    section(f"3. compile ({cp['function']}, {cp['source_lines']} lines, {cp['blocks']} blocks)")
    rows.append(("fresh DurableAstTransformer().compile", f"{_ms(cp['ms'])} (min {_ms(cp['ms_min'])})"))

    section(f"4. nested durable calls ({ns['steps_at_bottom']} steps at the bottom; ms)")
    rows.append(("depth", _cols("checkpoint", "seed", "state B", "load", "resume", "whole run")))
    for p in ns["points"]:
        seed = p["seed_checkpoint_ms"]
        rows.append((f"{p['depth']:,}", _cols(f"{p['checkpoint_ms']:.3f}", "-" if seed is None else f"{seed:g}",
                                             f"{p['state_bytes']:,}", f"{p['load_ms']:.3f}", f"{p['resume_ms']:.3f}",
                                             f"{p['run_ms']:.3f}")))
    rows.append(("seed state after 1,000 calls", _bytes(ns["seed_state_bytes_at_1000"])))

    width = max(len(k) for k, v in rows if v) + 2
    head = (f"durable core benchmark  {'(quick)' if meta['quick'] else '(full)'}  {meta['date_utc']}  "
            f"Python {meta['python']}  nproc={meta['nproc']}  git {meta['git']}  {meta['elapsed_s']:.1f} s")
    lines = [head]
    for k, v in rows:
        lines.append(k if not v else f"  {k.ljust(width)}{v}")
    return "\n".join(lines)


def profile_steps(n: int = 20000) -> None:
    """Print where the time of ``n`` durable steps goes (cProfile, top 25 by own time)."""
    import asyncio
    import cProfile
    import pstats

    from durable import make_durable

    from . import workloads

    program = make_durable(workloads.many_steps)

    async def go() -> None:
        await program(n, orchestration_backend=core._backend(), instance_id="p")

    asyncio.run(go())
    prof = cProfile.Profile()
    prof.runcall(asyncio.run, go())
    pstats.Stats(prof).sort_stats("tottime").print_stats(25)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, print the table, write the JSON; return the results."""
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in SUITES:
        import importlib

        return importlib.import_module(f".{SUITES[argv[0]]}", __package__).main(argv[1:])
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, for a CI smoke run (< 20 s)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON output (default {DEFAULT_OUT})")
    ap.add_argument("--profile", action="store_true", help="print a cProfile of the step loop and exit")
    args = ap.parse_args(argv)
    if args.profile:
        profile_steps()
        return {}
    res = core.run(quick=args.quick)
    report(res, format_table(res), args.out)
    return res


if __name__ == "__main__":
    main()
