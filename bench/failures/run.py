"""Running the failure-handling benchmark: the core parts in this process, the Django part in a child, the CLI."""

from __future__ import annotations

import argparse
import asyncio
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from ..common.results import report
from ..core import machine
from .measure import part_fork, part_history, part_policy
from .report import format_table
from .setup import DEFAULT_OUT, FULL, QUICK, FailuresConfig

DESCRIPTION = "Failure handling: the cost of a retry policy, of checkpoint history, and of a fork."


async def _core(cfg: FailuresConfig) -> dict[str, Any]:
    return {"policy": await part_policy(cfg), "history": await part_history(cfg), "fork": await part_fork(cfg)}


def run(cfg: FailuresConfig) -> dict[str, Any]:
    """Every part of the suite with the sizes of ``cfg``; the JSON-ready results."""
    t0 = time.perf_counter()
    res: dict[str, Any] = {"meta": {**machine(), "quick": cfg.quick, "config": asdict(cfg)}}
    res.update(asyncio.run(_core(cfg)))
    if cfg.django:
        from .django_part import run_child

        res["django"] = run_child(cfg)
    res["meta"]["elapsed_s"] = time.perf_counter() - t0
    return res


def main(argv: list[str] | None = None, cfg: FailuresConfig | None = None) -> dict[str, Any]:
    """``python -m bench failures [--quick] [--no-django] [--out PATH]``: run, print the table, write the JSON."""
    import sys

    argv = sys.argv[1:] if argv is None else argv
    if "--child" in argv:
        from .django_part import child_main

        child_main(argv)
        return {}
    ap = argparse.ArgumentParser(prog="python -m bench failures", description=DESCRIPTION)
    ap.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    ap.add_argument("--no-django", action="store_true", help="leave out the Django/SQLite part")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON output (default {DEFAULT_OUT})")
    args = ap.parse_args(argv)
    cfg = cfg or (QUICK if args.quick else FULL)
    if args.no_django:
        cfg = replace(cfg, django=False)
    res = run(cfg)
    report(res, format_table(res), args.out)
    return res
