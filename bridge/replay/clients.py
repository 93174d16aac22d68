"""Client settings for a replay: the bridge's Kafka settings, security included, adapted.

The consumer reads under the replay group, the producer is the dead-letter producer
(idempotent, ``acks=all``), the admin client commits the replay group's offsets.
"""

from __future__ import annotations

from typing import Any

from bridge.kafka_clients import (
    client_id,
    connection_settings,
    consumer_config,
    producer_config,
)
from bridge.settings import KafkaSettings


def replay_consumer_config(kafka: KafkaSettings, group: str) -> dict[str, Any]:
    """The bridge's consumer settings (security included) under the replay group.

    The replay assigns partitions itself and never joins the group, so a static
    ``group.instance.id`` (the bridge's identity) is dropped.
    """
    config = consumer_config(kafka.model_copy(update={"group_id": group}))
    config.pop("group.instance.id", None)
    if "client.id" not in kafka.consumer:
        config["client.id"] = client_id("replay")
    config.update({"auto.offset.reset": "earliest", "enable.partition.eof": True})
    return config


def replay_producer_config(kafka: KafkaSettings) -> dict[str, Any]:
    """The dead-letter producer's settings: idempotent, ``acks=all``, same security."""
    config = producer_config(kafka)
    if "client.id" not in kafka.producer:
        config["client.id"] = client_id("replay")
    return config


def replay_admin_config(kafka: KafkaSettings) -> dict[str, Any]:
    """For committing the replay group's offsets: the consumer's address and connection
    settings (:func:`~bridge.kafka_clients.connection_settings`)."""
    config: dict[str, Any] = {
        "bootstrap.servers": kafka.bootstrap_servers,
        "client.id": client_id("replay"),
    }
    config.update(connection_settings(kafka.consumer))
    return config
