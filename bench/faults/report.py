"""The fault suite's table."""

from __future__ import annotations

from typing import Any


def format_table(res: dict[str, Any]) -> str:
    """The counts as plain text."""
    cfg, inst, w, b, r, e, s = (res[k] for k in ("config", "instances", "workers", "broker", "recovery", "events",
                                                  "side_effects"))
    lines = [
        f"fault injection  {res['meta']['date_utc']}  db={cfg['db']}  {cfg['workers']} workers  "
        f"git {res['meta']['git']}",
        f"  instances         {inst['completed']:,}/{inst['started']:,} completed ({inst['in_database']:,} in the "
        f"database)  in {res['wall_s']:.1f} s wall",
        f"  worker kills      {w['kills']} SIGKILLs ({w['kills_interrupting_a_run']} mid-run), {w['starts']} worker "
        f"starts, {w['unexpected_exits']} unexpected exits",
        f"  broker            {b['restarts']} restart(s) at {b['restart_at_s']} s, {b['messages_lost_in_restart']} "
        f"messages lost with it; {b['instances_started_while_down']} started and "
        f"{b['events_published_while_down']} events published while down "
        f"({len(b['caller_errors_while_down'])} raised to the caller)",
        f"  recovery          {r['lease_takeovers']} lease takeovers, {r['redelivered_messages_seen']} redelivered "
        f"messages, {r['wakeups_finished']:,} wake-ups {r['wakeup_outcomes']}",
        f"  sweeps            {r['sweeps']} durable_resume sweeps scheduled {r['instances_scheduled_by_sweeps']} "
        f"instances ({r['sweeper_starts']} sweeper process(es))",
        f"  events            {e['published']} published ({e['right_after_start']} right after the start), "
        f"{e['duplicates_sent']} duplicates sent, {e['duplicates_rejected']} rejected; {e['rows']} stored, "
        f"{e['unconsumed']} unconsumed",
        f"  side effects      {s['rows']:,} rows (expected {s['expected']:,}), {s['repeated']} repeated, "
        f"{s['missing']} missing, {s['wrong_balances']} wrong balances, {s['wrong_results']} wrong results",
        f"  verdict           {'OK' if res['ok'] else 'FAILED'}",
    ]
    if res.get("database"):
        d = res["database"]
        for r in d["restarts"]:
            workers = ", ".join(f"{k} {v} s" for k, v in sorted(r["workers_reconnected_s"].items()))
            lines.insert(-1, f"  database restart  {r['mode']} stop at {r['at_s']} s ({r['completed_before']} "
                             f"completed), down {r['down_s']} s; reconnected after: {workers}, sweeper "
                             f"{r['sweeper_reconnected_s']} s; first completion {r['first_completion_after_s']} s")
        lines.insert(-1, f"  during outages    {d['task_retries']} task retries (Celery autoretry), "
                         f"{d['runs_cut_mid_run']} runs cut mid-run, {d['failed_sweeps']} failed sweeps")
    lines += [f"    - {p}" for p in res["problems"]]
    return "\n".join(lines)

