"""DeadLetterTopics: each topic asked for once; its writes wait for the answer."""

from __future__ import annotations

import logging
from concurrent.futures import Future
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException

from bridge.dlq_topics import DeadLetterTopics
from bridge.settings import DeadLetterSettings


class RecordingAdmin:
    """Keeps every CreateTopics request; the test answers the futures."""

    def __init__(self) -> None:
        self.requests: list[Any] = []
        self.futures: list[Future[None]] = []
        self.polls: list[float] = []

    def poll(self, timeout: float) -> int:
        self.polls.append(timeout)
        return 0

    def create_topics(self, topics: list[Any], **_: Any) -> dict[str, Future[None]]:
        self.requests.extend(topics)
        futures = {topic.topic: Future[None]() for topic in topics}
        self.futures.extend(futures.values())
        return futures


def refused(code: int) -> KafkaException:
    return KafkaException(KafkaError(code))


def test_writes_wait_until_kafka_answered_the_one_request() -> None:
    admin = RecordingAdmin()
    settings = DeadLetterSettings(
        partitions=3, replication_factor=2, topic_config={"retention.ms": 86_400_000}
    )
    topics = DeadLetterTopics(admin, settings)
    assert [topics.ready("orders.dlq") for _ in range(3)] == [False, False, False]
    assert topics.ready("payments.dlq") is False
    assert [r.topic for r in admin.requests] == ["orders.dlq", "payments.dlq"]
    first = admin.requests[0]
    assert (first.num_partitions, first.replication_factor) == (3, 2)
    assert first.config == {"retention.ms": "86400000"}
    admin.futures[0].set_result(None)
    assert topics.ready("orders.dlq") is True
    assert topics.ready("payments.dlq") is False, "still unanswered"
    assert len(admin.requests) == 2


def test_defaults_leave_partitions_and_replication_to_the_broker() -> None:
    admin = RecordingAdmin()
    DeadLetterTopics(admin, DeadLetterSettings()).ready("orders.dlq")
    assert (admin.requests[0].num_partitions, admin.requests[0].replication_factor) == (-1, -1)


def test_switched_off_nothing_is_asked_and_nothing_waits() -> None:
    admin = RecordingAdmin()
    assert DeadLetterTopics(admin, DeadLetterSettings(create_topics=False)).ready("x.dlq")
    assert admin.requests == []


def test_an_existing_topic_is_ready_and_not_an_error(caplog: pytest.LogCaptureFixture) -> None:
    admin = RecordingAdmin()
    topics = DeadLetterTopics(admin, DeadLetterSettings())
    topics.ready("orders.dlq")
    admin.futures[0].set_exception(refused(KafkaError.TOPIC_ALREADY_EXISTS))
    assert topics.ready("orders.dlq") is True
    assert len(admin.requests) == 1
    assert "cannot create" not in caplog.text


def test_a_refused_request_lets_one_write_go_then_asks_again_and_warns_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    admin = RecordingAdmin()
    topics = DeadLetterTopics(admin, DeadLetterSettings())
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            assert topics.ready("orders.dlq") is False  # asks
            admin.futures[-1].set_exception(refused(KafkaError.TOPIC_AUTHORIZATION_FAILED))
            assert topics.ready("orders.dlq") is True  # the write goes (and is retried)
    assert len(admin.requests) == 3
    assert caplog.text.count("cannot create dead-letter topic orders.dlq") == 1
    assert "TOPIC_AUTHORIZATION_FAILED" in caplog.text
    assert "grant the bridge's principal CREATE" in caplog.text


def test_a_request_that_cannot_be_sent_counts_as_refused() -> None:
    class BrokenAdmin(RecordingAdmin):
        def create_topics(self, topics: list[Any], **_: Any) -> dict[str, Future[None]]:
            raise KafkaException(KafkaError(KafkaError._TRANSPORT))

    topics = DeadLetterTopics(BrokenAdmin(), DeadLetterSettings())
    assert topics.ready("orders.dlq") is False
    assert topics.ready("orders.dlq") is True


def test_a_created_topic_is_logged_and_not_asked_again(caplog: pytest.LogCaptureFixture) -> None:
    admin = RecordingAdmin()
    topics = DeadLetterTopics(admin, DeadLetterSettings())
    with caplog.at_level(logging.INFO):
        topics.ready("orders.dlq")
        admin.futures[0].set_result(None)
        assert topics.ready("orders.dlq") is True
    assert len(admin.requests) == 1
    assert "created dead-letter topic orders.dlq" in caplog.text


@pytest.mark.parametrize("field", ["partitions", "replication_factor"])
def test_zero_partitions_or_replicas_is_a_config_error(field: str) -> None:
    with pytest.raises(ValueError, match="at least 1, or -1"):
        DeadLetterSettings(**{field: 0})


def test_poll_serves_the_admin_client_without_waiting() -> None:
    admin = RecordingAdmin()
    DeadLetterTopics(admin, DeadLetterSettings()).poll()
    assert admin.polls == [0]
