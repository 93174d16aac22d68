"""``ckb status``: committed offset, end offset and lag of each partition of the group."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, TopicPartition
from rich.console import Console
from rich.table import Table

from bridge.kafka_clients import consumer_config
from bridge.settings import Settings


@dataclass
class PartitionStatus:
    topic: str
    partition: int
    committed: int | None
    end: int
    lag: int


def routed_topics(settings: Settings, existing: list[str]) -> list[str]:
    """Existing topics the routes match (exact names and ``^regex`` patterns)."""
    chosen = []
    for topic in sorted(existing):
        for route in settings.routes:
            hit = re.match(route.topic, topic) if route.is_pattern else route.topic == topic
            if hit:
                chosen.append(topic)
                break
    return chosen


def group_status(settings: Settings, timeout: float = 10.0) -> list[PartitionStatus]:
    consumer: Any = Consumer(consumer_config(settings.kafka))
    try:
        metadata = consumer.list_topics(timeout=timeout)
        tps = [
            TopicPartition(topic, p)
            for topic in routed_topics(settings, list(metadata.topics))
            for p in sorted(metadata.topics[topic].partitions)
        ]
        committed = consumer.committed(tps, timeout=timeout) if tps else []
        rows = []
        for tp in committed:
            _, end = consumer.get_watermark_offsets(tp, timeout=timeout)
            offset = tp.offset if tp.offset >= 0 else None
            rows.append(PartitionStatus(tp.topic, tp.partition, offset, end, end - (offset or 0)))
        return rows
    finally:
        consumer.close()


def render_status(group: str, rows: list[PartitionStatus]) -> None:
    table = Table(title=f"group {group}")
    for name in ("topic", "partition", "committed", "end", "lag"):
        table.add_column(name, justify="left" if name == "topic" else "right")
    for row in rows:
        committed = "-" if row.committed is None else str(row.committed)
        table.add_row(row.topic, str(row.partition), committed, str(row.end), str(row.lag))
    Console().print(table)
    if not rows:
        Console(stderr=True).print("no existing topic matches the routes")
