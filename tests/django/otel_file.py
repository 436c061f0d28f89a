"""An OpenTelemetry SDK setup for worker subprocesses: every ended span as one JSON line in a file.

tests/django/settings.py installs it when ``DURABLE_TEST_OTEL_FILE`` is set (only the telemetry tests'
workers get it), so that a test can assert the spans a separate worker process exported.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult


def as_dict(span: ReadableSpan) -> dict:
    ctx = span.get_span_context()
    assert ctx is not None  # an ended SDK span always has its context
    return {
        "name": span.name, "trace_id": f"{ctx.trace_id:032x}", "span_id": f"{ctx.span_id:016x}",
        "parent_id": f"{span.parent.span_id:016x}" if span.parent is not None else None,
        "links": [f"{link.context.span_id:016x}" for link in span.links],
        "attributes": dict(span.attributes or {}), "pid": os.getpid(),
        "status": span.status.status_code.name,
    }


class JsonLinesExporter(SpanExporter):
    """Appends each span to ``path`` as it ends (SimpleSpanProcessor: nothing buffered, a killed worker loses none)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        with open(self.path, "a") as fh:
            for span in spans:
                fh.write(json.dumps(as_dict(span), default=str) + "\n")
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


def install(path: str) -> None:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(JsonLinesExporter(path)))
    trace.set_tracer_provider(provider)
