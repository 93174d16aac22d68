"""Where a replay starts and ends on each partition of the dead-letter topic.

From the replay group's committed offsets and the watermarks captured at start, so a replay
terminates: letters written while it runs are left for the next one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaException, TopicPartition

from bridge.replay.commits import retriable
from bridge.replay.options import ReplayError

#: seconds to wait for metadata, committed offsets and watermarks
METADATA_TIMEOUT = 10.0


@dataclass(frozen=True)
class PartitionPlan:
    """What to read of one dead-letter partition: ``[start, end)``, end captured at start."""

    partition: int
    start: int
    end: int
    committed: int | None

    @property
    def pending(self) -> int:
        return max(0, self.end - self.start)


def plan_partition(partition: int, committed: int, low: int, high: int) -> PartitionPlan:
    """Start at the committed offset, or at the low watermark when there is none (or it
    was deleted by retention: ``auto.offset.reset=earliest``)."""
    known = committed if committed >= 0 else None
    start = low if known is None else max(known, low)
    return PartitionPlan(partition, start, high, known)


def committed_offsets(consumer: Any, tps: list[Any], attempts: int = 20) -> list[Any]:
    """``Consumer.committed``, retried while the group coordinator is still loading."""
    for attempt in range(attempts):
        try:
            return list(consumer.committed(tps, timeout=METADATA_TIMEOUT))
        except KafkaException as exc:
            if attempt == attempts - 1 or not retriable(exc):
                raise
            time.sleep(0.5)
    raise AssertionError("unreachable")


def partition_count(consumer: Any, topic: str) -> int | None:
    """Partitions of ``topic``, or None when it does not exist (never auto-creates it)."""
    metadata = consumer.list_topics(topic, timeout=METADATA_TIMEOUT)
    info = metadata.topics.get(topic)
    if info is None or info.error is not None:
        return None
    return len(info.partitions)


def plan_topic(consumer: Any, topic: str) -> list[PartitionPlan]:
    """Where the replay group stands on each partition of ``topic``, and where it ends."""
    count = partition_count(consumer, topic)
    if count is None:
        raise ReplayError(
            f"topic {topic!r} does not exist (check --from), or Kafka hides it: the principal "
            "needs DESCRIBE on it"
        )
    tps = [TopicPartition(topic, p) for p in range(count)]
    plans = []
    for tp in committed_offsets(consumer, tps):
        if tp.error is not None:
            raise ReplayError(f"cannot read the committed offset of {topic}[{tp.partition}]")
        low, high = consumer.get_watermark_offsets(
            TopicPartition(topic, tp.partition), timeout=METADATA_TIMEOUT
        )
        plans.append(plan_partition(tp.partition, tp.offset, low, high))
    return plans
