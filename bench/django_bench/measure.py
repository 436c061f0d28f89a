"""Measurement tools of the Django benchmark: a checked inline run, the SQL statements a run sends, where a
step's time goes, the thread hop, fixed costs, and profiles grouped by package."""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from pathlib import Path
from typing import Any

from ..common.environment import ROOT

_EXPECTED: dict[int, int] = {}


def expected_result(n: int) -> int:
    """What ``many_steps(n)`` returns, run natively."""
    if n not in _EXPECTED:
        import asyncio

        from .. import workloads

        _EXPECTED[n] = asyncio.run(workloads.many_steps(n))
    return _EXPECTED[n]


def run_inline(n: int) -> float:
    """Seconds for ``start(many_steps, n)`` run to completion in this process (RUN_INLINE), checked."""
    import durable_django as dd
    from durable_django.models import DurableInstance, Status

    from .. import workloads

    iid = uuid.uuid4().hex
    t0 = time.perf_counter()
    dd.start(workloads.many_steps, n, instance_id=iid)
    dt = time.perf_counter() - t0
    row = DurableInstance.objects.filter(pk=iid).values_list("status", "steps").first()
    if row is None or row[0] != Status.COMPLETED:
        raise AssertionError(f"instance {iid} ({n} steps) ended as {row!r}, not completed")
    got, expected = dd.result(iid), expected_result(n)
    if got != expected:
        raise AssertionError(f"instance {iid} returned {got!r}, expected {expected!r}")
    return dt


@contextlib.contextmanager
def counting_sql(kinds: dict[str, int], spent: dict[str, float] | None = None,
                  example: dict[str, str] | None = None):
    """Count the statements sent on the default connection by their first word, and the commits.

    ``COMMIT`` counts explicit commits (``transaction.commit``, the end of an outermost ``atomic``: a
    round trip of their own); ``implicit COMMIT`` the writes sent in autocommit mode outside any
    transaction (each commits as it runs, in its own round trip). ``WITH`` is a statement that writes
    through a CTE (the claim, ``publish_event`` on PostgreSQL).
    """
    from django.db import connection

    def wrapper(execute, sql, params, many, context):
        parts = [p.strip() for p in sql.split(";") if p.strip()] if sql.lstrip().upper().startswith("BEGIN;") else [sql]
        word = "+".join(p.lstrip().split(None, 1)[0].upper() for p in parts)  # BEGIN+SET+UPDATE+COMMIT: one trip
        kinds[word] = kinds.get(word, 0) + 1
        raw = connection.connection  # PostgreSQL: the app runs some statements in autocommit on its own
        auto = raw.autocommit if connection.vendor == "postgresql" and raw is not None else connection.get_autocommit()
        if word in ("UPDATE", "INSERT", "DELETE", "WITH") and auto and not connection.in_atomic_block:
            kinds["implicit COMMIT"] = kinds.get("implicit COMMIT", 0) + 1
        if example is not None:
            example[word] = sql[:400]  # the last one: a checkpoint's
        t0 = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            if spent is not None:
                spent[word] = spent.get(word, 0.0) + time.perf_counter() - t0

    orig_commit = connection.commit

    def commit():
        kinds["COMMIT"] = kinds.get("COMMIT", 0) + 1
        return orig_commit()

    connection.commit = commit
    try:
        with connection.execute_wrapper(wrapper):
            yield kinds
    finally:
        del connection.commit


def statements_per_step(n: int) -> dict[str, Any]:
    """SQL statements per step (slope between runs of ``n`` and 1 steps), by kind; not timed."""

    def count(steps: int) -> tuple[dict[str, int], dict[str, float], dict[str, str]]:
        kinds: dict[str, int] = {}
        spent: dict[str, float] = {}
        example: dict[str, str] = {}
        with counting_sql(kinds, spent, example):
            run_inline(steps)
        return kinds, spent, example

    (one, t_one, _), (big, t_big, example) = count(1), count(n)
    words = sorted(set(one) | set(big))
    per = {k: (big.get(k, 0) - one.get(k, 0)) / (n - 1) for k in words}
    us = {k: (t_big.get(k, 0.0) - t_one.get(k, 0.0)) / (n - 1) * 1e6 for k in words}
    return {"per_step": {k: round(v, 3) for k, v in per.items() if v},
            "us_per_step": {k: round(v, 1) for k, v in us.items() if per[k] and k != "COMMIT"},
            "whole_run_1_step": one, "example_sql": {k: example[k] for k in words if per[k] and k in example}}


def time_split(n: int) -> dict[str, float]:
    """Where a step's time goes (µs per step): the backend's save_state_sync, and sign() inside it; not timed."""
    from durable_django import backend as be

    spent = {"save_state_sync": 0.0, "sign": 0.0, "commit": 0.0, "sql": 0.0}
    orig_save, orig_sign = be.DjangoOrchestrationBackend.save_state_sync, be.sign
    from django.db import transaction

    orig_commit = transaction.commit

    def save(self, *a, **k):
        t0 = time.perf_counter()
        try:
            return orig_save(self, *a, **k)
        finally:
            spent["save_state_sync"] += time.perf_counter() - t0

    def sign(obj, context):
        t0 = time.perf_counter()
        try:
            return orig_sign(obj, context)
        finally:
            spent["sign"] += time.perf_counter() - t0

    def commit(*a, **k):
        t0 = time.perf_counter()
        try:
            return orig_commit(*a, **k)
        finally:
            spent["commit"] += time.perf_counter() - t0

    def sql(execute, sql, params, many, context):
        word = "sql:" + sql.lstrip().split(None, 1)[0].upper()
        t0 = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            dt = time.perf_counter() - t0
            spent["sql"] += dt
            spent[word] = spent.get(word, 0.0) + dt

    from django.db import connection

    spent["sql"] = 0.0
    be.DjangoOrchestrationBackend.save_state_sync, be.sign, be.transaction.commit = save, sign, commit
    try:
        whole: dict[int, float] = {}
        parts: dict[int, dict[str, float]] = {}
        for steps in (1, n):
            for k in list(spent):
                spent[k] = 0.0
            with connection.execute_wrapper(sql):
                whole[steps] = run_inline(steps)
            parts[steps] = dict(spent)
    finally:
        be.DjangoOrchestrationBackend.save_state_sync, be.sign = orig_save, orig_sign
        be.transaction.commit = orig_commit
    per = {k: (parts[n].get(k, 0.0) - parts[1].get(k, 0.0)) / (n - 1) * 1e6 for k in parts[n]}
    total = (whole[n] - whole[1]) / (n - 1) * 1e6
    by_kind = {f"sql_{k[4:]}_us": v for k, v in per.items() if k.startswith("sql:") and v > 1.0}
    return {"total_us": total, "save_state_sync_us": per["save_state_sync"], "of_which_commit_us": per["commit"],
            "of_which_sign_us": per["sign"], "of_which_sql_us": per["sql"],
            "of_which_orm_python_us": per["save_state_sync"] - per["commit"] - per["sign"] - per["sql"],
            "outside_save_state_us": total - per["save_state_sync"], **by_kind}


def hop_us(n: int = 2000) -> float:
    """µs per ``await sync_to_async(noop, thread_sensitive=True)()`` inside ``async_to_sync``: the thread hop
    every backend call of the executor makes (the loop thread hands the call to the worker's thread and back)."""
    from asgiref.sync import async_to_sync, sync_to_async

    def noop() -> None:
        return None

    async def hops(k: int) -> float:
        f = sync_to_async(noop, thread_sensitive=True)
        await f()
        t0 = time.perf_counter()
        for _ in range(k):
            await f()
        return (time.perf_counter() - t0) / k * 1e6

    return async_to_sync(hops)(n)


def package_of(filename: str) -> str:
    """The package a profiled function belongs to."""
    if filename.startswith("~") or filename.startswith("<"):
        return "builtins (C: sockets, locks, pickle...)"
    parts = Path(filename).parts
    if "site-packages" in parts:
        return parts[parts.index("site-packages") + 1].split(".")[0].split("-")[0]
    for pkg in ("durable_django", "durable", "bench"):
        if str(ROOT / pkg) + os.sep in filename:
            return pkg + (" (core)" if pkg == "durable" else "")
    return "stdlib (asyncio, threading...)"


def fixed_costs_us(k: int = 300) -> dict[str, float]:
    """Wall µs of two things every ``run_instance`` does once: ``async_to_sync`` called from a sync thread
    (asgiref starts a thread and an event loop for it), and starting, stopping and joining a thread (the
    lease heartbeat)."""
    import threading

    from asgiref.sync import async_to_sync

    async def noop() -> int:
        return 1

    def thread() -> None:
        ev = threading.Event()
        t = threading.Thread(target=ev.wait, args=(20,), daemon=True)
        t.start()
        ev.set()
        t.join()

    out = {}
    for name, fn in (("async_to_sync_call_us", lambda: async_to_sync(noop)()), ("thread_start_join_us", thread)):
        fn()
        t0 = time.perf_counter()
        for _ in range(k):
            fn()
        out[name] = (time.perf_counter() - t0) / k * 1e6
    return out


def profile_text(logdir: Path, variant: str) -> str:
    import io
    import pstats

    files = [str(p) for p in sorted(logdir.glob(f"worker-{variant}-*.prof"))]
    if not files:
        return "(no profile written)"
    buf = io.StringIO()
    st = pstats.Stats(files[0], stream=buf)
    for f in files[1:]:
        st.add(f)
    st.sort_stats("cumulative").print_stats(60)
    st.sort_stats("tottime").print_stats(30)
    return buf.getvalue()

