"""Telemetry (durable_django.telemetry): the span tree across a pause and a worker restart, metrics after a
known workload, structured logs, and "off" importing nothing."""

from __future__ import annotations

import json
import logging
from datetime import timedelta

import pytest
from django.utils import timezone

pytest.importorskip("opentelemetry.sdk")
pytest.importorskip("prometheus_client")

from opentelemetry import trace  # noqa: E402
from opentelemetry.sdk.trace import TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter  # noqa: E402
from prometheus_client import CollectorRegistry  # noqa: E402

import durable_django as dd  # noqa: E402
from durable_django import telemetry, worker  # noqa: E402
from durable_django.models import DurableInstance, DurableTrace, Status  # noqa: E402
from tests.django.conftest import wait_until  # noqa: E402
from tests.django.otel_file import as_dict  # noqa: E402
from tests.django.testapp import durable_programs as progs  # noqa: E402

pytestmark = pytest.mark.django_db(transaction=True)

#: The registry of the test being run (a fresh one per test: counters start at 0).
REGISTRY = CollectorRegistry()
_EXPORTER = InMemorySpanExporter()


@pytest.fixture(scope="module")
def exporter():
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    provider.add_span_processor(SimpleSpanProcessor(_EXPORTER))
    return _EXPORTER


@pytest.fixture
def telemetry_on(settings, exporter):
    global REGISTRY
    REGISTRY = CollectorRegistry()
    exporter.clear()
    settings.DURABLE = {**settings.DURABLE, "TELEMETRY": {
        "traces": True, "metrics": True, "logs": True, "registry": f"{__name__}.REGISTRY",
        "metrics_token": "t" * 20}}
    assert telemetry.active
    yield exporter
    exporter.clear()


def spans(exporter) -> list[dict]:
    return [as_dict(s) for s in exporter.get_finished_spans()]


def value(name: str, **labels) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def check_tree(found: list[dict], start: dict, publish: dict, iid: str) -> None:
    """Every run of ``iid`` is a child of its start span (one trace); the run after the publish links to it."""
    runs = [s for s in found if s["name"] == "durable run approval" and s["attributes"]["durable.instance_id"] == iid]
    assert [r["attributes"]["durable.status"] for r in runs] == ["paused", "completed"], runs
    for run in runs:
        assert run["trace_id"] == start["trace_id"] and run["parent_id"] == start["span_id"]
        steps = [s for s in found if s["name"] == "durable step" and s["parent_id"] == run["span_id"]]
        assert steps and all(s["trace_id"] == start["trace_id"] for s in steps)
        assert all(s["attributes"]["durable.instance_id"] == iid and s["attributes"]["durable.attempt"] == 1
                   for s in steps)
    assert runs[0]["links"] == [] and runs[1]["links"] == [publish["span_id"]]
    first_steps = [s["attributes"] for s in found
                   if s["name"] == "durable step" and s["parent_id"] == runs[0]["span_id"]]
    assert [(a["durable.step"], a["durable.status"]) for a in first_steps] == [(1, "running"), (2, "paused")]
    stored = DurableTrace.objects.get(pk=iid)
    assert stored.context["traceparent"].split("-")[1:3] == [start["trace_id"], start["span_id"]]
    assert stored.pending == []  # the run that the publish woke consumed it


def test_span_tree_across_a_pause(inline, telemetry_on, uid):
    tracer = trace.get_tracer("tests")
    with tracer.start_as_current_span("request: submit"):
        dd.start(progs.approval, 1, instance_id=uid)
    assert DurableInstance.objects.get(pk=uid).status == Status.PAUSED
    with tracer.start_as_current_span("request: approve"):
        dd.publish_event(uid, "approved", "yes")
    assert DurableInstance.objects.get(pk=uid).status == Status.COMPLETED
    found = spans(telemetry_on)
    request = next(s for s in found if s["name"] == "request: submit")
    start = next(s for s in found if s["name"] == "durable start approval")
    assert start["parent_id"] == request["span_id"] and start["trace_id"] == request["trace_id"]
    publish = next(s for s in found if s["name"] == "durable publish approved")
    approve = next(s for s in found if s["name"] == "request: approve")
    assert publish["parent_id"] == approve["span_id"]
    check_tree(found, start, publish, uid)


def test_span_tree_across_a_worker_restart(worker_factory, settings, exporter, tmp_path, uid):
    """The second half runs on another worker process, which exports its spans to a file."""
    exporter.clear()
    settings.DURABLE = {**settings.DURABLE, "TELEMETRY": {"traces": True}}
    out = tmp_path / "spans.jsonl"
    env = {"DURABLE_TEST_OTEL_FILE": str(out)}
    first = worker_factory(extra_env=env)
    tracer = trace.get_tracer("tests")
    with tracer.start_as_current_span("request: submit"):
        dd.start(progs.approval, 2, instance_id=uid)
    wait_until(lambda: DurableInstance.objects.get(pk=uid).status == Status.PAUSED, message="the pause")
    first.stop()
    second = worker_factory(extra_env=env)
    with tracer.start_as_current_span("request: approve"):
        dd.publish_event(uid, "approved", "yes")
    wait_until(lambda: DurableInstance.objects.get(pk=uid).status == Status.COMPLETED, message="the completion")
    found = spans(exporter)
    start = next(s for s in found if s["name"] == "durable start approval")
    publish = next(s for s in found if s["name"] == "durable publish approved")

    def exported() -> list[dict]:  # the run span ends just after the completion commits: wait for it
        found = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
        done = [s for s in found if s["name"] == "durable run approval"
                and s["attributes"].get("durable.status") == "completed"]
        return found if done else []

    from_workers = wait_until(exported, message="the workers' spans")
    pids = {s["pid"] for s in from_workers if s["name"] == "durable run approval"}
    assert pids == {first.proc.pid, second.proc.pid}  # one run on each worker
    check_tree(from_workers, start, publish, uid)


def test_metrics_after_a_known_workload(inline, telemetry_on, uid, client, settings):
    for k in range(3):
        dd.start(progs.effect_then_finish, f"{uid}-{k}", instance_id=f"{uid}-ok{k}")
    for k in range(2):
        dd.start(progs.failing, "boom", instance_id=f"{uid}-bad{k}")
    dd.start(progs.approval, 3, instance_id=f"{uid}-wait")
    dd.publish_event(f"{uid}-wait", "approved", "yes")
    dd.start(progs.two_events, uid, instance_id=f"{uid}-cancel")
    dd.cancel(f"{uid}-cancel")
    path = "tests.django.testapp.durable_programs."
    ok, bad, appr = path + "effect_then_finish", path + "failing", path + "approval"
    assert value("durable_instances_started_total", program=ok) == 3
    assert value("durable_instances_completed_total", program=ok) == 3
    assert value("durable_instances_failed_total", program=bad) == 2
    assert value("durable_instances_completed_total", program=appr) == 1
    assert value("durable_instances_cancelled_total", program="tests.django.testapp.durable_programs.two_events") == 1
    # effect_then_finish: 2 checkpoints per instance (after the effect, at the end)
    assert value("durable_step_duration_seconds_count", program=ok) == 6
    assert value("durable_wakeup_latency_seconds_count", program=ok, cause="start") == 3
    assert value("durable_wakeup_latency_seconds_count", program=appr, cause="event") == 1
    assert value("durable_runnable_instances") == 0

    # Runnable, not run: the gauge counts them. A run whose worker died is taken over: counted.
    settings.DURABLE = {**settings.DURABLE, "RUN_INLINE": False}
    for k in range(2):
        dd.start(progs.effect_then_finish, f"{uid}-q{k}", instance_id=f"{uid}-q{k}")
    assert value("durable_runnable_instances") == 2
    DurableInstance.objects.filter(pk=f"{uid}-q0").update(
        status=Status.RUNNING, lease_owner="dead-worker", lease_expires_at=timezone.now() - timedelta(seconds=5))
    assert worker.run_instance(f"{uid}-q0") == Status.COMPLETED
    assert value("durable_lease_takeovers_total", program=ok) == 1
    assert value("durable_runnable_instances") == 1

    # The /metrics view: the token or the permission, never anonymous.
    assert client.get("/durable/metrics").status_code == 403
    page = client.get("/durable/metrics", HTTP_AUTHORIZATION="Bearer " + "t" * 20)
    assert page.status_code == 200 and page["Content-Type"].startswith("text/plain")
    assert f'durable_instances_completed_total{{program="{ok}"}} 4.0' in page.content.decode()


def test_a_failed_instance_is_logged(inline, settings, caplog, uid):
    settings.DURABLE = {**settings.DURABLE, "TELEMETRY": {"logs": True}}
    with caplog.at_level(logging.DEBUG, logger="durable_django"):
        dd.start(progs.failing, "boom", instance_id=uid)
    records = [r for r in caplog.records if getattr(r, "instance_id", None) == uid]
    assert [(r.transition, r.levelname) for r in records] == [
        ("started", "INFO"), ("failed", "WARNING")], [r.getMessage() for r in records]
    failed = records[-1]
    assert failed.program == "tests.django.testapp.durable_programs.failing" and failed.status == Status.FAILED
    assert failed.step == 2 and failed.attempt == 1  # the checkpoint of the asyncio.sleep, then the failure
    assert "ValueError: boom" in failed.getMessage()


def test_transitions_are_logged_with_their_step(inline, settings, caplog, uid):
    settings.DURABLE = {**settings.DURABLE, "TELEMETRY": {"logs": True}}
    with caplog.at_level(logging.INFO, logger="durable_django"):
        dd.start(progs.approval, 4, instance_id=uid)
        dd.publish_event(uid, "approved", "ok")
    got = [(r.transition, r.step, r.status) for r in caplog.records if getattr(r, "instance_id", None) == uid]
    assert got == [("started", None, "pending"), ("paused", 2, "paused"), ("event_published", None, "paused"),
                   ("resumed", 3, "running"), ("completed", 3, "completed")], got


def test_bad_settings_are_reported():
    from django.core.checks import run_checks
    from django.test import override_settings

    from durable_django.conf import durable_settings

    with override_settings(DURABLE={**durable_settings.user_settings(), "TELEMETRY": {"trace": True, "logs": "yes"}}):
        ids = [e.id for e in run_checks() if e.id and e.id.startswith("durable_django.E06")]
    assert ids.count("durable_django.E060") == 2


def test_steps_as_events_of_the_run_span(inline, telemetry_on, settings, uid):
    settings.DURABLE = {**settings.DURABLE, "TELEMETRY": {"traces": True, "steps": "events"}}
    dd.start(progs.effect_then_finish, uid, instance_id=uid)
    finished = telemetry_on.get_finished_spans()
    assert not [s for s in finished if s.name == "durable step"]
    run = next(s for s in finished if s.name == "durable run effect_then_finish")
    assert [(e.name, e.attributes["durable.step"], e.attributes["durable.status"]) for e in run.events] == [
        ("durable step", 1, "running"), ("durable step", 2, "completed")]


def test_timer_wakeup_latency(inline, telemetry_on, uid):
    dd.start(progs.sleeper, 0.2, instance_id=uid)
    row = DurableInstance.objects.get(pk=uid)
    assert row.status == Status.PAUSED and row.wake_at is not None
    wait_until(lambda: timezone.now() >= row.wake_at + timedelta(seconds=0.05), message="the timer to be due")
    assert worker.run_instance(uid) == Status.COMPLETED
    program = "tests.django.testapp.durable_programs.sleeper"
    assert value("durable_wakeup_latency_seconds_count", program=program, cause="timer") == 1
    assert 0.05 <= value("durable_wakeup_latency_seconds_sum", program=program, cause="timer") < 30
    assert value("durable_wakeup_latency_seconds_count", program=program, cause="start") == 1
