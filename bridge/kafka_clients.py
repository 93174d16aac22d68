"""librdkafka configuration for the bridge's consumer and dead-letter producer, and reading
the ``KafkaError`` out of what confluent-kafka raises."""

from __future__ import annotations

import logging
import socket
from typing import Any

from confluent_kafka import KafkaError

from bridge.settings import CLASSIC_ONLY, KafkaSettings

#: librdkafka properties that say how to reach the cluster securely, shared by every client
_SECURITY_PREFIXES = ("security.", "sasl.", "ssl.")
#: classic protocol: a member learns that its group rebalances from its next heartbeat, and
#: every round of a rebalance waits for all members to rejoin (cooperative-sticky needs two
#: rounds to move a partition). librdkafka's 3 s default keeps partitions unowned, and the
#: members' commits waiting at the coordinator, for up to 3 s per round; 1 s costs one small
#: request per second. Kafka's own advice: at most a third of ``session.timeout.ms``.
HEARTBEAT_INTERVAL_MS = 1000


def quiet_kafka_logger(command: str) -> logging.Logger:
    """A sink for librdkafka's own log lines, for one-shot commands (status, replay).

    Without it an unreachable broker prints a connect failure every few milliseconds; the
    command reports the failure itself, once, from the exception or error event.
    """
    logger = logging.getLogger(f"bridge.{command}.librdkafka")
    logger.propagate = False
    if not logger.handlers:
        logger.addHandler(logging.NullHandler())
    return logger


def kafka_error_of(exc: BaseException) -> KafkaError | None:
    """The ``KafkaError`` a ``KafkaException`` (or a future's exception) carries, if any."""
    carried = exc.args[0] if exc.args else None
    return carried if isinstance(carried, KafkaError) else None


def client_id(role: str) -> str:
    return f"ckb-{role}-{socket.gethostname()}"


def consumer_config(kafka: KafkaSettings) -> dict[str, Any]:
    config: dict[str, Any] = {
        "bootstrap.servers": kafka.bootstrap_servers,
        "group.id": kafka.group_id,
        "client.id": client_id("consumer"),
        "auto.offset.reset": "earliest",
        "partition.assignment.strategy": "cooperative-sticky",
        # librdkafka prefetches up to 100k records / 64 MiB per partition by default, far more
        # than the bridge ever holds in flight; a smaller queue keeps RSS down on big backlogs
        "queued.min.messages": 10_000,
        "queued.max.messages.kbytes": 16_384,
        "heartbeat.interval.ms": _heartbeat_ms(kafka.consumer.get("session.timeout.ms")),
    }
    config.update(kafka.consumer)
    if kafka.uses_kip848:
        for name in CLASSIC_ONLY:  # settings validation rejected user values for these
            config.pop(name, None)
    # the commit policy is the bridge's: only offsets below finished work, committed by it
    config.update({"enable.auto.commit": False, "enable.auto.offset.store": False})
    return config


def _heartbeat_ms(session_timeout_ms: object) -> int:
    """:data:`HEARTBEAT_INTERVAL_MS`, or a third of a shorter session timeout."""
    try:
        session = int(str(session_timeout_ms)) if session_timeout_ms is not None else 45_000
    except ValueError:
        return HEARTBEAT_INTERVAL_MS  # librdkafka rejects it with a clear message
    return max(1, min(HEARTBEAT_INTERVAL_MS, session // 3))


def producer_config(kafka: KafkaSettings) -> dict[str, Any]:
    config: dict[str, Any] = {
        "bootstrap.servers": kafka.bootstrap_servers,
        "client.id": client_id("dlq"),
        "message.timeout.ms": 30_000,
        "linger.ms": 5,
        # a dead letter is as big as its record: allow more than the 1 MB default
        "message.max.bytes": 16 * 1024 * 1024,
    }
    # security settings of the consumer apply to the producer unless it sets its own
    config.update({k: v for k, v in kafka.consumer.items() if k.startswith(_SECURITY_PREFIXES)})
    config.update(kafka.producer)
    # not overridable: a DLQ write must be durable and never duplicated by a producer retry
    config.update({"enable.idempotence": True, "acks": "all"})
    return config


def admin_config(kafka: KafkaSettings) -> dict[str, Any]:
    """For the dead-letter topics' ``AdminClient``: the DLQ producer's address and security."""
    producer = producer_config(kafka)
    config: dict[str, Any] = {
        "bootstrap.servers": producer["bootstrap.servers"],
        "client.id": client_id("admin"),
    }
    config.update({k: v for k, v in producer.items() if k.startswith(_SECURITY_PREFIXES)})
    return config
