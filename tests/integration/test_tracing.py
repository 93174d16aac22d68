"""A record's W3C trace context reaches the task; a record without one gets one. With
``tracing.enabled``, the bridge's spans join the producer's trace and the worker's span joins
theirs (spans sent by OTLP/HTTP to a receiver the test runs)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import SpanKind, set_span_in_context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from bridge.stack import StackInfo
from tests.integration.harness import (
    SHARED_QUEUE,
    Executions,
    Kafka,
    Worker,
    run_bridge_to_end,
    start_worker,
    unique,
    wait_for,
)
from tests.integration.otlp_receiver import OtlpReceiver, ReceivedSpan

TRACEPARENT = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def test_trace_context_is_propagated_or_created(
    stack: StackInfo, kafka: Kafka, executions: Executions, shared_worker: Worker, work_dir: Path
) -> None:
    topic = kafka.create_topic(1, "trace")
    traced = [("traceparent", TRACEPARENT), ("tracestate", b"vendor=abc")]
    kafka.produce(topic, [json.dumps({"n": 0}).encode()], headers=traced)
    kafka.produce(topic, [json.dumps({"n": 1}).encode()])
    route = {"topic": topic, "task": "it.record", "queue": SHARED_QUEUE}
    run_bridge_to_end(stack, kafka, work_dir, [route], partitions=1)

    runs = {run["payload"]["n"]: run for run in executions.of(topic)}
    assert runs[0]["trace"] == {
        "traceparent": TRACEPARENT.decode(),
        "tracestate": "vendor=abc",
        "ckb_correlation_id": "0af7651916cd43dd8448eb211c80319c",
    }
    trace_id = runs[1]["task_id"].replace("-", "")
    assert runs[1]["trace"] == {
        "traceparent": f"00-{trace_id}-{trace_id[16:]}-00",
        "tracestate": None,
        "ckb_correlation_id": trace_id,
    }


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    receiver = OtlpReceiver().start()
    yield receiver
    receiver.stop()


def producer_span(receiver: OtlpReceiver, topic: str) -> tuple[list[tuple[str, bytes]], str]:
    """A traced producer's headers for one record, its span exported to ``receiver``; and
    that span's trace id."""
    provider = TracerProvider(resource=Resource({"service.name": "it-producer"}))
    exporter = OTLPSpanExporter(endpoint=f"{receiver.endpoint}/v1/traces")
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    carrier: dict[str, str] = {}
    span = provider.get_tracer("it").start_span(f"{topic} publish", kind=SpanKind.PRODUCER)
    TraceContextTextMapPropagator().inject(carrier, context=set_span_in_context(span))
    span.end()
    provider.shutdown()
    return [(name, value.encode()) for name, value in carrier.items()], carrier["traceparent"][3:35]


def test_one_trace_from_the_producer_through_the_bridge_to_the_worker(
    stack: StackInfo,
    kafka: Kafka,
    executions: Executions,
    work_dir: Path,
    receiver: OtlpReceiver,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    otel = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint, "OTEL_BSP_SCHEDULE_DELAY": "200"}
    queue = unique("otel")
    worker = start_worker(
        stack, queue, work_dir, concurrency=1, app="tests.integration.otel_worker_app",
        env={**otel, "OTEL_SERVICE_NAME": "it-worker"},
    )  # fmt: skip
    try:
        topic = kafka.create_topic(1, "traced")
        headers, producer_trace = producer_span(receiver, topic)
        kafka.produce(topic, [json.dumps({"n": 0}).encode()], headers=headers)
        kafka.produce(topic, [json.dumps({"n": 1}).encode()])  # no traceparent
        kafka.produce(topic, [json.dumps({"n": 2, "mode": "always_fail"}).encode()])
        for name, value in {**otel, "OTEL_SERVICE_NAME": "it-bridge"}.items():
            monkeypatch.setenv(name, value)  # the bridge's process inherits them
        route = {"topic": topic, "task": "it.record", "queue": queue}
        bridge = run_bridge_to_end(
            stack, kafka, work_dir, [route], partitions=1, settings={"tracing": {"enabled": True}}
        )

        def spans_of(service: str, count: int) -> list[ReceivedSpan]:
            spans = [span for span in receiver.spans if span.service == service]
            return spans if len(spans) >= count else []

        # each worker span is exported when it ends; the bridge's flushed at its shutdown
        wait_for(lambda: spans_of("it-worker", 3), 30, "the worker's three task spans")
        wait_for(lambda: spans_of("it-bridge", 6), 30, "the bridge's six spans")
    finally:
        worker.stop()

    (producer,) = spans_of("it-producer", 1)
    bridge_spans = spans_of("it-bridge", 6)
    process = {span.attributes["messaging.kafka.offset"]: span for span in bridge_spans
               if span.kind == "SPAN_KIND_CONSUMER"}  # fmt: skip
    publish = {span.parent_span_id: span for span in bridge_spans
               if span.kind == "SPAN_KIND_PRODUCER"}  # fmt: skip
    worker_spans = {span.parent_span_id: span for span in spans_of("it-worker", 3)}
    assert len(bridge_spans) == 6 and process.keys() == {0, 1, 2} and len(publish) == 3
    runs = {run["payload"]["n"]: run for run in executions.of(topic)}

    # the producer's trace goes on through the bridge's spans to the worker's task span
    consumer = process[0]
    assert (consumer.trace_id, consumer.parent_span_id) == (producer_trace, producer.span_id)
    assert consumer.name == f"{topic} process"
    assert consumer.attributes == {
        "messaging.system": "kafka",
        "messaging.operation.type": "process",
        "messaging.operation.name": "process",
        "messaging.destination.name": topic,
        "messaging.destination.partition.id": "0",
        "messaging.kafka.offset": 0,
        "messaging.consumer.group.name": bridge.config["kafka"]["group_id"],
        "messaging.message.body.size": len(json.dumps({"n": 0})),
        "ckb.task.id": runs[0]["task_id"],
        "ckb.outcome": "success",
    }
    sent = publish[consumer.span_id]
    assert (sent.name, sent.trace_id) == ("it.record publish", producer_trace)
    task = worker_spans[sent.span_id]
    assert (task.name, task.kind, task.trace_id) == (
        "run/it.record",
        "SPAN_KIND_CONSUMER",
        producer_trace,
    )
    assert runs[0]["trace"]["ckb_correlation_id"] == producer_trace

    # a record without traceparent starts a new trace, continued likewise by the worker
    root = process[1]
    assert root.parent_span_id == "" and root.trace_id != producer_trace
    assert publish[root.span_id].trace_id == root.trace_id
    assert worker_spans[publish[root.span_id].span_id].trace_id == root.trace_id
    assert runs[1]["trace"]["ckb_correlation_id"] == root.trace_id

    # the outcome is on the consumer span: the failed task's record was dead-lettered
    failed = process[2]
    assert failed.status == "STATUS_CODE_ERROR"
    assert failed.attributes["ckb.outcome"] == "failure"
    assert failed.attributes["ckb.dlq.reason"] == "task_failed"
    assert worker_spans[publish[failed.span_id].span_id].status == "STATUS_CODE_ERROR"
