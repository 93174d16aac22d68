"""The test worker's tasks (:mod:`tests.integration.worker_app`) in a worker traced the way a
user's would be: ``opentelemetry-instrumentation-celery``, spans exported by OTLP/HTTP as the
``OTEL_*`` environment says. Started as ``celery -A tests.integration.otel_worker_app worker``
(prefork: each pool process sets up its own tracing, as the instrumentation's docs say).
"""

from __future__ import annotations

from typing import Any

from celery.signals import worker_process_init
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.instrumentation.celery import CeleryInstrumentor
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from tests.integration.worker_app import app

__all__ = ["app"]


@worker_process_init.connect(weak=False)
def _trace_this_process(*_: Any, **__: Any) -> None:
    provider = TracerProvider()
    # each span is exported when it ends: a test reads them without waiting for a batch
    provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    CeleryInstrumentor().instrument()
