"""Committing the replay group's progress through the Admin API, with a timeout and retries."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from confluent_kafka import KafkaError, KafkaException, TopicPartition

from bridge.kafka_clients import kafka_error_of
from bridge.replay.options import ReplayError

#: seconds to wait for Kafka's answer to a commit
COMMIT_TIMEOUT = 30.0

TP = tuple[str, int]
#: commits the replay group's offsets (``{(topic, partition): offset}``) or raises
CommitOffsets = Callable[[dict[TP, int]], None]


#: group coordinator errors worth another try, whether or not the error says retriable
#: (per-partition errors in Admin API answers never do)
COORDINATOR_BUSY = frozenset(
    {
        KafkaError.NOT_COORDINATOR,
        KafkaError.COORDINATOR_NOT_AVAILABLE,
        KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
        KafkaError.REQUEST_TIMED_OUT,
        KafkaError.NETWORK_EXCEPTION,
    }
)


def retriable(exc: KafkaException) -> bool:
    error = kafka_error_of(exc)
    if error is None:
        return False
    return bool(error.retriable()) or error.code() in COORDINATOR_BUSY


class GroupOffsets:
    """Commits the replay group's offsets through the Admin API, with a timeout.

    Not ``Consumer.commit``: librdkafka gives a commit no timeout, so with the group
    coordinator unreachable a synchronous commit blocks for good (signals included), and
    ``Consumer.close`` waits for good on an unanswered asynchronous one. The replay never
    joins its group, so the group is empty and the Admin API may set its offsets.
    """

    def __init__(self, admin: Any, group: str) -> None:
        self._admin = admin
        self._group = group

    def __call__(self, points: dict[TP, int]) -> None:
        """Commit ``points``; retriable errors (the coordinator moving, loading) are retried
        for up to ``COMMIT_TIMEOUT`` seconds."""
        deadline = time.monotonic() + COMMIT_TIMEOUT
        while True:
            try:
                self._commit_once(points, max(1.0, deadline - time.monotonic()))
                return
            except KafkaException as exc:
                if not retriable(exc) or time.monotonic() >= deadline:
                    raise
                time.sleep(0.5)

    def _commit_once(self, points: dict[TP, int], timeout: float) -> None:
        from confluent_kafka import ConsumerGroupTopicPartitions

        offsets = [TopicPartition(topic, p, offset) for (topic, p), offset in points.items()]
        request = ConsumerGroupTopicPartitions(self._group, offsets)
        futures = self._admin.alter_consumer_group_offsets([request], request_timeout=timeout)
        try:
            answer = futures[self._group].result(timeout=timeout + 5)
        except TimeoutError:
            raise ReplayError(f"no answer from Kafka within {timeout:.0f}s") from None
        for tp in answer.topic_partitions:
            if tp.error is not None:
                raise KafkaException(tp.error)
