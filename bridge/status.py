"""``ckb status``: committed offset, end offset and lag of each partition of the group.

Kafka answers for committed and end offsets; a running bridge's ``/status`` endpoint, when
reachable, adds what only the bridge knows: tasks in flight and whether a partition is paused.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, KafkaException, TopicPartition
from rich.console import Console
from rich.table import Table

from bridge.access_errors import (
    AccessRefusedError,
    KafkaClient,
    RefusalEvents,
    list_topics,
    refusal,
)
from bridge.core.vocabulary import TP
from bridge.kafka_clients import consumer_config, quiet_kafka_logger
from bridge.lag import partition_lag
from bridge.routing import Router
from bridge.settings import Settings


@dataclass
class PartitionStatus:
    topic: str
    partition: int
    committed: int | None
    end: int
    lag: int
    #: from a running bridge's /status; None when no bridge reported the partition
    in_flight: int | None = None
    paused: bool | None = None


def routed_topics(settings: Settings, existing: list[str]) -> list[str]:
    """Existing topics the bridge consumes: those its :class:`Router` matches (so never a
    dead-letter topic through a ``^regex`` route)."""
    router = Router(settings.routes)
    return [topic for topic in sorted(existing) if router.match(topic) is not None]


def group_status(settings: Settings, timeout: float = 10.0) -> list[PartitionStatus]:
    """Raises :class:`AccessRefusedError` for a refused password, certificate or grant."""
    events = RefusalEvents()
    config = {**consumer_config(settings.kafka), "logger": quiet_kafka_logger("status")}
    consumer: Any = Consumer({**config, "error_cb": events})
    try:
        return _group_status(consumer, events, settings, timeout)
    except KafkaException as exc:
        consumer.poll(0)  # serves the error events that say why
        problem = refusal(exc, events, KafkaClient.of(config), settings.kafka.group_id)
        if problem is not None:
            raise AccessRefusedError(problem) from exc
        raise
    finally:
        consumer.close()


def _group_status(
    consumer: Any, events: RefusalEvents, settings: Settings, timeout: float
) -> list[PartitionStatus]:
    metadata = list_topics(consumer, events, timeout)
    tps = [
        TopicPartition(topic, p)
        for topic in routed_topics(settings, list(metadata.topics))
        for p in sorted(metadata.topics[topic].partitions)
    ]
    committed = consumer.committed(tps, timeout=timeout) if tps else []
    rows = []
    for tp in committed:
        first, end = consumer.get_watermark_offsets(tp, timeout=timeout)
        offset = tp.offset if tp.offset >= 0 else None
        lag = partition_lag(end, offset, first)
        rows.append(PartitionStatus(tp.topic, tp.partition, offset, end, lag))
    return rows


class BridgeStatusError(Exception):
    """A bridge's /status endpoint did not answer with its JSON."""


def default_bridge_url(settings: Settings) -> str | None:
    """Where a bridge run with these settings on this machine serves /status, if anywhere
    (always, metrics enabled or not; unknowable with port 0)."""
    metrics = settings.metrics
    if metrics.port == 0:
        return None
    host = "127.0.0.1" if metrics.host in ("0.0.0.0", "::", "") else metrics.host
    return f"http://{'[' + host + ']' if ':' in host else host}:{metrics.port}"


def bridge_partitions(url: str, timeout: float = 1.0) -> dict[TP, dict[str, Any]]:
    """The partitions a bridge reports at ``url``/status, by (topic, partition)."""
    if not url.startswith(("http://", "https://")):
        raise BridgeStatusError(f"{url}: expected an http:// or https:// URL")
    endpoint = url.rstrip("/") + "/status"
    try:
        with urllib.request.urlopen(endpoint, timeout=timeout) as response:  # noqa: S310 (scheme checked)
            report = json.loads(response.read())
        return {(p["topic"], int(p["partition"])): p for p in report["partitions"]}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BridgeStatusError(f"{endpoint}: {exc}") from exc


def add_bridge_state(
    rows: list[PartitionStatus], settings: Settings, urls: tuple[str, ...]
) -> list[str]:
    """Fill in-flight and paused from the bridges at ``urls`` (default: this machine's, quietly).

    Returns warnings for the URLs given explicitly that did not answer.
    """
    explicit = bool(urls)
    default = default_bridge_url(settings)
    targets = list(urls) if explicit else ([default] if default else [])
    reported: dict[TP, dict[str, Any]] = {}
    warnings = []
    for url in targets:
        try:
            reported.update(bridge_partitions(url, timeout=2.0 if explicit else 0.5))
        except BridgeStatusError as exc:
            if explicit:
                warnings.append(f"no bridge status from {exc}")
    for row in rows:
        state = reported.get((row.topic, row.partition))
        if state is not None:
            row.in_flight, row.paused = int(state["in_flight"]), bool(state["paused"])
    return warnings


def render_status(group: str, rows: list[PartitionStatus]) -> None:
    table = Table(title=f"group {group}")
    with_bridge = any(row.in_flight is not None for row in rows)
    names = ["topic", "partition", "committed", "end", "lag"]
    for name in names + (["in flight", "paused"] if with_bridge else []):
        table.add_column(name, justify="left" if name == "topic" else "right")
    for row in rows:
        committed = "-" if row.committed is None else str(row.committed)
        cells = [row.topic, str(row.partition), committed, str(row.end), str(row.lag)]
        if with_bridge:
            cells += _bridge_cells(row)
        table.add_row(*cells)
    Console().print(table)
    if not rows:
        Console(stderr=True).print(
            "no existing topic matches the routes (with ACLs, Kafka hides the topics the "
            "principal may not DESCRIBE)"
        )


def _bridge_cells(row: PartitionStatus) -> list[str]:
    if row.in_flight is None:
        return ["-", "-"]  # no bridge reported this partition (another member holds it)
    return [str(row.in_flight), "yes" if row.paused else "no"]
