"""The Django benchmark's table."""

from __future__ import annotations

from typing import Any

from .setup import DBOS_MS_PER_STEP


def _ok(flag: bool) -> str:
    return "PASS" if flag else "MISS"


def format_table(res: dict[str, Any]) -> str:
    meta = res["meta"]
    v = meta["versions"]
    lines = [f"durable_django benchmark  {'(quick)' if meta['quick'] else '(full)'}  {meta['date_utc']}  "
             f"Python {meta['python']}  nproc={meta['nproc']}  git {meta['git']}  {meta.get('elapsed_s', 0):.0f} s",
             f"  Django {v.get('django')}  Celery {v.get('celery')}  PostgreSQL {v.get('postgresql')}  "
             f"Redis {v.get('redis-server')}  SQLite {v.get('sqlite')}  load avg "
             f"{meta['loadavg_start'][0]:.2f} -> {meta.get('loadavg_end', [0])[0]:.2f}"]
    rows: list[tuple[str, str]] = []

    def section(title: str) -> None:
        rows.append(("", ""))
        rows.append((f"== {title}", ""))

    for key, label in (("steps_pg", "PostgreSQL"), ("steps_sqlite", "SQLite WAL, synchronous=NORMAL")):
        s = res.get(key)
        if not s:
            continue
        sp, st = s["time_split"], s["statements"]["per_step"]
        section(f"per-step checkpoint, {label} (N={s['n_steps']:,} steps, slope N vs 1, median of {s['repeats']})")
        rows += [
            ("floor: UPDATE 2 KB + COMMIT (driver)", f"{s['floor_us']:,.1f} µs"),
            ("floor through Django's cursor + atomic()", f"{s['django_floor_us']:,.1f} µs"),
            ("durable_django per step", f"{s['step_us']:,.1f} µs   ratio {s['ratio']:.2f}x floor   "
                                        f"target {s['target']}: {_ok(s['meets_target'])}"),
        ]
        if "floor_one_statement_us" in s:
            rows.append(("  against the UPDATE alone in autocommit (driver)",
                         f"{s['floor_one_statement_us']:,.1f} µs   ratio {s['ratio_one_statement']:.2f}x"))
        rows += [
            ("  in save_state_sync", f"{sp['save_state_sync_us']:,.1f} µs"),
            ("    COMMIT statements", f"{sp['of_which_commit_us']:,.1f} µs"),
            ("    SQL statements (execute)", f"{sp['of_which_sql_us']:,.1f} µs  ("
             + ", ".join(f"{k[4:-3]} {us:,.0f}" for k, us in sp.items() if k.startswith("sql_")) + ")"),
            ("    sign (pickle + HMAC)", f"{sp['of_which_sign_us']:,.1f} µs"),
            ("    ORM query building, Python", f"{sp['of_which_orm_python_us']:,.1f} µs"),
            ("  outside it (runtime, thread hops)", f"{sp['outside_save_state_us']:,.1f} µs  (one asgiref hop: "
             f"{s['asgiref_hop_us']:,.1f} µs)"),
            ("  SQL statements per step", ", ".join(f"{k} {n:g}" for k, n in st.items())),
            ("whole run of 1 step (start + run)", f"{s['run_1_step_ms']:,.2f} ms"),
        ]
        if s["vendor"] == "postgresql":
            rows.append(("for scale: DBOS on this PostgreSQL", f"{DBOS_MS_PER_STEP[0]}-{DBOS_MS_PER_STEP[1]} ms/step"))
            h = s.get("hot_updates") or {}
            if "durable_django_durableinstance" in h:
                di, bf = h["durable_django_durableinstance"], h.get("bench_floor", {})
                rows.append(("HOT updates: instance rows / floor rows",
                             f"{di['hot_updates']:,} of {di['updates']:,} / {bf.get('hot_updates', 0):,} of "
                             f"{bf.get('updates', 0):,}  (instance table: {h['instance_indexes']} indexes)"))
            rows.append(("Django opening a new connection", f"{s['django_connect_ms']:.2f} ms (what a worker pays per "
                                                            "task by Celery's default, see below)"))

    lat = res.get("latency")
    if lat:
        n = lat["shipped"]["samples"]
        section(f"publish_event -> next step runs (1 solo worker, one variant at a time, Redis broker, "
                f"{n} samples each)")
        rows.append(("", "".join(c.rjust(10) for c in ("p50 ms", "p90 ms", "p99 ms", "max ms"))))

        def lrow(name: str, d: dict[str, float]) -> None:
            rows.append((name, "".join(f"{d[k]:10.3f}" for k in ("p50_ms", "p90_ms", "p99_ms", "max_ms"))))

        lrow("floor: UPDATE 2 KB + COMMIT, same rounds", lat["commit_floor"])
        for v, title in (("shipped", "Celery's default: the DB connection is closed per task"),
                         ("reuse", "worker keeps its DB connection (CELERY_DB_REUSE_MAX)")):
            p = lat[v]
            rows.append((f"- {title}", " "))
            lrow("floor: bare task .delay() -> task starts", p["floor"])
            lrow("publish_event -> step runs", p["publish_to_step"])
            lrow("  publish_event() call returns", p["publish_call"])
            lrow("  publish_event -> run_instance task starts", p["publish_to_task_start"])
            rows.append(("  task start -> step runs (p50)", f"{p['task_start_to_step_p50_ms']:.3f} ms"))
            rows.append(("ratio to floor", f"p50 {p['ratio_p50']:.2f}x  p99 {p['ratio_p99']:.2f}x   target "
                                           f"{lat['target']}: {_ok(p['meets_target'])}"))

        ip = lat["in_process"]
        rows.append(("without Celery (in process, median)", f"publish_event {ip['publish_call_ms']:.2f} ms, wake-up "
                                                             f"run_instance {ip['run_instance_ms']:.2f} ms"))
        rows.append(("  SQL statements of one wake-up", ", ".join(f"{k} {n}" for k, n in
                                                                 ip["statements_per_wakeup"].items())
                     ))

    tp = res.get("throughput")
    if tp:
        f = tp["floor"]
        section(f"throughput ({tp['instances']:,} per burst, 2 solo workers, PostgreSQL, median of {tp['rounds']})")
        rows.append(("", "".join(c.rjust(11) for c in ("per s", "drain/s", "worker ms", "pg ms", "bench ms",
                                                        "busy"))))

        def trow(name: str, d: dict[str, float]) -> None:
            drain = f"{d['drain_per_s']:11,.0f}" if "drain_per_s" in d else f"{'-':>11}"
            rows.append((name, f"{d['per_s']:11,.0f}{drain}{d['cpu_ms_per_item_workers']:11.2f}"
                               f"{d['cpu_ms_per_item_postgres']:11.2f}{d['cpu_ms_per_item_bench']:11.2f}"
                               f"{d['machine_busy']:11.0%}"))

        trow("floor: bare tasks", f)
        for v, title in (("shipped", "one-step processes, connection closed per task"),
                         ("reuse", "one-step processes, CELERY_DB_REUSE_MAX"),
                         ("unbatched", "  same, BATCH_SIZE=1 (a message per instance)")):
            if v not in tp:
                continue
            d = tp[v]
            trow(title, d)
            rows.append(("  ratio to floor", f"{d['ratio_to_floor']:.2f}x   target {tp['target']}: "
                                             f"{_ok(d['meets_target'])}"))
        d = tp["shipped"]
        rows.append(("creating the rows / sending the wake-ups", f"{d['create_s']:.2f} s / {d['send_s']:.2f} s "
                                                                 "(bench process; sending is inside per s)"))
        rows.append(("(worker/pg/bench ms = CPU ms per item; busy = whole machine)", " "))
        ip = tp["in_process"]
        rows.append(("without Celery: run_instance of a one-step", f"{ip['cpu_ms_per_instance']:.2f} ms CPU, "
                                                                   f"{ip['wall_ms_per_instance']:.2f} ms wall"))
        rows.append(("  SQL statements", ", ".join(f"{k} {n}" for k, n in ip["statements_per_instance"].items())
                     ))
        rows.append(("  once per run: async_to_sync / heartbeat thread", f"{ip['async_to_sync_call_us']:.0f} µs / "
                                                                         f"{ip['thread_start_join_us']:.0f} µs"))
        rows.append(("  CPU profile by package", ", ".join(f"{k.split(' (')[0]} {v:.0%}" for k, v in
                                                           list(ip["cpu_profile_share"].items())[:6])))

    width = max(len(k) for k, val in rows if val) + 2
    for k, val in rows:
        lines.append(k if not val else f"  {k.ljust(width)}{val}")
    return "\n".join(lines)

