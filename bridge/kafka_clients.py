"""librdkafka configuration for the bridge's consumer and dead-letter producer, and reading
the ``KafkaError`` out of what confluent-kafka raises."""

from __future__ import annotations

import logging
import socket
from typing import Any

from confluent_kafka import KafkaError

from bridge.settings import CLASSIC_ONLY, KafkaSettings

#: How to reach and authenticate to the brokers: the global librdkafka properties ("*" in
#: librdkafka's CONFIGURATION.md) that every client of one cluster needs alike, whatever its
#: role. Set once under ``kafka.consumer`` (``kafka.producer`` may override them for the
#: dead-letter producer and its admin client), they reach every client the bridge builds:
#: consumer, lag monitor, ``ckb status``, dead-letter producer and admin, and the replay's
#: consumer, producer and admin. Whole families by prefix: TLS (``ssl.*``,
#: ``enable.ssl.certificate.verification``), SASL (``sasl.*``,
#: ``enable.sasl.oauthbearer.unsecure.jwt``), the HTTPS trust of an OIDC token endpoint
#: (``https.*``) and ``security.protocol``.
CONNECTION_PREFIXES = ("security.", "sasl.", "ssl.", "https.", "enable.ssl.", "enable.sasl.")
#: ... and, by name, the global properties of the network path: name resolution, address
#: family, connection set-up and idle close (load balancers), re-bootstrap, and the API
#: version negotiation that old brokers need. Tuning of one client's requests (timeouts,
#: retries, buffers, ``debug``, statistics) stays with that client.
CONNECTION_PROPERTIES = frozenset(
    {
        "client.dns.lookup",
        "broker.address.family",
        "broker.address.ttl",
        "socket.connection.setup.timeout.ms",
        "socket.keepalive.enable",
        "connections.max.idle.ms",
        "metadata.recovery.strategy",
        "metadata.recovery.rebootstrap.trigger.ms",
        "api.version.request",
        "api.version.request.timeout.ms",
        "api.version.fallback.ms",
        "broker.version.fallback",
    }
)
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


def connection_settings(properties: dict[str, Any]) -> dict[str, Any]:
    """The properties among ``properties`` that say how to reach and authenticate to the
    brokers (:data:`CONNECTION_PREFIXES`, :data:`CONNECTION_PROPERTIES`)."""
    return {
        name: value
        for name, value in properties.items()
        if name.startswith(CONNECTION_PREFIXES) or name in CONNECTION_PROPERTIES
    }


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
        # a record that arrived compressed must fit its dead-letter topic again: the broker
        # checks max.message.bytes against the compressed batch (overridable)
        "compression.type": "zstd",
    }
    # connection settings of the consumer apply to the producer unless it sets its own
    config.update(connection_settings(kafka.consumer))
    config.update(kafka.producer)
    # not overridable: a DLQ write must be durable and never duplicated by a producer retry
    config.update({"enable.idempotence": True, "acks": "all"})
    return config


def admin_config(kafka: KafkaSettings) -> dict[str, Any]:
    """For the dead-letter topics' ``AdminClient``: the DLQ producer's address and connection
    settings."""
    producer = producer_config(kafka)
    config: dict[str, Any] = {
        "bootstrap.servers": producer["bootstrap.servers"],
        "client.id": client_id("admin"),
    }
    config.update(connection_settings(producer))
    return config
