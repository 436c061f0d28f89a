"""``python -m bench telemetry [--quick] [--out PATH]``: per-step cost with telemetry on against off.

Runs :func:`bench.workloads.many_steps` in this process (``RUN_INLINE``) on a
SQLite file (WAL, ``synchronous=NORMAL``: the example project's options), the
cheapest checkpoint there is, so the ratio is an upper bound; or, with
``--pg postgres://user@host:port/db``, on a database of its own created on
that PostgreSQL server (and dropped). "On" is the whole of
``DURABLE["TELEMETRY"]`` (traces, metrics, logs) with the OpenTelemetry SDK
configured as in production (a ``BatchSpanProcessor``, here exporting to
nowhere) and a fresh ``prometheus_client`` registry; also measured: steps as
span events (``"steps": "events"``) and metrics + logs without traces. Per-step cost is
``(run of N steps - run of 1 step) / (N - 1)``, off and on interleaved, median
of the repeats. Target: on / off <= 1.05. Writes ``bench/results/telemetry.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .common.stats import median

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "telemetry.json"
TARGET_RATIO = 1.05
#: The registry of the "on" runs (``DURABLE["TELEMETRY"]["registry"]`` names it).
_REGISTRY: Any = None


def _settings(path: str, pg: str | None) -> None:
    import django
    from django.conf import settings

    if pg:
        import dj_database_url

        database = {**dj_database_url.parse(pg), "CONN_MAX_AGE": None}
    else:
        database = {"ENGINE": "django.db.backends.sqlite3", "NAME": path,
                    "OPTIONS": {"transaction_mode": "IMMEDIATE", "timeout": 30,
                                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;"}}
    settings.configure(
        SECRET_KEY="durable-bench-not-secret-0123456789abcdef", USE_TZ=True, DEBUG=False,
        INSTALLED_APPS=["django.contrib.contenttypes", "django.contrib.auth", "durable_django"],
        DATABASES={"default": database}, DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
        CELERY_BROKER_URL="memory://", CHANNEL_LAYERS={},
        DURABLE={"RUN_INLINE": True, "PROGRAMS": ["bench.workloads."], "CHANNEL_LAYER": None},
        LOGGING_CONFIG=None,
    )
    django.setup()


def _tracing() -> Any:
    """The SDK as a project would set it up; spans are batched and exported to nowhere (counted)."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

    class Counting(SpanExporter):
        spans = 0

        def export(self, spans):
            Counting.spans += len(spans)
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(Counting()))
    trace.set_tracer_provider(provider)
    return provider, Counting


def _run(n: int) -> float:
    import durable_django as dd
    from durable_django.models import DurableInstance, Status

    from . import workloads

    iid = uuid.uuid4().hex
    t0 = time.perf_counter()
    dd.start(workloads.many_steps, n, instance_id=iid)
    dt = time.perf_counter() - t0
    if DurableInstance.objects.filter(pk=iid).values_list("status", flat=True).first() != Status.COMPLETED:
        raise AssertionError(f"instance {iid} did not complete")
    return dt


def measure(n: int, repeats: int, warmup: int) -> dict[str, Any]:
    import gc
    import logging

    from django.core.management import call_command
    from django.db import connection
    from django.test import override_settings
    from prometheus_client import CollectorRegistry

    from durable_django import telemetry
    from durable_django.conf import durable_settings

    call_command("migrate", verbosity=0)
    provider, exporter = _tracing()
    logging.getLogger("durable_django").setLevel(logging.WARNING)  # as a production config would (INFO filtered)
    global _REGISTRY
    _REGISTRY = CollectorRegistry()
    base = durable_settings.user_settings()
    on = {"traces": True, "metrics": True, "logs": True, "registry": f"{__name__}._REGISTRY"}
    modes = {"off": base, "on": {**base, "TELEMETRY": on},
             "on_step_events": {**base, "TELEMETRY": {**on, "steps": "events"}},
             "metrics_logs": {**base, "TELEMETRY": {"metrics": True, "logs": True, "registry": on["registry"]}}}
    per_step: dict[str, list[float]] = {mode: [] for mode in modes}
    names = list(modes)
    for r in range(warmup + repeats):
        for mode in names[r % len(names):] + names[:r % len(names)]:  # interleaved, rotated
            with override_settings(DURABLE=modes[mode]):
                assert telemetry.active == (mode != "off")
                gc.collect()
                long, short = _run(n), _run(1)
            if r >= warmup:
                per_step[mode].append((long - short) / (n - 1) * 1e6)
    provider.force_flush()
    us = {mode: median(v) for mode, v in per_step.items()}
    off = us["off"]
    return {
        "meta": {"vendor": connection.vendor, "n_steps": n, "repeats": repeats, "python": sys.version.split()[0]},
        "off_us_per_step": off, "on_us_per_step": us["on"], "ratio": us["on"] / off, "target_ratio": TARGET_RATIO,
        "meets_target": us["on"] / off <= TARGET_RATIO, "spans_exported": exporter.spans,
        "modes": {mode: {"us_per_step": v, "ratio": v / off, "meets_target": v / off <= TARGET_RATIO}
                  for mode, v in us.items()},
        "samples_us": per_step,
    }


@contextlib.contextmanager
def _private_pg(server: str) -> Iterator[str]:
    """A database of its own on the server (created, then dropped): never another run's tables."""
    import psycopg

    base, _, _ = server.rpartition("/")
    name = f"durable_bench_tele_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(server, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _close() -> None:
    from django.db import connections

    connections.close_all()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(prog="python -m bench telemetry", description=__doc__)
    ap.add_argument("--quick", action="store_true", help="a smoke run with small sizes")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--pg", metavar="URL", help="PostgreSQL server URL (postgres://user@host:port/db): the run "
                    "creates and drops its own database there")
    args = ap.parse_args(argv)
    sizes = {"n": 20 if args.quick else 300, "repeats": 3 if args.quick else 15, "warmup": 1 if args.quick else 2}
    if args.pg:
        with _private_pg(args.pg) as url:
            _settings("", url)
            res = measure(**sizes)
            _close()
    else:
        with tempfile.TemporaryDirectory(prefix="durable-bench-tele-") as tmp:
            _settings(os.path.join(tmp, "bench.sqlite3"), None)
            res = measure(**sizes)
    print(f"telemetry per step ({res['meta']['vendor']}, N={res['meta']['n_steps']}, median of "
          f"{res['meta']['repeats']}; target on/off <= {TARGET_RATIO}):")
    for mode, m in res["modes"].items():
        print(f"  {mode:16} {m['us_per_step']:8,.1f} µs/step  ratio {m['ratio']:.3f}  "
              f"{'PASS' if m['meets_target'] else 'MISS'}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2) + "\n")
    return res


if __name__ == "__main__":
    main()
