"""The load suite's table."""

from __future__ import annotations

from typing import Any

from .measure import BIG_SCAN


def format_table(res: dict[str, Any]) -> str:
    m, cfg = res["meta"], res["meta"]["config"]
    v = m["versions"]
    lines = [f"durable_django load suite {'(quick)' if cfg['quick'] else '(full)'}  {m['date_utc']}  "
             f"Python {m['python']}  nproc={m['nproc']}  git {m['git']}"
             + (f" + {len(m['durable_django_changed'])} changed files" if m.get("durable_django_changed") else "")
             + f"  {m['elapsed_s']:.0f} s",
             f"  PostgreSQL {v.get('postgresql')}  Redis {v.get('redis-server')}  Django {v.get('django')}  "
             f"Celery {v.get('celery')}  psycopg {v.get('psycopg')}  load avg {m['loadavg_start'][0]:.2f} -> "
             f"{m['loadavg_end'][0]:.2f}"]
    rows: list[tuple[str, str]] = []

    def section(title: str) -> None:
        rows.append((title, ""))

    def lat(d: dict[str, float]) -> str:
        return (f"p50 {d['p50_ms']:8.1f}  p90 {d['p90_ms']:8.1f}  p99 {d['p99_ms']:8.1f}  "
                f"max {d['max_ms']:8.1f} ms")

    p = res["populate"]
    section(f"creating {cfg['instances']:,} waiting instances (clone of real paused rows, COPY)")
    rows += [("total", f"{p['seconds']:.1f} s  ({p['rows_per_s']:,.0f} rows/s; {p['history_rows']:,} history rows)"),
             ("  of which signing / COPY / VACUUM ANALYZE",
              f"{p['sign_s']:.1f} / {p['copy_s']:.1f} / {p['analyze_s']:.1f} s"),
             ("state blob bytes", ", ".join(f"{k} {b}" for k, b in p["state_bytes"].items()))]
    pb = res["publish"]
    section(f"{cfg['publishers']} publishers -> {cfg['targets']:,} of them, {cfg['workers']} solo workers"
            + (f", {cfg['rate']:g} events/s" if cfg["rate"] else ", as fast as they can"))
    rows += [
        ("publish calls", f"{pb['publish_calls']:,} ({', '.join(f'{k} {n}' for k, n in pb['calls_by_kind'].items())})"),
        ("events stored", f"{pb['events_stored']:,}"),
        ("duplicates rejected", f"{pb['duplicates_rejected']:,} (returned the stored event: "
                                f"{pb['duplicates_returned_existing']}, refused as finished: "
                                f"{pb['duplicates_refused_finished']}; concurrent pairs overlapping in time: "
                                f"{pb['concurrent_pairs_overlapping']}/{pb['concurrent_pairs']})"),
        ("publish throughput", f"{pb['publish_calls_per_s']:,.0f} calls/s, {pb['events_accepted_per_s']:,.0f} "
                               f"events accepted/s (window {pb['publish_window_s']:.2f} s)"),
        ("publish_event() call", lat(pb["publish_call_ms"])),
        ("end-to-end throughput", f"{pb['completed_per_s']:,.0f} completed/s (first event -> last completion "
                                  f"{pb['end_to_end_s']:.2f} s; drain {pb['drain_per_s']:,.0f}/s)"),
        ("event created -> completed", lat(pb["latency_event_to_completed"])),
        ("  event created -> resumed", lat(pb["latency_event_to_resumed"])),
        ("  resumed -> completed", lat(pb["latency_resumed_to_completed"])),
        ("CPU ms per target", f"workers {pb['cpu_ms_per_target']['workers']:.2f}, publishers "
                              f"{pb['cpu_ms_per_target']['publishers']:.2f}; machine busy "
                              f"{pb['machine_busy'] * 100:.0f}%"),
    ]
    for key in ("check_after_publish",):
        c = res[key]
        rows.append((f"invariants {c['phase']}",
                     f"{'OK' if c['ok'] else 'FAILED'}: {c['completed_checked']:,} completed once with one side "
                     f"effect, {c['untouched_checked']:,} untouched" + ("" if c["ok"] else f"; {c['problems'][:3]}")))
    a = res["admin"]
    section(f"admin with {a['rows']:,} instances (test client, median of {cfg['admin_repeats']})")
    for name, d in a["pages"].items():
        big = [x for x in d["scans"] if x["big"]]
        seq = ("  scans of " + ", ".join(f"{x['rows_read']:,}" for x in big) + " rows") if big else ""
        slow = d["slowest"]
        slow_txt = f", slowest SQL {slow['ms']:5.1f} ms" if slow and slow["ms"] is not None else ""
        rows.append((name, f"{d['median_ms']:8.1f} ms  {d['queries']:2d} queries, SQL {d['sql_ms']:5.1f} ms"
                           f"{slow_txt}{seq}"))
    s = res["sweep"]
    section(f"durable_resume over {a['rows']:,} rows, {sum(s['due_planted'].values())} due "
            f"({', '.join(f'{k} {n}' for k, n in s['due_planted'].items())})")
    fs, ns = s["first_sweep"], s["next_sweep"]
    rows += [
        ("dry run finds exactly the due rows", f"{'yes' if s['dry_run_exact'] else 'NO'} ({s['dry_run_found']})"),
        ("worker.sweep(dry_run=True)", f"{s['executor_sweep_dry_run_ms']['median']:.1f} ms "
                                          f"({s['queries']} queries)"),
        ("call_command durable_resume --dry-run", f"{s['command_dry_run_ms']['median']:.1f} ms"),
        ("manage.py durable_resume --dry-run", f"{s['command_process_dry_run_s']:.2f} s (new process)"),
        ("durable_resume, first in a process", f"{fs['total_ms']:,.1f} ms: queries + {sum(s['due_planted'].values())} "
                                               f"wake-ups sent {fs['query_and_send_ms']:,.1f} ms, sweep_finished "
                                               f"receivers {fs['sweep_finished_receivers_ms']:,.1f} ms"),
        ("  swept instances all completed after", f"{s['swept_completed_s']:.2f} s"),
        ("durable_resume, next in the process", f"{ns['total_ms']:,.1f} ms ({ns['queries']} queries, nothing due)"),
    ]
    for e in s["explains"]:
        rows.append((f"  due query {e['ms']:.2f} ms", "; ".join(e["nodes"][:4])))
    for e in ns["explains"]:
        if any(x["big"] for x in e["scans"]) or (e["ms"] or 0) > 1:
            rows.append((f"  next-sweep query {e['ms']:.2f} ms", "; ".join(e["nodes"][:5])))
    findings = res.get("scan_findings", [])
    section(f"scans reading >= {BIG_SCAN:,} rows: {len(findings)}")
    for f in findings:
        how = f["node"] + (f" ({f['index']})" if f["index"] else "")
        rows.append((f"  {f['where']}", f"{how}, {f['rows_read']:,} rows, {f['ms']:.1f} ms: {f['sql'][:110]}"))
    w = res["wakeup_in_process"]
    section("one wake-up run in process (worker.run_instance, median)")
    rows += [("with the human-task receivers", f"{w['with']['wall_ms']:.2f} ms wall, {w['with']['cpu_ms']:.2f} ms CPU"),
             ("without them", f"{w['without']['wall_ms']:.2f} ms wall, {w['without']['cpu_ms']:.2f} ms CPU")]
    c = res["check_after_sweep"]
    rows.append((f"invariants {c['phase']}",
                 f"{'OK' if c['ok'] else 'FAILED'}: {c['completed_checked']:,} completed once with one side "
                 f"effect, {c['untouched_checked']:,} untouched" + ("" if c["ok"] else f"; {c['problems'][:3]}")))
    rows.append(("RESULT", "OK" if res["ok"] else f"FAILED: {res['problems'][:5]}"))
    width = max(len(k) for k, val in rows if val) + 2
    for k, val in rows:
        lines.append(k if not val else f"  {k.ljust(width)}{val}")
    return "\n".join(lines)

