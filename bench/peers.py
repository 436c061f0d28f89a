"""``python -m bench peers [--quick] [--only ours,dbos,dd,seed]``: this project against its peers.

Runs every system in a child process of its own (``bench/peer_*.py``; see
``bench/peer_common.py`` for why), one after the other on the same machine,
databases and sizes, collects their JSON, prints a table, writes
``bench/results/peers.json`` and draws ``bench/results/peers.png``
(:mod:`bench.chart`). Systems: this project's core (memory, disk) and
durable_django (SQLite, PostgreSQL); DBOS Transact (SQLite, PostgreSQL);
django-durable (SQLite, PostgreSQL); the seed package durable-python 0.1.x
(memory, disk). A system that cannot run here, or that returns a wrong
result, gets "n/a" and the reason instead of figures.

The peers need Python >= 3.13 (django-durable) and their packages: run it
with ``.venv-bench/bin/python`` (``make bench-peers`` builds that venv from
``bench/requirements-peers.txt``). ``--only ours`` runs with any venv of this
project.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .common.environment import git_revision, versions
from .common.results import report

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DEFAULT_OUT = HERE / "results" / "peers.json"

#: (family, child script, database, label) in the order they run and are shown.
CHILDREN = [
    ("ours", "peer_ours.py", "memory", "ours: core"),
    ("ours", "peer_ours.py", "disk", "ours: core"),
    ("ours", "peer_ours.py", "sqlite", "ours: durable_django"),
    ("ours", "peer_ours.py", "pg", "ours: durable_django"),
    ("dbos", "peer_dbos.py", "sqlite", "DBOS Transact"),
    ("dbos", "peer_dbos.py", "pg", "DBOS Transact"),
    ("dd", "peer_dd.py", "sqlite", "django-durable"),
    ("dd", "peer_dd.py", "pg", "django-durable"),
    ("seed", "peer_seed.py", "memory", "seed: durable-python"),
    ("seed", "peer_seed.py", "disk", "seed: durable-python"),
]
FAMILIES = ("ours", "dbos", "dd", "seed")
#: What each family needs importable in the venv, and the Python it needs.
NEEDS = {"dbos": ("dbos", "pysqlite3"), "dd": ("django_durable",), "seed": ()}
CHILD_TIMEOUT_S = 3600
FIGURES = ("per_step", "start", "latency", "resume")


def _importable(mod: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(mod) is not None


def seed_path() -> Path:
    """Where the seed package is installed (apart, because its top-level package is also ``durable``)."""
    return Path(os.environ.get("PEERS_SEED_PATH") or Path(sys.prefix) / "seed")


def _pg_up() -> str:
    try:
        import psycopg

        with psycopg.connect(host="127.0.0.1", port=5432, user="postgres", dbname="postgres", connect_timeout=3) as c:
            return c.execute("SHOW server_version").fetchone()[0]
    except Exception as exc:  # the reason goes into the table
        return f"unreachable: {type(exc).__name__}"


def why_not(family: str, db: str, pg: str) -> str:
    """Why a child cannot run in this environment, or ""."""
    if db == "pg" and pg.startswith("unreachable"):
        return f"PostgreSQL on 127.0.0.1:5432 {pg}"
    if family == "dd" and sys.version_info < (3, 13):
        return "django-durable 0.1.1 needs Python >= 3.13 (run with .venv-bench: make bench-peers)"
    if family == "seed":
        if sys.version_info < (3, 12):
            return "durable-python needs Python >= 3.12 (run with .venv-bench: make bench-peers)"
        if not (seed_path() / "durable" / "transform.py").exists():
            return f"durable-python is not installed in {seed_path()} (make bench-peers installs it there)"
    for mod in NEEDS.get(family, ()):
        if not _importable(mod):
            return f"package {mod!r} is not installed in this venv (make bench-peers builds .venv-bench)"
    return ""


def run_child(family: str, script: str, db: str, quick: bool, workdir: Path) -> dict[str, Any]:
    """Run one child; its JSON, or n/a for every figure with the reason it failed."""
    out = workdir / f"{family}-{db}.json"
    cmd = [sys.executable, str(HERE / script), "--db", db, "--workdir", str(workdir), "--out", str(out)]
    if quick:
        cmd.append("--quick")
    env = dict(os.environ)
    if family == "seed":
        env["PYTHONPATH"] = str(seed_path())
    else:
        env.pop("PYTHONPATH", None)
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, env=env, cwd=str(workdir), capture_output=True, text=True, timeout=CHILD_TIMEOUT_S)
        failed = "" if proc.returncode == 0 and out.exists() else (
            (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1][:300])
    except subprocess.TimeoutExpired:
        failed = f"did not finish in {CHILD_TIMEOUT_S} s"
        proc = None
    elapsed = time.perf_counter() - t0
    if failed:
        if proc is not None:
            (workdir / f"{family}-{db}.stderr").write_text(proc.stderr)
        return {fig: {"na": f"the run failed: {failed}"} for fig in FIGURES} | {"elapsed_s": elapsed}
    res = json.loads(out.read_text())
    res["elapsed_s"] = elapsed
    return res


def _versions() -> dict[str, str]:
    out = versions(("durable-django", "dbos", "django-durable", "Django", "SQLAlchemy", "psycopg", "pysqlite3-binary",
                    "cloudpickle", "matplotlib"), missing="not installed")
    meta = seed_path().glob("durable_python-*.dist-info")
    out["durable-python"] = next((p.name.removesuffix(".dist-info").split("-")[1] for p in meta), "not installed")
    return out


def _machine() -> dict[str, Any]:
    cpu = ""
    try:
        cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "")
    except OSError:
        pass
    return {"nproc": os.cpu_count(), "cpu": cpu, "platform": platform.platform(), "python": platform.python_version(),
            "git": git_revision(dirty_paths=()) or ""}


# -- the table ----------------------------------------------------------------
def _fmt(x: float | None, digits: int = 3) -> str:
    if x is None:
        return "-"
    if x >= 100:
        return f"{x:,.0f}"
    if x >= 10:
        return f"{x:,.1f}"
    return f"{x:,.{digits}g}"


def _row(cells: list[str], widths: list[int]) -> str:
    return "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))


def format_table(res: dict[str, Any]) -> str:
    """The results as plain-text tables, n/a reasons listed below them."""
    meta, systems = res["meta"], res["systems"]
    ks = meta["k_values"]
    lines = [f"peer benchmark  {'(quick)' if meta['quick'] else '(full)'}  {meta['date_utc']}  "
             f"Python {meta['machine']['python']}  nproc={meta['machine']['nproc']}  git {meta['machine']['git']}  "
             f"load {meta['load_start']} -> {meta['load_end']}  {meta['elapsed_s']:.0f} s", ""]
    notes: list[str] = []
    refs: dict[tuple[str, str, str], int] = {}

    def na_ref(s: dict[str, Any], reason: str) -> str:
        key = (s["label"], s["db"], reason)
        if key not in refs:
            refs[key] = len(notes) + 1
            notes.append(f"[{refs[key]}] {s['label']} ({s['db']}): {reason}")
        return f"n/a[{refs[key]}]"

    def cell(s: dict[str, Any], fig: str, text: str) -> str:
        f = s.get(fig, {})
        return na_ref(s, f["na"]) if "na" in f else text

    head = ["system", "db", "step µs", "floor µs", "x floor", "plain µs", "starts/s", "event p50 ms", "p90 ms"]
    body = []
    for s in systems:
        ps, st, lt = s.get("per_step", {}), s.get("start", {}), s.get("latency", {})
        ok = "na" not in ps
        body.append([s["label"], s["db"],
                     cell(s, "per_step", _fmt(ps.get("us"))),
                     _fmt(ps.get("floor_us")) if ok else "-",
                     f"{ps['us'] / ps['floor_us']:,.1f}x" if ok and ps.get("floor_us") else "-",
                     _fmt(ps.get("plain_us")) if ok else "-",
                     cell(s, "start", _fmt(st.get("per_s"))),
                     cell(s, "latency", _fmt(lt.get("p50_ms"))),
                     _fmt(lt.get("p90_ms")) if "na" not in lt else "-"])
    widths = [max(len(r[i]) for r in [head] + body) for i in range(len(head))]
    lines += ["== per step, start rate, event -> resume", _row(head, widths)] + [_row(r, widths) for r in body]

    head2 = ["system", "db"] + [f"resume K={k:,} ms" for k in ks] + [f"state K={k:,} B" for k in ks] + \
        [f"K={ks[-1]:,}/K={ks[0]:,}"]
    body2: list[list[str]] = []
    lines_extra: list[str] = []
    for s in systems:
        rs = s.get("resume", {})
        if "na" in rs:
            body2.append([s["label"], s["db"], cell(s, "resume", "n/a")] + ["-"] * (2 * len(ks)))
            continue
        pts = {p["k"]: p for p in rs["points"]}
        na_k = rs.get("na_k", {})
        ms = [_fmt(pts[k]["ms"]) if k in pts else na_ref(s, na_k[str(k)]) if str(k) in na_k else "-" for k in ks]
        sb = [f"{pts[k]['state_bytes']:,}" if k in pts else "-" for k in ks]
        ratio = pts[ks[-1]]["ms"] / pts[ks[0]]["ms"] if ks[-1] in pts and ks[0] in pts else None
        extra = [p for p in rs["points"] if p["k"] not in ks]  # a system's own extra K (the seed's K=100)
        body2.append([s["label"], s["db"]] + ms + sb + [f"{ratio:,.1f}x" if ratio else "-"])
        for p in extra:
            lines_extra.append(f"  {s['label']} ({s['db']}): resume at K={p['k']:,}: {_fmt(p['ms'])} ms, "
                               f"state {p['state_bytes']:,} B")
    widths2 = [max(len(r[i]) for r in [head2] + body2) for i in range(len(head2))]
    lines += ["", "== resume after K completed steps (deliver the event, continue, one more step, complete)",
              _row(head2, widths2)] + [_row(r, widths2) for r in body2] + lines_extra
    dbos = [s for s in systems if s["family"] == "dbos" and "na" not in s.get("resume", {})]
    for s in dbos:
        pts = s["resume"]["points"]
        lines.append(f"  DBOS {s['db']}: replay {_fmt(pts[-1]['replay_ms'])} ms at K={pts[-1]['k']:,}; "
                     f"with resume_workflow's queue dispatch (e2e) " + ", ".join(
                         f"K={p['k']:,}: {_fmt(p['e2e_ms'])} ms" for p in pts))
    for s in systems:
        probe = s.get("settings", {}).get("loop_probe")
        if probe:
            lines.append(f"  {s['label']} ({s['db']}): straight-line programs, one program call per awaited call; "
                         f"loops do not work: {probe}")
    if notes:
        lines += ["", "n/a:"] + notes
    v = meta["versions"]
    lines += ["", "versions: " + ", ".join(f"{k} {v[k]}" for k in v) + f"; PostgreSQL {meta['postgresql']}"]
    return "\n".join(lines)


def _load() -> str:
    return f"{os.getloadavg()[0]:.2f}"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(prog="python -m bench peers", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes: K = 10, 100, 1,000, few repeats")
    ap.add_argument("--only", default=",".join(FAMILIES), help=f"comma-separated subset of {','.join(FAMILIES)}")
    ap.add_argument("--dbs", default="", help="comma-separated subset of memory,disk,sqlite,pg (default: all)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON output (default {DEFAULT_OUT})")
    ap.add_argument("--png", type=Path, default=None, help="chart output (default: the JSON path with .png)")
    ap.add_argument("--no-chart", action="store_true", help="do not draw the chart")
    ap.add_argument("--redraw", type=Path, default=None, metavar="JSON",
                    help="measure nothing: print the table of an earlier run's JSON and draw its chart")
    args = ap.parse_args(argv)
    if args.redraw is not None:
        out = json.loads(args.redraw.read_text())
        print(format_table(out))
        if not args.no_chart:
            from . import chart

            png = chart.draw(out, args.png or args.redraw.with_suffix(".png"))
            print(f"wrote {png}")
        return out
    only = [f.strip() for f in args.only.split(",") if f.strip()]
    unknown = set(only) - set(FAMILIES)
    if unknown:
        ap.error(f"unknown system(s): {', '.join(sorted(unknown))}")
    dbs = {d.strip() for d in args.dbs.split(",") if d.strip()}
    sys.path.insert(0, str(HERE))
    import peer_common as pc

    sz = pc.sizes(args.quick)
    pg = _pg_up()
    workdir = Path(tempfile.mkdtemp(prefix="durable-peers-"))
    t0, load_start = time.perf_counter(), _load()
    systems = []
    try:
        for family, script, db, label in CHILDREN:
            if family not in only or (dbs and db not in dbs):
                continue
            reason = why_not(family, db, pg)
            print(f"-- {label} ({db}) ...", flush=True, file=sys.stderr)
            res = ({fig: pc.na(reason) for fig in FIGURES} if reason
                   else run_child(family, script, db, args.quick, workdir))
            res.update(family=family, label=label, db=db)
            systems.append(res)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    out = {"meta": {"quick": args.quick, "k_values": list(sz.k_values), "sizes": sz.__dict__,
                    "date_utc": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
                    "elapsed_s": time.perf_counter() - t0, "load_start": load_start, "load_end": _load(),
                    "machine": _machine(), "versions": _versions(), "postgresql": pg},
           "systems": systems}
    report(out, format_table(out), args.out, indent=1)
    if not args.no_chart:
        from . import chart

        png = args.png or args.out.with_suffix(".png")
        chart.draw(out, png)
        print(f"wrote {png}")
    return out


if __name__ == "__main__":
    main()
