"""Spans of the bridge (bridge.otel): a consumer span per record, a publish span per task
message, the message carrying the publish span's context; nothing of it when tracing is off."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from bridge import tracing
from bridge.otel import SpanObserver, start_tracing
from bridge.records import Record
from bridge.settings import Route, Settings

ROUTE = Route(topic="orders", task="billing.charge", queue="billing")
TASK_ID = "4bf92f35-77b3-4da6-a3ce-929d0e0e4736"
GROUP = "orders-bridge"


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def observer(exporter: InMemorySpanExporter) -> Iterator[SpanObserver]:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    spans = SpanObserver(provider.get_tracer("test"), GROUP)
    tracing.install_publish_hook(spans.publish_headers)
    yield spans
    tracing.remove_publish_hook(spans.publish_headers)
    provider.shutdown()


def record(offset: int = 42, partition: int = 3, headers: tuple = ()) -> Record:
    return Record("orders", partition, offset, b"k", b'{"n": 1}', headers, 1_700_000_000_000)


def producer_headers() -> tuple[tuple[str, bytes], tuple[str, bytes], ReadableSpan]:
    """The headers a traced producer writes, and its (ended) span."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with provider.get_tracer("producer").start_as_current_span(
        "orders publish", kind=SpanKind.PRODUCER
    ):
        carrier: dict[str, str] = {}
        TraceContextTextMapPropagator().inject(carrier)
    (span,) = exporter.get_finished_spans()
    return (
        ("traceparent", carrier["traceparent"].encode()),
        ("tracestate", b"vendor=abc"),
        span,
    )


def traceparent_of(span: ReadableSpan) -> str:
    context = span.context
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"


def by_name(exporter: InMemorySpanExporter) -> dict[str, ReadableSpan]:
    return {span.name: span for span in exporter.get_finished_spans()}


def test_the_consumer_span_continues_the_producers_trace_and_the_task_the_publish_span(
    observer: SpanObserver, exporter: InMemorySpanExporter
) -> None:
    traceparent, tracestate, producer = producer_headers()
    consumed = record(headers=(traceparent, tracestate))
    observer.on_consumed(consumed)
    headers = tracing.message_headers(consumed, TASK_ID, ROUTE)
    observer.on_dispatched(consumed, ROUTE.task, False)
    assert by_name(exporter).keys() == {"billing.charge publish"}, "the consumer span is open"
    observer.on_task_finished(consumed, ROUTE.task, "success", 0.5)

    spans = by_name(exporter)
    process, publish = spans["orders process"], spans["billing.charge publish"]
    trace_id = producer.context.trace_id
    assert process.kind is SpanKind.CONSUMER
    assert process.context.trace_id == trace_id
    assert process.parent is not None and process.parent.span_id == producer.context.span_id
    assert process.parent.is_remote
    assert dict(process.attributes or {}) == {
        "messaging.system": "kafka",
        "messaging.operation.type": "process",
        "messaging.operation.name": "process",
        "messaging.destination.name": "orders",
        "messaging.destination.partition.id": "3",
        "messaging.kafka.offset": 42,
        "messaging.consumer.group.name": GROUP,
        "messaging.message.body.size": 8,
        "ckb.task.id": TASK_ID,
        "ckb.outcome": "success",
    }
    assert process.status.status_code is StatusCode.UNSET
    assert publish.kind is SpanKind.PRODUCER
    assert publish.context.trace_id == trace_id
    assert publish.parent is not None and publish.parent.span_id == process.context.span_id
    assert dict(publish.attributes or {}) == {
        "messaging.system": "celery",
        "messaging.operation.type": "send",
        "messaging.operation.name": "publish",
        "messaging.destination.name": "billing",
        "messaging.message.id": TASK_ID,
        "celery.task_name": "billing.charge",
    }
    # the task message carries the publish span's context: the worker's span is its child
    assert headers == {
        "traceparent": traceparent_of(publish),
        "tracestate": "vendor=abc",
        "ckb_correlation_id": f"{trace_id:032x}",
    }
    assert observer.open_count == 0


def test_a_record_without_traceparent_starts_a_new_trace(
    observer: SpanObserver, exporter: InMemorySpanExporter
) -> None:
    consumed = record()
    observer.on_consumed(consumed)
    headers = tracing.message_headers(consumed, TASK_ID, ROUTE)
    observer.on_dispatched(consumed, ROUTE.task, False)
    observer.on_task_finished(consumed, ROUTE.task, "success", 0.5)
    spans = by_name(exporter)
    process, publish = spans["orders process"], spans["billing.charge publish"]
    assert process.parent is None
    assert publish.parent is not None and publish.parent.span_id == process.context.span_id
    trace_id = f"{process.context.trace_id:032x}"
    assert headers == {
        "traceparent": traceparent_of(publish),
        "ckb_correlation_id": trace_id,
    }


def test_the_dead_letter_reason_is_recorded_on_the_consumer_span(
    observer: SpanObserver, exporter: InMemorySpanExporter
) -> None:
    failed, undecodable = record(offset=1), record(offset=2)
    for consumed in (failed, undecodable):
        observer.on_consumed(consumed)
    tracing.message_headers(failed, TASK_ID, ROUTE)
    observer.on_dispatched(failed, ROUTE.task, False)
    observer.on_task_finished(failed, ROUTE.task, "failure", 1.0)
    assert len(exporter.get_finished_spans()) == 1, "open until the dead letter is written"
    observer.on_dead_lettered(failed, "task_failed")
    # a message that could not be encoded after its headers were made: its publish span fails
    tracing.message_headers(undecodable, TASK_ID, ROUTE)
    observer.on_dead_lettered(undecodable, "decode_error")

    ended = exporter.get_finished_spans()
    process = {
        s.attributes["messaging.kafka.offset"]: s for s in ended if s.kind.name == "CONSUMER"
    }
    assert process[1].status.status_code is StatusCode.ERROR
    assert process[1].attributes["ckb.outcome"] == "failure"
    assert process[1].attributes["ckb.dlq.reason"] == "task_failed"
    assert process[1].attributes["error.type"] == "task_failed"
    assert process[2].attributes["ckb.dlq.reason"] == "decode_error"
    assert "ckb.outcome" not in process[2].attributes
    unsent = [s for s in ended if s.kind is SpanKind.PRODUCER and s.parent == process[2].context]
    assert len(unsent) == 1 and unsent[0].status.status_code is StatusCode.ERROR
    assert observer.open_count == 0


def test_a_refused_publish_ends_its_span_and_the_resend_gets_a_new_one(
    observer: SpanObserver, exporter: InMemorySpanExporter
) -> None:
    consumed = record()
    observer.on_consumed(consumed)
    first = tracing.message_headers(consumed, TASK_ID, ROUTE)  # the broker refuses this one
    second = tracing.message_headers(consumed, TASK_ID, ROUTE)
    observer.on_dispatched(consumed, ROUTE.task, False)
    # lost, sent again: another publish span under the same consumer span
    third = tracing.message_headers(consumed, TASK_ID, ROUTE)
    observer.on_dispatched(consumed, ROUTE.task, True)
    publishes = [s for s in exporter.get_finished_spans() if s.kind is SpanKind.PRODUCER]
    assert [s.status.status_code for s in publishes] == [
        StatusCode.ERROR,
        StatusCode.UNSET,
        StatusCode.UNSET,
    ]
    assert len({first["traceparent"], second["traceparent"], third["traceparent"]}) == 3
    assert len({first["ckb_correlation_id"], third["ckb_correlation_id"]}) == 1
    assert observer.open_count == 1


def test_revoked_or_lost_partitions_end_their_open_spans(
    observer: SpanObserver, exporter: InMemorySpanExporter
) -> None:
    for partition, offset in [(0, 1), (0, 2), (1, 1), (2, 5)]:
        consumed = record(offset, partition)
        observer.on_consumed(consumed)
        tracing.message_headers(consumed, TASK_ID, ROUTE)
    observer.on_rebalance("revoke", [("orders", 0)])
    observer.on_rebalance("lost", [("orders", 1)])
    assert observer.open_count == 1
    unfinished = {
        (s.attributes["messaging.destination.partition.id"], s.attributes["ckb.unfinished"])
        for s in exporter.get_finished_spans()
        if s.kind is SpanKind.CONSUMER
    }
    assert unfinished == {("0", "revoke"), ("1", "lost")}
    assert len(exporter.get_finished_spans()) == 6, "their publish spans end too"


def test_a_redelivered_record_ends_the_span_of_its_earlier_delivery(
    observer: SpanObserver, exporter: InMemorySpanExporter
) -> None:
    observer.on_consumed(record())
    observer.on_consumed(record())  # rewound without a rebalance
    assert observer.open_count == 1
    (ended,) = exporter.get_finished_spans()
    assert ended.attributes["ckb.unfinished"] == "redelivered"


def test_a_commit_ends_spans_of_records_finished_without_an_event(
    observer: SpanObserver, exporter: InMemorySpanExporter
) -> None:
    for offset in (5, 6, 7):
        observer.on_consumed(record(offset))  # e.g. skipped: no route and unrouted: skip
    observer.on_committed(("orders", 3), 7)
    assert observer.open_count == 1
    assert sorted(
        s.attributes["messaging.kafka.offset"] for s in exporter.get_finished_spans()
    ) == [
        5,
        6,
    ]


def test_open_spans_are_bounded(exporter: InMemorySpanExporter) -> None:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    observer = SpanObserver(provider.get_tracer("test"), GROUP, max_open=2)
    for offset in range(3):
        observer.on_consumed(record(offset))
    assert observer.open_count == 2
    # the third record has no span: its message gets the headers of a bridge without tracing
    assert observer.publish_headers(record(2), TASK_ID, ROUTE) is None


def test_records_this_observer_did_not_consume_get_the_plain_headers(
    observer: SpanObserver, exporter: InMemorySpanExporter
) -> None:
    headers = tracing.message_headers(record(), TASK_ID, ROUTE)
    assert headers == tracing.trace_headers((), TASK_ID)
    assert exporter.get_finished_spans() == ()


def test_an_observer_failure_inside_the_hook_falls_back_to_the_plain_headers(
    observer: SpanObserver, monkeypatch: pytest.MonkeyPatch
) -> None:
    consumed = record()
    observer.on_consumed(consumed)

    def broken(*_: object) -> None:
        raise RuntimeError("exporter bug")

    monkeypatch.setattr(observer, "_tracer", type("T", (), {"start_span": broken})())
    assert tracing.message_headers(consumed, TASK_ID, ROUTE) == tracing.trace_headers((), TASK_ID)


def test_without_tracing_the_headers_are_the_forwarded_ones() -> None:
    traced = record(headers=(("traceparent", b"00-" + b"a" * 32 + b"-" + b"b" * 16 + b"-01"),))
    assert tracing.message_headers(traced, TASK_ID, ROUTE) == tracing.trace_headers(
        traced.headers, TASK_ID
    )


#: a Python without the otel extra: importing any opentelemetry module fails
WITHOUT_OTEL = """
import sys
import threading
import time
from importlib.abc import MetaPathFinder

class NoOpenTelemetry(MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "opentelemetry":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, NoOpenTelemetry())
"""


def run_without_otel(script: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", WITHOUT_OTEL + script], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_without_the_extra_a_bridge_without_tracing_builds_and_sends(tmp_path) -> None:
    config = tmp_path / "bridge.yaml"
    config.write_text("routes: [{topic: orders, task: billing.charge}]\n")
    out = run_without_otel(
        "from pathlib import Path\n"
        "import bridge.cli, bridge.service\n"
        "from bridge.intake import Intake\n"
        "from bridge.routing import Router\n"
        "from bridge.records import Record\n"
        "from bridge.settings import load_settings\n"
        f"settings = load_settings(Path({str(config)!r}))\n"
        "intake = Intake(settings, Router(settings.routes))\n"
        "job = intake.read(Record('orders', 0, 1, None, b'1', (), 1), 1)\n"
        "print(settings.tracing.enabled, sorted(Intake.request_for(job).headers))\n"
        "print(sorted(m for m in sys.modules if 'otel' in m or 'opentelemetry' in m))\n"
    )
    assert out.splitlines() == [
        "False ['ckb_correlation_id', 'ckb_key', 'ckb_offset', 'ckb_partition', 'ckb_timestamp', "
        "'ckb_topic', 'traceparent']",
        "[]",
    ]


def test_enabled_without_the_extra_is_a_config_error_naming_the_install(tmp_path) -> None:
    config = tmp_path / "bridge.yaml"
    config.write_text("routes: [{topic: orders, task: b.c}]\ntracing: {enabled: true}\n")
    out = run_without_otel(
        "from pathlib import Path\n"
        "from bridge.settings import ConfigError, load_settings\n"
        "try:\n"
        f"    load_settings(Path({str(config)!r}))\n"
        "except ConfigError as exc:\n"
        "    print(exc)\n"
    )
    assert "tracing.enabled" in out
    assert "pip install 'celery-kafka-bridge[otel]'" in out


def test_with_the_extra_installed_tracing_off_loads_no_tracing(tmp_path) -> None:
    script = (
        "import sys\n"
        "import bridge.cli, bridge.service, bridge.intake, bridge.tracing\n"
        "print('bridge.otel' in sys.modules, bridge.tracing.PUBLISH_HOOKS)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.stdout.strip() == "False []", done.stderr


def test_start_tracing_installs_the_hook_until_shutdown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_SERVICE_NAME", "my-bridge")
    settings = Settings(routes=[{"topic": "orders", "task": "b.c"}], tracing={"enabled": True})
    started = start_tracing(settings)
    try:
        assert started.observer.publish_headers in tracing.PUBLISH_HOOKS
        assert started.provider.resource.attributes["service.name"] == "my-bridge"
        assert trace.get_tracer_provider() is not started.provider, "the global one is untouched"
    finally:
        started.shutdown()
    assert started.observer.publish_headers not in tracing.PUBLISH_HOOKS


def test_the_service_name_defaults_to_the_bridges(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    monkeypatch.delenv("OTEL_RESOURCE_ATTRIBUTES", raising=False)
    settings = Settings(routes=[{"topic": "orders", "task": "b.c"}], tracing={"enabled": True})
    started = start_tracing(settings)
    started.shutdown()
    assert started.provider.resource.attributes["service.name"] == "celery-kafka-bridge"


def test_shutdown_waits_a_bounded_time_for_a_collector_that_does_not_answer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")  # refused
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "3")  # it retries for this long
    settings = Settings(routes=[{"topic": "orders", "task": "b.c"}], tracing={"enabled": True})
    started = start_tracing(settings)
    consumed = record()
    started.observer.on_consumed(consumed)
    started.observer.on_task_finished(consumed, "b.c", "success", 0.1)
    began = time.monotonic()
    started.shutdown(wait=0.5)
    assert time.monotonic() - began < 1.5
    for left in threading.enumerate():  # the export gives up on its own, in the background
        if left.name == "ckb-spans":
            left.join(10)
