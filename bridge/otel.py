"""The bridge's spans (OpenTelemetry), with ``tracing.enabled: true`` and the ``otel`` extra.

Per record, a consumer span ``<topic> process`` from consumed to finished, child of the
producer's span when the record carries a W3C ``traceparent`` (else the root of a new trace);
per task message, a producer span ``<task name> publish``, child of the consumer span, from
building the message to its publish. The message carries the publish span's context
(``traceparent``, ``tracestate``; ``ckb_correlation_id`` is its trace id), so a worker with
``opentelemetry-instrumentation-celery`` continues the trace: that instrumentation extracts
the context from the task's request, where Celery puts the message headers.

Attributes follow the OpenTelemetry messaging semantic conventions; the consumer span ends with
the outcome (``ckb.outcome``, and ``ckb.dlq.reason`` with an error status once a dead letter is
written). Never a payload or a key. Spans are exported by OTLP/HTTP in a batch, configured by
the standard ``OTEL_*`` environment variables (``OTEL_EXPORTER_OTLP_ENDPOINT``,
``OTEL_SERVICE_NAME``, ``OTEL_TRACES_SAMPLER``, ``OTEL_BSP_*``, ...); flushed at shutdown.

Imported only when tracing is on (:func:`bridge.tracing.otel_missing` checks the extra first).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer, set_span_in_context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from bridge.core.vocabulary import TP, Outcome, Rebalance
from bridge.events import Observer
from bridge.records import Record
from bridge.settings import Route, Settings
from bridge.tracing import (
    HEADER_CORRELATION_ID,
    TRACEPARENT,
    incoming_context,
    install_publish_hook,
    remove_publish_hook,
)

log = logging.getLogger(__name__)

#: open consumer spans at most (records consumed and not finished); past it, records go
#: untraced (their messages get the forwarded headers) until spans end
MAX_OPEN_SPANS = 50_000
#: ``service.name`` unless ``OTEL_SERVICE_NAME`` / ``OTEL_RESOURCE_ATTRIBUTES`` set one
SERVICE = "celery-kafka-bridge"
#: most seconds shutdown waits for the last spans' export
FLUSH_WAIT = 5.0
_PROPAGATOR = TraceContextTextMapPropagator()
_ROOT = Context()  # no parent: a new trace


class _Open:
    """A record's consumer span, and the publish span of its message being sent, if any."""

    __slots__ = ("publish", "span")

    def __init__(self, span: Span) -> None:
        self.span = span
        self.publish: Span | None = None


class SpanObserver(Observer):
    """Starts and ends the spans as the loop reports each record's events (on its thread).

    Open spans are kept per partition: a revoke or a loss ends them all (``ckb.unfinished``),
    so a record this bridge never finishes holds no memory, and the total is bounded.
    """

    def __init__(self, tracer: Tracer, group: str, max_open: int = MAX_OPEN_SPANS) -> None:
        self._tracer = tracer
        self._group = group
        self._max_open = max_open
        self._open: dict[TP, dict[int, _Open]] = {}
        self._count = 0
        self._untraced = 0

    @property
    def open_count(self) -> int:
        return self._count

    # == events ==========================================================================
    def on_consumed(self, record: Record) -> None:
        part = self._open.setdefault(record.tp, {})
        earlier = part.pop(record.offset, None)
        if earlier is not None:  # delivered again (rewound) before it finished
            self._count -= 1
            _end(earlier, unfinished="redelivered")
        if self._count >= self._max_open:
            if not self._untraced:
                log.warning("%d spans open: records go untraced until some finish", self._max_open)
            self._untraced += 1
            return
        carrier = incoming_context(record.headers)
        parent = _PROPAGATOR.extract(carrier) if carrier else _ROOT
        span = self._tracer.start_span(
            f"{record.topic} process",
            context=parent,
            kind=SpanKind.CONSUMER,
            attributes={
                "messaging.system": "kafka",
                "messaging.operation.type": "process",
                "messaging.operation.name": "process",
                "messaging.destination.name": record.topic,
                "messaging.destination.partition.id": str(record.partition),
                "messaging.kafka.offset": record.offset,
                "messaging.consumer.group.name": self._group,
                "messaging.message.body.size": len(record.value or b""),
            },
        )
        part[record.offset] = _Open(span)
        self._count += 1

    def publish_headers(self, record: Record, task_id: str, route: Route) -> dict[str, str] | None:
        """The publish hook (:data:`bridge.tracing.PUBLISH_HOOKS`): start the publish span of
        ``record``'s task message; the message's trace headers carry its context. None: not a
        record with a span here (or tracing failed): the message gets the forwarded headers."""
        entry = self._entry(record)
        if entry is None:
            return None
        try:
            if entry.publish is not None:  # the last message was not published (refused)
                _fail(entry.publish, "not published")
            entry.span.set_attribute("ckb.task.id", task_id)
            publish = entry.publish = self._tracer.start_span(
                f"{route.task} publish",
                context=set_span_in_context(entry.span),
                kind=SpanKind.PRODUCER,
                attributes={
                    "messaging.system": "celery",
                    "messaging.operation.type": "send",
                    "messaging.operation.name": "publish",
                    "messaging.destination.name": route.queue or "celery",
                    "messaging.message.id": task_id,
                    "celery.task_name": route.task,
                },
            )
            headers: dict[str, str] = {}
            _PROPAGATOR.inject(headers, context=set_span_in_context(publish))
        except Exception:  # never the record's fault: it goes out with the forwarded headers
            log.exception("tracing failed for %s", record.coordinates())
            return None
        if TRACEPARENT not in headers:  # an invalid span (OTEL_SDK_DISABLED)
            return None
        headers[HEADER_CORRELATION_ID] = headers[TRACEPARENT][3:35]
        return headers

    def on_dispatched(self, record: Record, task: str, redispatch: bool) -> None:
        entry = self._entry(record)
        if entry is not None and entry.publish is not None:
            entry.publish.end()
            entry.publish = None

    def on_task_finished(
        self, record: Record, task: str, outcome: str, duration: float | None
    ) -> None:
        entry = self._entry(record)
        if entry is None:
            return
        entry.span.set_attribute("ckb.outcome", str(outcome))
        if outcome == Outcome.SUCCESS:
            self._pop(record)
            _end(entry)
        # else open until its dead letter is written (on_dead_lettered)

    def on_dead_lettered(self, record: Record, reason: str) -> None:
        entry = self._pop(record)
        if entry is None:
            return
        reason = str(reason)
        entry.span.set_attributes({"ckb.dlq.reason": reason, "error.type": reason})
        entry.span.set_status(Status(StatusCode.ERROR, f"dead-lettered: {reason}"))
        _end(entry)

    def on_committed(self, tp: TP, offset: int) -> None:
        """Records below a commit point are finished: end the spans of those whose end was
        not reported (skipped, unrouted with ``unrouted: skip``)."""
        part = self._open.get(tp)
        if not part:
            return
        for stale in [at for at in part if at < offset]:
            self._count -= 1
            _end(part.pop(stale))

    def on_rebalance(self, event: str, tps: list[TP]) -> None:
        if event in (Rebalance.REVOKE, Rebalance.LOST):
            for tp in tps:
                self._drop(self._open.pop(tp, None), str(event))

    def end_all(self, why: str) -> None:
        """End every open span (shutdown: the records are handed on to the next owner)."""
        parts, self._open = self._open, {}
        for part in parts.values():
            self._drop(part, why)

    # == bookkeeping =====================================================================
    def _entry(self, record: Record) -> _Open | None:
        part = self._open.get(record.tp)
        return part.get(record.offset) if part else None

    def _pop(self, record: Record) -> _Open | None:
        part = self._open.get(record.tp)
        entry = part.pop(record.offset, None) if part else None
        if entry is not None:
            self._count -= 1
        return entry

    def _drop(self, part: dict[int, _Open] | None, why: str) -> None:
        for entry in (part or {}).values():
            self._count -= 1
            _end(entry, unfinished=why)


def _fail(span: Span, why: str) -> None:
    span.set_status(Status(StatusCode.ERROR, why))
    span.end()


def _end(entry: _Open, unfinished: str | None = None) -> None:
    if entry.publish is not None:
        _fail(entry.publish, "not published")
    if unfinished is not None:
        entry.span.set_attribute("ckb.unfinished", unfinished)
    entry.span.end()


@dataclass
class Tracing:
    """The bridge's tracer provider and span observer, installed until :meth:`shutdown`."""

    provider: TracerProvider
    observer: SpanObserver

    def flush(self, timeout_ms: int = 5_000) -> None:
        self.provider.force_flush(timeout_ms)

    def shutdown(self, wait: float = FLUSH_WAIT) -> None:
        """End what is open, export what is left: for ``wait`` seconds at most (the exporter
        retries a collector that does not answer for up to its timeout, 10 s by default)."""
        remove_publish_hook(self.observer.publish_headers)
        self.observer.end_all("shutdown")
        flush = threading.Thread(target=self.provider.shutdown, name="ckb-spans", daemon=True)
        flush.start()
        flush.join(wait)
        if flush.is_alive():
            log.warning(
                "the last spans were not exported within %gs (the OTLP endpoint does not "
                "answer); stopping without them",
                wait,
            )


def start_tracing(settings: Settings) -> Tracing:
    """The provider (its own, not the global one), an OTLP/HTTP exporter in a batch processor,
    all configured by the ``OTEL_*`` environment; the publish hook installed."""
    resource = Resource.create()
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: SERVICE}))
    # shut down by Tracing.shutdown, bounded; not again at exit (unbounded there)
    provider = TracerProvider(resource=resource, shutdown_on_exit=False)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    observer = SpanObserver(provider.get_tracer("bridge"), settings.kafka.group_id)
    install_publish_hook(observer.publish_headers)
    return Tracing(provider, observer)
