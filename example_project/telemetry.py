"""The demo's telemetry: spans printed to the console when ``DURABLE_TELEMETRY=console`` (docs/telemetry.md).

Off by default. With the variable set, the settings turn ``DURABLE["TELEMETRY"]`` on (traces, metrics,
logs) and call :func:`install`, which sets an OpenTelemetry SDK tracer provider with a console exporter
(``pip install opentelemetry-sdk prometheus_client``). A real project sets its own provider and exporter
(OTLP...) the same way; the app itself only uses the OpenTelemetry API.
"""

from __future__ import annotations


def install() -> None:
    """Print every span as JSON when it ends (SimpleSpanProcessor: nothing buffered, fine for a demo)."""
    from opentelemetry import trace
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": "durable-example"}))
    provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
    trace.set_tracer_provider(provider)
