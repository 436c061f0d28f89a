"""Telemetry of durable instances: OpenTelemetry spans, Prometheus metrics, structured logs; all optional.

Off by default, at no cost: with ``DURABLE["TELEMETRY"]`` empty, neither
``opentelemetry`` nor ``prometheus_client`` is imported, no signal receiver
is connected, and the executor checks one module attribute per run
(:data:`active`); a step costs nothing extra. Turned on (``{"traces": True,
"metrics": True, "logs": True}``, any subset), the libraries are imported when
the app is ready and:

* traces: ``start()`` and ``publish_event()`` open a short PRODUCER span in the
  caller's trace; its W3C context is stored in :class:`DurableTrace`. Every run
  of the instance, on any worker and however much later, is a child of the
  start span (one trace id for the instance's whole life), with span links to
  the publishes that woke it. Each checkpoint closes a step span (child of the
  run span) that covers the time since the previous checkpoint; with
  ``"steps": "events"`` a step is an event on the run span instead (cheaper). The library
  only uses ``opentelemetry-api``: the project installs and configures the SDK.
* metrics: counters of transitions per program, histograms of step and
  wake-up latency, lease takeovers, and the runnable-instance gauge computed
  on scrape (one query), in ``prometheus_client``'s default registry or the
  project's (``"registry"``).
* logs: one record of logger ``durable_django`` per transition and failure
  (INFO, WARNING for failures), with ``extra`` fields ``instance_id``,
  ``program``, ``step``, ``attempt``, ``status`` and ``transition``.

Signals are sent after commit (:mod:`durable_django.signals`), so nothing is
recorded for a transaction that rolled back.
"""

from __future__ import annotations

import importlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.db import DatabaseError, transaction
from django.utils.module_loading import import_string

from durable import current_attempt

from . import clock, db, signals
from .conf import durable_settings
from .models import DurableInstance, DurableTrace

log = logging.getLogger("durable_django")

#: True when any of traces, metrics or logs is on: the executor's only check (once per run).
active = False
#: The options accepted in ``DURABLE["TELEMETRY"]`` (system check durable_django.E060).
KEYS = ("traces", "steps", "metrics", "logs", "registry", "metrics_token")
#: The libraries each switch needs (system check durable_django.E061).
LIBRARIES = {"traces": "opentelemetry.trace", "metrics": "prometheus_client"}

_tracing: _Tracing | None = None
_metrics: _Metrics | None = None
_logs = False
_local = threading.local()
_WARN = frozenset({"failed", "suspended", "retrying", "recovered", "error", "lease-lost"})
_COUNTED = ("started", "completed", "failed", "suspended", "cancelled")


def options() -> dict[str, Any]:
    value = durable_settings.TELEMETRY
    return value if isinstance(value, dict) else {}


def configure() -> None:
    """Apply ``DURABLE["TELEMETRY"]``: import what is on, connect or disconnect the receivers.

    Called by the app's ``ready()`` and whenever the ``DURABLE`` setting changes.
    """
    global active, _tracing, _metrics, _logs
    opts = options()
    _tracing = _Tracing() if opts.get("traces") else None
    _metrics = metrics_for(opts.get("registry")) if opts.get("metrics") else None
    _logs = bool(opts.get("logs"))
    active = bool(_tracing or _metrics or _logs)
    if active:
        signals.instance_transition.connect(_on_transition, dispatch_uid="durable_django.telemetry")
    else:
        signals.instance_transition.disconnect(dispatch_uid="durable_django.telemetry")


def _library(name: str, switch: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        extra = "otel" if switch == "traces" else "prometheus"
        raise ImproperlyConfigured(f"DURABLE['TELEMETRY']['{switch}'] needs {name.split('.')[0]}: "
                                   f"pip install 'durable-django[{extra}]' ({exc})") from exc


# -- traces -----------------------------------------------------------------
class _Tracing:
    """The OpenTelemetry API, imported only when traces are on."""

    def __init__(self) -> None:
        self.trace = _library("opentelemetry.trace", "traces")
        self.context = _library("opentelemetry.context", "traces")
        tc = _library("opentelemetry.trace.propagation.tracecontext", "traces")
        self.propagator = tc.TraceContextTextMapPropagator()  # W3C, whatever the project's global propagator
        self.tracer = self.trace.get_tracer("durable_django")

    def producer_span(self, name: str, attributes: dict[str, Any]) -> dict[str, str]:
        """A short span in the caller's trace (start, publish); returns its context as a W3C carrier."""
        carrier: dict[str, str] = {}
        with self.tracer.start_as_current_span(name, kind=self.trace.SpanKind.PRODUCER, attributes=attributes):
            self.propagator.inject(carrier)
        return carrier

    def link(self, carrier: dict[str, str]) -> Any:
        ctx = self.trace.get_current_span(self.propagator.extract(carrier)).get_span_context()
        return self.trace.Link(ctx) if ctx.is_valid else None


def _short(program: str) -> str:
    return program.rsplit(".", 1)[-1] or program


# -- metrics ----------------------------------------------------------------
class _Metrics:
    """The Prometheus metrics of one registry (created once per registry: names must be unique in it)."""

    def __init__(self, registry: Any) -> None:
        pc = self.pc = _library("prometheus_client", "metrics")
        self.registry = registry
        self.transitions = {
            kind: pc.Counter(f"durable_instances_{kind}", f"Durable instances {kind}, per program.", ["program"],
                             registry=registry)
            for kind in _COUNTED}
        self.takeovers = pc.Counter("durable_lease_takeovers", "Runs taken over from a worker whose lease expired.",
                                    ["program"], registry=registry)
        self.step_seconds = pc.Histogram(
            "durable_step_duration_seconds", "Time from one checkpoint (or the run's start) to the next.",
            ["program"], registry=registry,
            buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300))
        self.wakeup_seconds = pc.Histogram(
            "durable_wakeup_latency_seconds",
            "From start(), publish_event() or a timer's due time to the start of the run it wakes.",
            ["program", "cause"], registry=registry,
            buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300))
        registry.register(_QueueDepth())


class _QueueDepth:
    """The ``durable_runnable_instances`` gauge, computed on scrape with one query (no value kept in memory)."""

    def __init__(self) -> None:
        self.family = _library("prometheus_client.core", "metrics").GaugeMetricFamily

    def describe(self) -> list:  # registered without a query at startup
        return []

    def collect(self) -> Iterator[Any]:
        try:
            depth = DurableInstance.objects.runnable_now(clock.now()).count()
        except DatabaseError:
            log.warning("durable_runnable_instances: the database could not be read", exc_info=True)
            return
        gauge = self.family("durable_runnable_instances",
                            "Instances that should run now and no live worker holds (what the workers have to do).")
        gauge.add_metric([], depth)
        yield gauge


_BY_REGISTRY: dict[int, _Metrics] = {}


def metrics_for(registry: Any = None) -> _Metrics:
    """The metrics in ``registry`` (an object or a dotted path; None: ``prometheus_client.REGISTRY``)."""
    if isinstance(registry, str):
        registry = import_string(registry)
    if registry is None:
        registry = _library("prometheus_client", "metrics").REGISTRY
    found = _BY_REGISTRY.get(id(registry))
    if found is None or found.registry is not registry:
        found = _BY_REGISTRY[id(registry)] = _Metrics(registry)
    return found


def exposition() -> tuple[bytes, str] | None:
    """The metrics in Prometheus' text format and its content type; None when metrics are off."""
    m = _metrics
    if m is None:
        return None
    return m.pc.generate_latest(m.registry), m.pc.CONTENT_TYPE_LATEST


# -- runs -------------------------------------------------------------------
class Run:
    """The telemetry of one claimed run: its span, its step timing, what the transition logs report."""

    def __init__(self, instance_id: str, program: str, first: bool, claims: int) -> None:
        self.instance_id, self.program, self.claims = instance_id, program, claims
        self.step: int | None = None
        self.attempt = 1
        self.outer: Run | None = getattr(_local, "run", None)  # a run nested in a step of another run
        self.span: Any = None
        self.span_context: Any = None
        self._token: Any = None
        self.last_ns = time.time_ns()
        tr, m = _tracing, _metrics
        if tr is None and m is None:
            return
        carrier, pending = self._read_trace(m, first)
        if tr is not None:
            parent = tr.propagator.extract(carrier) if carrier else None
            links = [x for x in (tr.link(p[0]) for p in pending if p and isinstance(p[0], dict)) if x is not None]
            self.span = tr.tracer.start_span(
                f"durable run {_short(program)}", context=parent, links=links,
                attributes={"durable.instance_id": instance_id, "durable.program": program,
                            "durable.claim_attempt": claims + 1})
            self.span_context = tr.trace.set_span_in_context(self.span)
            self._token = tr.context.attach(self.span_context)  # the program's own spans nest under the run

    def _read_trace(self, m: _Metrics | None, first: bool) -> tuple[dict, list]:
        """The stored trace context and the publishes not seen yet (cleared: each links one run only).

        One query (the instance's due time, joined with its trace row); a second one only to clear publishes.
        """
        try:
            found = DurableInstance.objects.filter(pk=self.instance_id).values_list(
                "wake_at", "trace__context", "trace__started_at", "trace__pending").first()
            if found is None:
                return {}, []
            wake_at, carrier, started_at, pending = found
            if pending:
                DurableTrace.objects.filter(pk=self.instance_id).update(pending=[])
        except DatabaseError:
            log.warning("durable telemetry: the trace context of %s could not be read", self.instance_id,
                        exc_info=True)
            return {}, []
        if m is not None:
            now = clock.time()
            hist = m.wakeup_seconds
            if first and started_at is not None:
                hist.labels(self.program, "start").observe(max(0.0, now - started_at))
            for entry in pending or ():
                if len(entry) > 1 and isinstance(entry[1], int | float):
                    hist.labels(self.program, "event").observe(max(0.0, now - entry[1]))
            # the claim leaves wake_at alone: a due time in the past is the timer (or timeout) that woke this run
            if wake_at is not None and not pending and wake_at.timestamp() <= now:
                hist.labels(self.program, "timer").observe(now - wake_at.timestamp())
        return carrier or {}, pending or []

    def hook(self, status_of: Callable[[], str | None], user: Callable[[str, int], None] | None
             ) -> Callable[[str, int], None]:
        """The runtime's ``on_checkpoint``: closes the step's span, observes its latency, then calls ``user``."""
        tr, m = _tracing, _metrics
        program = self.program
        hist = m.step_seconds.labels(program) if m is not None else None
        events = options().get("steps") == "events"

        def on_checkpoint(instance_id: str, steps: int) -> None:
            now = time.time_ns()
            self.step, self.attempt = steps, current_attempt()
            if tr is not None:
                attributes = {"durable.step": steps, "durable.attempt": self.attempt,
                              "durable.status": str(status_of())}
                if events:  # cheaper (~3 µs instead of ~15 µs with the Python SDK): an event on the run span
                    self.span.add_event("durable step", attributes, timestamp=now)
                else:
                    attributes["durable.instance_id"], attributes["durable.program"] = instance_id, program
                    span = tr.tracer.start_span("durable step", context=self.span_context, start_time=self.last_ns,
                                                attributes=attributes)
                    span.end(end_time=now)
            if hist is not None:
                hist.observe((now - self.last_ns) / 1e9)
            self.last_ns = now
            if user is not None:
                user(instance_id, steps)

        return on_checkpoint

    def end(self, outcome: str, error: BaseException | None = None) -> None:
        """Close the run span with its outcome (after the run's transitions were logged)."""
        _local.run = self.outer
        tr = _tracing
        if self.span is None or tr is None:
            return
        try:
            self.span.set_attribute("durable.status", str(outcome))
            if self.step is not None:
                self.span.set_attribute("durable.step", self.step)
            if error is not None:
                self.span.record_exception(error)
            if error is not None or outcome in _WARN:
                self.span.set_status(tr.trace.Status(tr.trace.StatusCode.ERROR, str(outcome)))
            self.span.end()
        finally:
            if self._token is not None:
                tr.context.detach(self._token)


def begin_run(instance_id: str, program: str, first: bool, claims: int) -> Run:
    """Start the telemetry of a claimed run (call only when :data:`active`); ``first``: nothing ran yet."""
    run = _local.run = Run(instance_id, program, first, claims)
    return run


def _current(instance_id: str) -> Run | None:
    run = getattr(_local, "run", None)
    return run if run is not None and run.instance_id == instance_id else None


# -- transitions (signals, after commit) ------------------------------------
def _on_transition(sender: Any, instance_id: str, program: str = "", kind: str = "", status: str = "",
                   **extra: Any) -> None:
    m, tr = _metrics, _tracing
    if m is not None:
        counter = m.transitions.get(kind)
        if counter is not None:
            counter.labels(program).inc()
        elif kind == "recovered":
            m.takeovers.labels(program).inc()
    if (tr is not None or m is not None) and kind in ("started", "event_published"):
        _store(tr, kind, instance_id, program, extra.get("event"))
    if _logs:
        _log(kind, instance_id, program, status, extra)


def _store(tr: _Tracing | None, kind: str, instance_id: str, program: str, event: Any) -> None:
    """Keep the caller's trace context (and the time) with the instance, for the runs that follow."""
    attributes = {"durable.instance_id": instance_id, "durable.program": program}
    now = clock.time()
    if kind == "started":
        carrier = tr.producer_span(f"durable start {_short(program)}", attributes) if tr is not None else {}
        DurableTrace.objects.bulk_create([DurableTrace(instance_id=instance_id, context=carrier, started_at=now)],
                                         ignore_conflicts=True)
        return
    name = getattr(event, "name", "")
    carrier = tr.producer_span(f"durable publish {name}", {**attributes, "durable.event": name}) if tr else {}
    with transaction.atomic(using=db.alias()):
        row = DurableTrace.objects.select_for_update().filter(pk=instance_id).first()
        if row is None:
            DurableTrace.objects.create(instance_id=instance_id, pending=[[carrier, now]])
        else:
            row.pending = [*(row.pending or [])[-15:], [carrier, now]]  # bounded: a flood keeps the last 16
            row.save(update_fields=["pending"])


def _log(kind: str, instance_id: str, program: str, status: str, extra: dict[str, Any]) -> None:
    run = _current(instance_id)
    step = run.step if run is not None else None
    attempt = run.attempt if run is not None else None
    detail = extra.get("detail")
    if kind == "event_published":
        detail = getattr(extra.get("event"), "name", None)
    level = logging.WARNING if kind in _WARN else logging.INFO
    text = str(detail).strip().splitlines()[-1][:500] if detail else ""
    log.log(level, "durable instance %s %s (%s, status %s, step %s, attempt %s)%s", instance_id, kind, program,
            status, step, attempt, f": {text}" if text else "",
            extra={"instance_id": instance_id, "program": program, "step": step, "attempt": attempt,
                   "status": status, "transition": kind})


def _reconfigure(*, setting: str, **kwargs: Any) -> None:
    if setting == "DURABLE":
        configure()


setting_changed.connect(_reconfigure, dispatch_uid="durable_django.telemetry.reconfigure")
