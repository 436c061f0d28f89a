"""Running the concurrency benchmark: the core parts in this process, the Django parts in children, the CLI."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from ..common.results import report
from ..core import machine
from . import django_part, fanout
from .measure import TMPFS, part_checkpoint, part_sizes
from .report import format_table
from .setup import DEFAULT_OUT, FULL, QUICK, ConcConfig

DESCRIPTION = ("Parallel branches and children: a branch's checkpoint with 1, 10 and 100 live branches, state "
               "sizes, and 1,000 children fanned out and in against 1,000 independent instances.")


async def _core(cfg: ConcConfig) -> dict[str, Any]:
    stores = ["memory", "disk"] + (["tmpfs"] if TMPFS is not None else [])
    return {"checkpoint": {store: await part_checkpoint(cfg, store) for store in stores},
            "sizes": await part_sizes(cfg)}


def run(cfg: ConcConfig) -> dict[str, Any]:
    """Every part of the suite with the sizes of ``cfg``; the JSON-ready results."""
    t0 = time.perf_counter()
    res: dict[str, Any] = {"meta": {**machine(), "quick": cfg.quick, "config": asdict(cfg)}}
    if cfg.core:
        res.update(asyncio.run(_core(cfg)))
    if cfg.django:
        res["django"] = {db: django_part.run_child(cfg, db) for db in cfg.django}
    if cfg.fanout_rounds:
        res["fanout"] = fanout.run_fanout(cfg)
    broke = [part for part in [*res.get("django", {}).values(), res.get("fanout", {})] if "error" in part]
    res["ok"] = res.get("sizes", {}).get("ok", True) and not broke
    res["meta"]["elapsed_s"] = time.perf_counter() - t0
    return res


def main(argv: list[str] | None = None, cfg: ConcConfig | None = None) -> dict[str, Any]:
    """``python -m bench concurrency [--quick] [--no-django] [--no-fanout] [--db sqlite,pg] [--out PATH]``."""
    argv = sys.argv[1:] if argv is None else argv
    if "--child" in argv:
        child = fanout if argv[argv.index("--child") + 1:][:1] == ["fanout"] else django_part
        child.child_main(argv)
        return {}
    ap = argparse.ArgumentParser(prog="python -m bench concurrency", description=DESCRIPTION)
    ap.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    ap.add_argument("--no-django", action="store_true", help="leave out the Django parts (checkpoint and fan-out)")
    ap.add_argument("--no-fanout", action="store_true", help="leave out the fan-out part (Celery, PostgreSQL)")
    ap.add_argument("--no-core", action="store_true", help="leave out the core parts (only the Django ones)")
    ap.add_argument("--db", default=None, help="databases of the Django checkpoint part (default sqlite,pg)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON output (default {DEFAULT_OUT})")
    args = ap.parse_args(argv)
    cfg = cfg or (QUICK if args.quick else FULL)
    if args.db is not None:
        cfg = replace(cfg, django=tuple(d for d in args.db.split(",") if d))
    if args.no_django:
        cfg = replace(cfg, django=(), fanout_rounds=0)
    if args.no_core:
        cfg = replace(cfg, core=False)
    if args.no_fanout:
        cfg = replace(cfg, fanout_rounds=0)
    res = run(cfg)
    report(res, format_table(res), args.out, check_ok=True)
    return res
