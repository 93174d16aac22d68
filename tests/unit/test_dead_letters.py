"""Dead letters: contract headers, and done only after Kafka acknowledged (semantics 1, 7, 8)."""

from __future__ import annotations

import types
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException, Producer, TopicPartition

from bridge import dead_letters
from bridge.core.engine import WorkEngine
from bridge.core.vocabulary import Reason
from bridge.dead_letters import (
    MAX_MESSAGE_BYTES,
    MAX_TRACEBACK_BYTES,
    DeadLetterWriter,
    Failure,
    dlq_headers,
)
from bridge.events import Observers
from bridge.kafka_clients import producer_config
from bridge.rebalance import RebalanceCallbacks
from bridge.records import Record
from bridge.settings import KafkaSettings

CONTRACT_HEADERS = [
    "ckb.reason",
    "ckb.original.topic",
    "ckb.original.partition",
    "ckb.original.offset",
    "ckb.original.timestamp",
    "ckb.group",
    "ckb.task.name",
    "ckb.task.id",
    "ckb.attempts",
    "ckb.error.class",
    "ckb.error.message",
    "ckb.error.traceback",
    "ckb.failed.at",
]

NOW = datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)


def make_record(
    partition: int = 2,
    offset: int = 17,
    headers: tuple[tuple[str, bytes | None], ...] = (),
    value: bytes | None = b"\x00\xffraw value",
    key: bytes | None = b"\xfekey",
) -> Record:
    return Record(
        topic="orders",
        partition=partition,
        offset=offset,
        key=key,
        value=value,
        headers=headers,
        timestamp_ms=1_700_000_000_321,
    )


FAILURE = Failure(
    reason="task_failed",
    task_name="tasks.examples.process_order",
    task_id="0b4c7a1e-0000-5000-8000-000000000001",
    attempts=3,
    error_class="ValueError",
    error_message="bad order",
    traceback="Traceback (most recent call last):\nValueError: bad order\n",
)


def header_map(headers: list[tuple[str, bytes | None]]) -> dict[str, bytes | None]:
    return dict(headers)


# -- headers ----------------------------------------------------------------------------


def test_all_contract_headers_present_as_utf8_bytes() -> None:
    headers = dlq_headers(make_record(), FAILURE, "orders-bridge", NOW)
    names = [name for name, _ in headers]
    assert names == CONTRACT_HEADERS  # no original headers: exactly the contract, in order
    values = header_map(headers)
    for name in CONTRACT_HEADERS:
        value = values[name]
        assert isinstance(value, bytes)
        value.decode("utf-8")
    assert values == {
        "ckb.reason": b"task_failed",
        "ckb.original.topic": b"orders",
        "ckb.original.partition": b"2",
        "ckb.original.offset": b"17",
        "ckb.original.timestamp": b"1700000000321",
        "ckb.group": b"orders-bridge",
        "ckb.task.name": b"tasks.examples.process_order",
        "ckb.task.id": b"0b4c7a1e-0000-5000-8000-000000000001",
        "ckb.attempts": b"3",
        "ckb.error.class": b"ValueError",
        "ckb.error.message": b"bad order",
        "ckb.error.traceback": FAILURE.traceback.encode(),
        "ckb.failed.at": values["ckb.failed.at"],
    }


def test_the_reasons_are_the_contract_ones() -> None:
    contract = ["task_failed", "task_revoked", "task_timeout", "decode_error", "no_route"]
    assert [reason.value for reason in Reason] == contract  # DESIGN.md, DLQ record


@pytest.mark.parametrize("reason", list(Reason))
def test_every_reason_is_written_as_is(reason: Reason) -> None:
    failure = Failure(reason=reason)
    values = header_map(dlq_headers(make_record(), failure, "g", NOW))
    assert values["ckb.reason"] == reason.encode()
    # decode/route errors have no task: empty strings, still present
    assert values["ckb.task.name"] == b""
    assert values["ckb.attempts"] == b"0"


def test_non_ascii_text_is_utf8() -> None:
    failure = Failure(reason="task_failed", error_message="prix non valide: 12 €")
    values = header_map(dlq_headers(make_record(), failure, "gruppe-ä", NOW))
    assert values["ckb.error.message"] == "prix non valide: 12 €".encode()
    assert values["ckb.group"] == "gruppe-ä".encode()


def test_original_headers_kept_byte_for_byte_and_first() -> None:
    original: tuple[tuple[str, bytes | None], ...] = (
        ("traceparent", b"00-abc-01"),
        ("binary", b"\x00\xff\xfe"),
        ("empty", None),
        ("traceparent", b"duplicate names are legal"),
        ("zero", b""),
    )
    headers = dlq_headers(make_record(headers=original), FAILURE, "g", NOW)
    assert headers[: len(original)] == list(original)
    assert [name for name, _ in headers[len(original) :]] == CONTRACT_HEADERS


def test_existing_ckb_headers_replaced_not_duplicated() -> None:
    original: tuple[tuple[str, bytes | None], ...] = (
        ("ckb.reason", b"no_route"),
        ("keep", b"1"),
        ("ckb.attempts", b"99"),
        ("ckb.custom.from.earlier.hop", b"x"),
    )
    headers = dlq_headers(make_record(headers=original), FAILURE, "g", NOW)
    names = [name for name, _ in headers]
    assert names.count("ckb.reason") == 1
    assert names.count("ckb.attempts") == 1
    assert "ckb.custom.from.earlier.hop" not in names
    values = header_map(headers)
    assert values["ckb.reason"] == b"task_failed"
    assert values["ckb.attempts"] == b"3"
    assert headers[0] == ("keep", b"1")


def test_traceback_and_message_are_bounded() -> None:
    failure = Failure(
        reason="task_failed",
        error_message="é" * 10_000,
        traceback="Traceback line ✓\n" * 5_000,
    )
    values = header_map(dlq_headers(make_record(), failure, "g", NOW))
    traceback = values["ckb.error.traceback"]
    message = values["ckb.error.message"]
    assert traceback is not None
    assert message is not None
    assert len(traceback) <= MAX_TRACEBACK_BYTES == 8192
    assert len(message) <= MAX_MESSAGE_BYTES
    # still valid UTF-8 (no multi-byte character cut in half), and says it was cut
    assert traceback.decode("utf-8").startswith("Traceback line ✓\n")
    assert message.decode("utf-8").endswith("[truncated]")
    assert traceback.decode("utf-8").endswith("[truncated]")
    # substantial part kept
    assert len(traceback) > MAX_TRACEBACK_BYTES - 100


def test_short_texts_are_not_marked_truncated() -> None:
    failure = Failure(reason="task_failed", error_message="x" * MAX_MESSAGE_BYTES)
    values = header_map(dlq_headers(make_record(), failure, "g", NOW))
    assert values["ckb.error.message"] == b"x" * MAX_MESSAGE_BYTES


def test_failed_at_is_iso8601_utc() -> None:
    local = datetime(2024, 5, 6, 9, 8, 9, 123456, tzinfo=timezone(timedelta(hours=2)))
    value = header_map(dlq_headers(make_record(), FAILURE, "g", local))["ckb.failed.at"]
    assert value is not None
    text = value.decode()
    parsed = datetime.fromisoformat(text)
    assert parsed.utcoffset() == timedelta(0)
    assert parsed == local.replace(microsecond=123_000)  # millisecond precision
    assert text.startswith("2024-05-06T07:08:09.123")
    assert text.endswith(("+00:00", "Z"))


# -- writer -----------------------------------------------------------------------------


class FakeProducer:
    """confluent-kafka Producer stand-in: delivery reports are served by poll()/flush()."""

    def __init__(self) -> None:
        self.produced: list[dict[str, Any]] = []
        self.reports: list[tuple[Callable[[Any, Any], None], dict[str, Any]]] = []
        self.fail_next_deliveries: list[object] = []  # errors for the next delivery reports
        self.raise_on_produce: list[BaseException] = []
        self.polls: list[float] = []

    def produce(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        headers: list[tuple[str, bytes | None]] | None = None,
        on_delivery: Callable[[Any, Any], None] | None = None,
    ) -> None:
        if self.raise_on_produce:
            raise self.raise_on_produce.pop(0)
        message = {"topic": topic, "value": value, "key": key, "headers": headers}
        self.produced.append(message)
        assert on_delivery is not None
        self.reports.append((on_delivery, message))

    def poll(self, timeout: float) -> int:
        self.polls.append(timeout)
        served = 0
        while self.reports:
            callback, message = self.reports.pop(0)
            error = self.fail_next_deliveries.pop(0) if self.fail_next_deliveries else None
            callback(error, message)
            served += 1
        return served

    def flush(self, timeout: float) -> int:
        self.poll(timeout)
        return len(self.reports)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(dead_letters, "time", types.SimpleNamespace(monotonic=fake.monotonic))
    return fake


class Done:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> None:
        self.calls += 1


def test_on_done_only_after_successful_delivery_report(clock: Clock) -> None:
    producer = FakeProducer()
    writer = DeadLetterWriter(producer, group="orders-bridge")
    done = Done()
    record = make_record(headers=(("h", b"v"),))
    writer.send(record, "orders.dlq", FAILURE, done)
    assert done.calls == 0  # produced is not acknowledged
    assert writer.pending == 1
    assert len(producer.produced) == 1
    message = producer.produced[0]
    assert message["topic"] == "orders.dlq"
    assert message["value"] == record.value
    assert message["key"] == record.key
    assert message["headers"][0] == ("h", b"v")
    assert header_map(message["headers"])["ckb.group"] == b"orders-bridge"
    writer.poll()
    assert done.calls == 1
    assert writer.pending == 0
    writer.poll()
    assert done.calls == 1


def test_delivery_error_retries_after_backoff_without_on_done(clock: Clock) -> None:
    producer = FakeProducer()
    producer.fail_next_deliveries = ["_MSG_TIMED_OUT", "_MSG_TIMED_OUT"]
    writer = DeadLetterWriter(producer, group="g", retry_max=30.0)
    done = Done()
    writer.send(make_record(), "orders.dlq", FAILURE, done)
    writer.poll()  # first delivery report: error -> retry in 1 s
    assert done.calls == 0
    assert writer.pending == 1
    assert len(producer.produced) == 1
    clock.now += 0.9
    writer.poll()  # backoff not over yet
    assert len(producer.produced) == 1
    clock.now += 0.2
    writer.poll()  # re-produced
    assert len(producer.produced) == 2
    assert done.calls == 0
    assert writer.pending == 1
    writer.poll()  # its delivery report: error again -> retry in 2 s (backoff grew)
    assert done.calls == 0
    assert writer.pending == 1
    clock.now += 1.9
    writer.poll()
    assert len(producer.produced) == 2
    clock.now += 0.2
    writer.poll()  # re-produced; in flight until the next poll serves its report
    assert len(producer.produced) == 3
    assert done.calls == 0
    assert writer.pending == 1
    writer.poll()
    assert done.calls == 1
    assert writer.pending == 0
    # the same record went out each time
    assert {m["value"] for m in producer.produced} == {make_record().value}
    assert {m["key"] for m in producer.produced} == {make_record().key}


def test_backoff_is_capped_by_retry_max(clock: Clock) -> None:
    producer = FakeProducer()
    producer.fail_next_deliveries = ["err"] * 20
    writer = DeadLetterWriter(producer, group="g", retry_max=2.0)
    writer.send(make_record(), "orders.dlq", FAILURE, Done())
    for attempt in range(2, 14):
        writer.poll()  # serves the failed report, schedules the retry
        clock.now += 2.0  # uncapped, the 12th backoff would be 0.5 * 2**10 s
        writer.poll()
        assert len(producer.produced) == attempt
    assert writer.pending == 1


def test_buffer_error_on_produce_is_retried_not_lost(clock: Clock) -> None:
    producer = FakeProducer()
    producer.raise_on_produce = [BufferError("Local: Queue full")]
    writer = DeadLetterWriter(producer, group="g")
    done = Done()
    writer.send(make_record(), "orders.dlq", FAILURE, done)  # must not raise
    assert producer.produced == []
    assert writer.pending == 1
    assert writer.in_flight == 0
    writer.poll()
    assert producer.produced == []  # waiting for backoff
    clock.now += 60
    writer.poll()
    assert len(producer.produced) == 1
    assert done.calls == 0
    writer.poll()
    assert done.calls == 1
    assert writer.pending == 0


def test_other_produce_exception_is_retried(clock: Clock) -> None:
    producer = FakeProducer()
    producer.raise_on_produce = [RuntimeError("unknown topic"), RuntimeError("unknown topic")]
    writer = DeadLetterWriter(producer, group="g")
    done = Done()
    writer.send(make_record(), "orders.dlq", FAILURE, done)
    for _ in range(3):
        clock.now += 60
        writer.poll()
    writer.poll()
    assert len(producer.produced) == 1
    assert done.calls == 1


def test_pending_counts_in_flight_and_waiting(clock: Clock) -> None:
    producer = FakeProducer()
    writer = DeadLetterWriter(producer, group="g")
    for offset in range(3):
        writer.send(make_record(offset=offset), "orders.dlq", FAILURE, Done())
    producer.raise_on_produce = [BufferError("full")]
    writer.send(make_record(offset=3), "orders.dlq", FAILURE, Done())
    assert writer.in_flight == 3
    assert writer.pending == 4
    producer.fail_next_deliveries = ["err"]
    writer.poll()
    assert writer.in_flight == 0
    assert writer.pending == 2  # one failed delivery and one failed produce wait for retry


def test_forget_drops_retries_of_given_partitions(clock: Clock) -> None:
    producer = FakeProducer()
    writer = DeadLetterWriter(producer, group="g")
    done = {partition: Done() for partition in (0, 1, 2)}
    for partition in (0, 1, 2):
        writer.send(make_record(partition=partition), "orders.dlq", FAILURE, done[partition])
    producer.fail_next_deliveries = ["err", "err", "err"]
    writer.poll()
    assert writer.pending == 3
    writer.forget({("orders", 0), ("orders", 2), ("payments", 1)})
    assert writer.pending == 1
    clock.now += 60
    writer.poll()
    writer.poll()
    assert [m["headers"][2] for m in producer.produced[3:]] == [("ckb.original.partition", b"1")]
    assert (done[0].calls, done[1].calls, done[2].calls) == (0, 1, 0)
    assert writer.pending == 0


def test_flush_reports_unacknowledged_including_retries(clock: Clock) -> None:
    producer = FakeProducer()
    writer = DeadLetterWriter(producer, group="g")
    done = Done()
    writer.send(make_record(offset=1), "orders.dlq", FAILURE, done)
    assert writer.flush(1.0) == 0
    assert done.calls == 1
    producer.fail_next_deliveries = ["err"]
    writer.send(make_record(offset=2), "orders.dlq", FAILURE, Done())
    assert writer.flush(1.0) == 1  # the failed one waits for a retry


def test_a_write_waits_while_its_topic_is_not_ready(clock: Clock) -> None:
    producer = FakeProducer()
    ready = {"orders.dlq": False}
    asked: list[str] = []

    class Gate:
        polls = 0

        def ready(self, topic: str) -> bool:
            asked.append(topic)
            return ready[topic]

        def poll(self) -> None:
            self.polls += 1

    gate = Gate()
    writer = DeadLetterWriter(producer, group="g", topics=gate)
    done = Done()
    writer.send(make_record(), "orders.dlq", FAILURE, done)
    writer.poll()
    assert producer.produced == [], "held while the topic is being created"
    assert writer.pending == 1
    assert writer.flush(0) == 1, "a held dead letter is not flushed"
    ready["orders.dlq"] = True
    writer.poll()  # released: produced
    assert len(producer.produced) == 1
    writer.poll()  # its delivery report
    assert done.calls == 1
    assert writer.pending == 0
    assert asked == ["orders.dlq"] * 3
    assert gate.polls == 3, "the gate's client is served on every poll"


def test_held_writes_of_a_revoked_partition_are_forgotten(clock: Clock) -> None:
    producer = FakeProducer()

    class Closed:
        def ready(self, topic: str) -> bool:
            return False

        def poll(self) -> None:
            pass

    writer = DeadLetterWriter(producer, group="g", topics=Closed())
    record = make_record()
    writer.send(record, "orders.dlq", FAILURE, Done())
    assert writer.pending == 1
    writer.forget({record.tp})
    assert writer.pending == 0


# -- dead letters that always land (issue 10, part 3) -----------------------------------

TOO_LARGE = KafkaError(KafkaError.MSG_SIZE_TOO_LARGE)
DENIED = KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED)


def written_values(producer: FakeProducer) -> list[bytes | None]:
    return [message["value"] for message in producer.produced]


def test_a_letter_too_large_for_its_topic_is_tried_alone_then_written_without_its_value(
    clock: Clock,
) -> None:
    producer = FakeProducer()
    writer = DeadLetterWriter(producer, group="g")
    big = make_record(offset=1, value=b"x" * 5000, headers=(("trace", b"t1"),))
    small = make_record(offset=2, value=b"small")
    done_big, done_small = Done(), Done()
    writer.send(big, "orders.dlq", FAILURE, done_big)
    writer.send(small, "orders.dlq", FAILURE, done_small)
    # one batch: the broker refuses both with MESSAGE_TOO_LARGE
    producer.fail_next_deliveries = [TOO_LARGE, TOO_LARGE, TOO_LARGE]
    writer.poll()  # both refused; each is tried again alone, one at a time
    writer.poll()
    assert written_values(producer)[2:] == [big.value], "the first suspect goes alone"
    writer.poll()  # alone, still too large: its value is dropped; the next suspect goes alone
    assert written_values(producer)[3:] == [small.value]
    writer.poll()  # the small one landed alone; now the big one without its value
    assert done_small.calls == 1
    assert written_values(producer)[4:] == [None]
    writer.poll()
    assert done_big.calls == 1
    assert writer.pending == 0
    last = producer.produced[-1]
    assert last["key"] == big.key
    headers = header_map(last["headers"])
    assert headers["trace"] == b"t1", "the record's own headers are kept"
    assert headers["ckb.value.dropped"] == b"5000"
    assert headers["ckb.reason"] == b"task_failed"
    assert writer.state().values_dropped == {"orders.dlq": 1}


def test_a_letter_larger_than_the_producer_allows_is_written_without_its_value(
    clock: Clock,
) -> None:
    producer = FakeProducer()
    producer.raise_on_produce = [KafkaException(TOO_LARGE)]
    writer = DeadLetterWriter(producer, group="g")
    done = Done()
    writer.send(make_record(value=b"y" * 100), "orders.dlq", FAILURE, done)
    writer.poll()
    writer.poll()
    assert written_values(producer) == [None]
    assert header_map(producer.produced[0]["headers"])["ckb.value.dropped"] == b"100"
    assert done.calls == 1


def test_a_refused_topic_is_retried_without_holding_up_a_revoke_and_shows(
    clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    producer = FakeProducer()
    writer = DeadLetterWriter(producer, group="g", retry_max=30.0)
    record = make_record(partition=3)
    done = Done()
    writer.send(record, "orders.dlq", FAILURE, done)
    assert writer.pending_for({record.tp}) == 1, "in flight: it may land"
    producer.fail_next_deliveries = [DENIED] * 5
    with caplog.at_level("ERROR"):
        writer.poll()
        for _ in range(4):
            clock.now += 31
            writer.poll()
            writer.poll()
    assert done.calls == 0, "never finished: its offset stays uncommitted"
    assert writer.pending == 1
    assert writer.pending_for({record.tp}) == 0, "a revoke need not wait for it"
    assert writer.pending_for() == 0
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1, "said once, not per retry"
    assert "orders.dlq" in errors[0].getMessage()
    assert "TOPIC_AUTHORIZATION_FAILED" in errors[0].getMessage()
    assert "WRITE" in errors[0].getMessage()
    state = writer.state()
    assert state.pending == {("orders.dlq", "refused"): 1}
    assert state.problem is not None and "orders.dlq" in state.problem
    assert writer.problem == state.problem
    # the operator fixes the ACL: the next retry lands and the problem goes away
    clock.now += 31
    writer.poll()
    writer.poll()
    assert done.calls == 1
    assert writer.pending == 0
    assert writer.state().problem is None


def test_retries_of_a_refused_topic_back_off(clock: Clock) -> None:
    producer = FakeProducer()
    producer.fail_next_deliveries = [DENIED] * 50
    writer = DeadLetterWriter(producer, group="g", retry_max=30.0)
    writer.send(make_record(), "bad topic!", FAILURE, Done())
    for _ in range(600):  # ten minutes in 1 s turns
        clock.now += 1
        writer.poll()
    assert len(producer.produced) < 30


def test_a_fatal_producer_error_rebuilds_the_producer_and_sends_again(clock: Clock) -> None:
    first, second = FakeProducer(), FakeProducer()
    built = [second]
    writer = DeadLetterWriter(first, group="g", rebuild=lambda: built.pop(0))
    done = [Done(), Done()]
    writer.send(make_record(offset=1), "orders.dlq", FAILURE, done[0])
    writer.send(make_record(offset=2), "orders.dlq", FAILURE, done[1])
    first.fail_next_deliveries = [KafkaError(KafkaError._FATAL, "fenced", fatal=True)]
    late_callback, late_message = first.reports.pop()  # the second report comes late
    writer.poll()  # a fatal report: rebuilt at once, both letters go through the new producer
    assert built == []
    assert len(second.produced) == 2
    late_callback(None, late_message)  # the replaced producer's late report is ignored
    writer.poll()
    assert [d.calls for d in done] == [1, 1]
    assert writer.pending == 0
    assert writer.state().rebuilds == 1


def test_a_produce_refused_as_fatal_rebuilds_the_producer(clock: Clock) -> None:
    first, second = FakeProducer(), FakeProducer()
    first.raise_on_produce = [KafkaException(KafkaError(KafkaError._FATAL, "x", fatal=True))]
    writer = DeadLetterWriter(first, group="g", rebuild=lambda: second)
    done = Done()
    writer.send(make_record(), "orders.dlq", FAILURE, done)
    writer.poll()
    writer.poll()
    assert done.calls == 1
    assert len(second.produced) == 1


def test_pending_for_counts_only_the_given_partitions(clock: Clock) -> None:
    producer = FakeProducer()
    writer = DeadLetterWriter(producer, group="g")
    for partition in (0, 1, 1):
        writer.send(make_record(partition=partition), "orders.dlq", FAILURE, Done())
    assert writer.pending_for({("orders", 1)}) == 2
    assert writer.pending_for({("orders", 0), ("payments", 1)}) == 1
    assert writer.pending_for() == 3


def test_a_letter_pending_for_long_makes_a_readiness_problem(clock: Clock) -> None:
    producer = FakeProducer()
    producer.fail_next_deliveries = [KafkaError(KafkaError._MSG_TIMED_OUT)] * 100
    writer = DeadLetterWriter(producer, group="g")
    writer.send(make_record(), "orders.dlq", FAILURE, Done())
    writer.poll()
    assert writer.state().problem is None, "a short outage is not a problem yet"
    for _ in range(20):
        clock.now += 5
        writer.poll()
    state = writer.state()
    assert state.problem is not None and "orders.dlq" in state.problem
    assert "_MSG_TIMED_OUT" in state.problem
    assert sum(state.pending.values()) == 1


def test_a_dead_letter_that_would_feed_a_routed_topic_again_is_not_written(
    clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    producer = FakeProducer()
    writer = DeadLetterWriter(producer, group="g", consumes=lambda topic: topic == "orders-failed")
    done = Done()
    letter = make_record(headers=(("ckb.reason", b"task_failed"),))
    with caplog.at_level("WARNING"):
        writer.send(letter, "orders-failed", FAILURE, done)
    assert producer.produced == []
    assert done.calls == 1, "finished: it is a dead letter already, kept where it is"
    assert writer.state().loops_stopped == {"orders": 1}
    assert "orders-failed" in caplog.text
    # a first failure (no ckb.reason yet) is written as usual, and so is a letter whose
    # dead-letter topic the bridge does not consume
    writer.send(make_record(), "orders-failed", FAILURE, Done())
    writer.send(letter, "orders.dlq.dlq", FAILURE, Done())
    assert [m["topic"] for m in producer.produced] == ["orders-failed", "orders.dlq.dlq"]


def test_worker_exception_text_is_masked_in_the_headers() -> None:
    failure = Failure(
        reason="task_failed",
        error_message="cannot reach redis://app:s3cr3t-pw@cache:6379/0 (password=hunter2)",
        traceback='Traceback ...\nConnectionError: {"token": "tok-123", "user": "bob"}\n'
        "api_key=AKIA999 url=https://u:p4ss@h/x\n",
    )
    values = header_map(dlq_headers(make_record(), failure, "g", NOW))
    message = (values["ckb.error.message"] or b"").decode()
    traceback = (values["ckb.error.traceback"] or b"").decode()
    for secret in ("s3cr3t-pw", "hunter2", "tok-123", "AKIA999", "p4ss"):
        assert secret not in message + traceback
    assert "redis://app:****@cache:6379/0" in message
    assert "bob" in traceback, "only secrets are masked"


def test_revoke_waits_only_for_the_revoked_partitions_letters(clock: Clock) -> None:
    producer = FakeProducer()
    writer = DeadLetterWriter(producer, group="g")
    other = make_record(partition=1)
    writer.send(other, "orders.dlq", FAILURE, Done())  # never acknowledged during the revoke
    producer.reports.clear()
    engine: WorkEngine[Any] = WorkEngine()
    engine.assign(("orders", 0), None)
    now = [0.0]
    turns: list[int] = []

    def wait_turn() -> None:
        turns.append(1)
        now[0] += 0.05
        writer.poll()

    commits = types.SimpleNamespace(commit=lambda sync, tps: None)
    callbacks = RebalanceCallbacks(
        engine,
        None,  # type: ignore[arg-type]
        commits,  # type: ignore[arg-type]
        writer,
        types.SimpleNamespace(unwatch=lambda task_id: None),  # type: ignore[arg-type]
        Observers(),
        lambda: now[0],
        revoke_grace=20.0,
        stopping=lambda: False,
        wait_turn=wait_turn,
    )
    callbacks.on_revoke(None, [TopicPartition("orders", 0)])
    assert now[0] < 1.0, f"waited {now[0]:.1f}s for another partition's dead letter"
    assert writer.pending == 1


def test_dead_letters_are_compressed_unless_configured_otherwise() -> None:
    assert producer_config(KafkaSettings())["compression.type"] == "zstd"
    own = KafkaSettings(producer={"compression.type": "lz4"})
    assert producer_config(own)["compression.type"] == "lz4"
    Producer(producer_config(KafkaSettings()))  # this librdkafka build has zstd


def test_a_fatal_error_without_a_way_to_rebuild_backs_off(clock: Clock) -> None:
    producer = FakeProducer()
    fatal = KafkaException(KafkaError(KafkaError._FATAL, "x", fatal=True))
    producer.raise_on_produce = [fatal] * 10
    writer = DeadLetterWriter(producer, group="g")
    writer.send(make_record(), "orders.dlq", FAILURE, Done())
    for _ in range(5):
        writer.poll()
    assert len(producer.raise_on_produce) == 9, "one attempt, then a backoff"


def test_after_a_refusal_an_unknown_topic_is_the_same_refusal(clock: Clock) -> None:
    # librdkafka answers TOPIC_EXCEPTION once, then refuses that topic locally (_UNKNOWN_TOPIC)
    producer = FakeProducer()
    invalid = KafkaError(KafkaError.TOPIC_EXCEPTION)
    unknown = KafkaException(KafkaError(KafkaError._UNKNOWN_TOPIC))
    writer = DeadLetterWriter(producer, group="g")
    first, second = make_record(offset=1), make_record(offset=2)
    writer.send(first, "bad..name", FAILURE, Done())
    producer.fail_next_deliveries = [invalid]
    writer.poll()
    producer.raise_on_produce = [unknown] * 4
    writer.send(second, "bad..name", FAILURE, Done())
    for _ in range(2):
        clock.now += 31
        writer.poll()
    assert writer.pending == 2
    assert writer.pending_for() == 0, "neither letter can land: a shutdown need not wait"
    problem = writer.state().problem
    assert problem is not None and "TOPIC_EXCEPTION" in problem


def test_a_producer_that_cannot_be_rebuilt_yet_is_rebuilt_later(clock: Clock) -> None:
    first, second = FakeProducer(), FakeProducer()
    first.raise_on_produce = [KafkaException(KafkaError(KafkaError._FATAL, "x", fatal=True))]
    attempts: list[int] = []

    def rebuild() -> FakeProducer:
        attempts.append(1)
        if len(attempts) == 1:
            raise KafkaException(KafkaError(KafkaError._TRANSPORT))
        return second

    writer = DeadLetterWriter(first, group="g", rebuild=rebuild)
    done = Done()
    writer.send(make_record(), "orders.dlq", FAILURE, done)
    writer.poll()  # the first rebuild fails: not raised into the loop
    writer.poll()
    writer.poll()
    assert len(attempts) == 2
    assert done.calls == 1


def test_a_letter_refused_even_without_its_value_lands_whole_once_the_topic_takes_it(
    clock: Clock,
) -> None:
    producer = FakeProducer()
    writer = DeadLetterWriter(producer, group="g")
    record, done = make_record(value=b"z" * 300), Done()
    writer.send(record, "orders.dlq", FAILURE, done)
    producer.fail_next_deliveries = [TOO_LARGE, TOO_LARGE, TOO_LARGE]
    for _ in range(3):  # in a batch, then alone, then without its value: refused each time
        writer.poll()
    assert written_values(producer) == [record.value, record.value, None]
    assert done.calls == 0
    for _ in range(60):  # the operator raised max.message.bytes; the retry comes after backoff
        clock.now += 1.0
        writer.poll()
        if done.calls:
            break
    assert done.calls == 1
    assert written_values(producer)[-1] == record.value, "it lands with its value"
    assert written_values(producer).count(None) == 1, "never tried without its value again"


def test_a_letter_refused_even_without_its_value_is_retried_whole_only(clock: Clock) -> None:
    producer = FakeProducer()
    writer = DeadLetterWriter(producer, group="g")
    record, done = make_record(value=b"z" * 300), Done()
    writer.send(record, "orders.dlq", FAILURE, done)
    producer.fail_next_deliveries = [TOO_LARGE] * 8
    for _ in range(40):  # refused: retried with backoff, whole each time, still too large
        clock.now += 1.0
        writer.poll()
    assert done.calls == 0
    assert written_values(producer)[:3] == [record.value, record.value, None]
    assert len(written_values(producer)) > 3, "retried"
    assert None not in written_values(producer)[3:], "a fix never races a value-less write"
