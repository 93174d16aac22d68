"""librdkafka configuration: the bridge owns commits; the DLQ producer is idempotent."""

from __future__ import annotations

import pytest
from confluent_kafka import KafkaError, KafkaException

from bridge.kafka_clients import (
    admin_config,
    client_id,
    consumer_config,
    kafka_error_of,
    producer_config,
)
from bridge.settings import CLASSIC_ONLY, KafkaSettings

SECURITY: dict[str, str | int | float | bool] = {
    "security.protocol": "SASL_SSL",
    "sasl.mechanism": "SCRAM-SHA-512",
    "sasl.username": "bridge",
    "sasl.password": "pw",
    "ssl.ca.location": "/etc/ssl/ca.pem",
}


def test_consumer_defaults() -> None:
    config = consumer_config(KafkaSettings(bootstrap_servers="b:9092", group_id="g"))
    assert config["bootstrap.servers"] == "b:9092"
    assert config["group.id"] == "g"
    assert config["partition.assignment.strategy"] == "cooperative-sticky"
    assert config["enable.auto.commit"] is False
    assert config["enable.auto.offset.store"] is False
    assert config["auto.offset.reset"] == "earliest"
    assert config["client.id"] == client_id("consumer")
    assert config["client.id"].startswith("ckb-consumer-")
    assert config["queued.min.messages"] == 10_000
    assert config["queued.max.messages.kbytes"] == 16_384


def test_consumer_passes_user_properties_through() -> None:
    kafka = KafkaSettings(
        consumer={
            **SECURITY,
            "fetch.min.bytes": 1024,
            "auto.offset.reset": "latest",
            "queued.min.messages": 500,
        }
    )
    config = consumer_config(kafka)
    for name, value in SECURITY.items():
        assert config[name] == value
    assert config["fetch.min.bytes"] == 1024
    assert config["auto.offset.reset"] == "latest"
    assert config["queued.min.messages"] == 500


def test_consumer_forces_manual_commits_even_if_user_set_otherwise() -> None:
    # validation rejects these; model_construct bypasses it to prove the config wins anyway
    kafka = KafkaSettings.model_construct(
        bootstrap_servers="b:9092",
        group_id="g",
        consumer={"enable.auto.commit": True, "enable.auto.offset.store": True},
        producer={},
    )
    config = consumer_config(kafka)
    assert config["enable.auto.commit"] is False
    assert config["enable.auto.offset.store"] is False


def test_user_may_choose_another_classic_strategy() -> None:
    config = consumer_config(KafkaSettings(consumer={"partition.assignment.strategy": "range"}))
    assert config["partition.assignment.strategy"] == "range"


def test_kip848_drops_classic_only_keys() -> None:
    kafka = KafkaSettings(consumer={"group.protocol": "consumer", **SECURITY})
    assert kafka.uses_kip848
    config = consumer_config(kafka)
    assert config["group.protocol"] == "consumer"
    for name in ("partition.assignment.strategy", "session.timeout.ms", "heartbeat.interval.ms"):
        assert name not in config
    assert config["enable.auto.commit"] is False
    assert config["sasl.username"] == "bridge"


def test_kip848_drops_classic_keys_even_when_validation_was_bypassed() -> None:
    kafka = KafkaSettings.model_construct(
        bootstrap_servers="b:9092",
        group_id="g",
        consumer={"group.protocol": "consumer", "session.timeout.ms": 45000},
        producer={},
    )
    config = consumer_config(kafka)
    assert not set(CLASSIC_ONLY) & set(config)


def test_classic_protocol_explicitly_keeps_strategy() -> None:
    config = consumer_config(KafkaSettings(consumer={"group.protocol": "classic"}))
    assert config["partition.assignment.strategy"] == "cooperative-sticky"


def test_producer_is_idempotent_with_acks_all() -> None:
    config = producer_config(KafkaSettings(bootstrap_servers="b:9092"))
    assert config["enable.idempotence"] is True
    assert config["acks"] == "all"
    assert config["bootstrap.servers"] == "b:9092"
    assert config["client.id"].startswith("ckb-dlq-")
    assert "group.id" not in config
    assert "enable.auto.commit" not in config


@pytest.mark.parametrize(
    "override",
    [
        {"acks": "1"},
        {"acks": 0},
        {"enable.idempotence": False},
        {"acks": "1", "enable.idempotence": "false"},
    ],
)
def test_producer_forces_durability_over_user_values(override: dict[str, object]) -> None:
    config = producer_config(KafkaSettings(producer=override))  # type: ignore[arg-type]
    assert config["enable.idempotence"] is True
    assert config["acks"] == "all"


def test_producer_inherits_security_from_consumer_only() -> None:
    kafka = KafkaSettings(
        consumer={**SECURITY, "fetch.min.bytes": 1024, "group.protocol": "consumer"}
    )
    config = producer_config(kafka)
    for name, value in SECURITY.items():
        assert config[name] == value
    assert "fetch.min.bytes" not in config
    assert "group.protocol" not in config


def test_producer_own_security_wins_over_inherited() -> None:
    kafka = KafkaSettings(
        consumer=SECURITY, producer={"sasl.username": "dlq-writer", "linger.ms": 50}
    )
    config = producer_config(kafka)
    assert config["sasl.username"] == "dlq-writer"
    assert config["sasl.password"] == "pw"
    assert config["linger.ms"] == 50


def test_admin_client_reaches_the_cluster_as_the_dead_letter_producer_does() -> None:
    kafka = KafkaSettings(
        bootstrap_servers="b:9093",
        consumer={**SECURITY, "fetch.min.bytes": 1024},
        producer={"sasl.username": "dlq-writer", "linger.ms": 20},
    )
    config = admin_config(kafka)
    assert config["bootstrap.servers"] == "b:9093"
    assert config["client.id"] == client_id("admin")
    assert config["sasl.username"] == "dlq-writer", "the producer's own security wins"
    assert config["ssl.ca.location"] == SECURITY["ssl.ca.location"]
    assert "fetch.min.bytes" not in config
    assert "linger.ms" not in config
    assert "enable.idempotence" not in config


def test_kafka_error_of_reads_the_error_an_exception_carries() -> None:
    error = KafkaError(KafkaError.TOPIC_ALREADY_EXISTS, "exists")
    assert kafka_error_of(KafkaException(error)) is error
    assert kafka_error_of(KafkaException("a plain message")) is None
    assert kafka_error_of(KafkaException()) is None
    assert kafka_error_of(ValueError(error)) is error  # a future's exception may be any type


# -- connection settings reach every client ---------------------------------------------------

#: one of each kind of global ("*") connection property, beyond security.*, sasl.*, ssl.*
CONNECTION: dict[str, str | int | float | bool] = {
    "enable.ssl.certificate.verification": False,
    "client.dns.lookup": "resolve_canonical_bootstrap_servers_only",
    "enable.sasl.oauthbearer.unsecure.jwt": True,
    "https.ca.location": "/etc/ssl/idp-ca.pem",
    "https.ca.pem": "-----BEGIN CERTIFICATE-----",
    "broker.address.family": "v4",
    "broker.address.ttl": 30_000,
    "socket.connection.setup.timeout.ms": 20_000,
    "socket.keepalive.enable": True,
    "connections.max.idle.ms": 180_000,
    "metadata.recovery.strategy": "none",
    "metadata.recovery.rebootstrap.trigger.ms": 60_000,
    "ssl.endpoint.identification.algorithm": "none",
    "sasl.oauthbearer.config": "principal=bridge",
}


def every_client_config(kafka: KafkaSettings) -> dict[str, dict[str, object]]:
    """Each librdkafka client the bridge builds from the settings, by role."""
    from bridge.lag import lag_consumer_config
    from bridge.replay import replay_admin_config, replay_consumer_config, replay_producer_config

    return {
        "consumer (loop, ckb status)": consumer_config(kafka),
        "dead-letter producer": producer_config(kafka),
        "dead-letter admin": admin_config(kafka),
        "lag monitor": lag_consumer_config(kafka),
        "replay consumer": replay_consumer_config(kafka, "ckb-replay.d"),
        "replay producer": replay_producer_config(kafka),
        "replay admin": replay_admin_config(kafka),
    }


def test_connection_settings_of_the_consumer_reach_every_client() -> None:
    kafka = KafkaSettings(consumer={**SECURITY, **CONNECTION, "fetch.min.bytes": 9})
    for role, config in every_client_config(kafka).items():
        for name, value in {**SECURITY, **CONNECTION}.items():
            assert config.get(name) == value, f"{role} lacks {name}"


def test_tuning_properties_stay_with_their_client() -> None:
    tuning = {"fetch.min.bytes": 9, "socket.timeout.ms": 5_000, "debug": "cgrp", "retries": 7}
    kafka = KafkaSettings(consumer=tuning)
    config = every_client_config(kafka)
    for role in ("dead-letter producer", "dead-letter admin", "replay admin"):
        assert not set(tuning) & set(config[role]), role


def test_the_producer_connection_settings_win_for_the_producer_and_its_admin() -> None:
    kafka = KafkaSettings(
        consumer={"client.dns.lookup": "use_all_dns_ips", "https.ca.location": "/a.pem"},
        producer={"https.ca.location": "/b.pem"},
    )
    assert admin_config(kafka)["https.ca.location"] == "/b.pem"
    assert producer_config(kafka)["https.ca.location"] == "/b.pem"
    assert admin_config(kafka)["client.dns.lookup"] == "use_all_dns_ips"


def test_librdkafka_knows_every_named_connection_property() -> None:
    """A misspelt name in the list would pass every config test above, so let librdkafka
    judge: it refuses unknown properties when a client is built (no connection is made)."""
    from confluent_kafka.admin import AdminClient

    from bridge.kafka_clients import CONNECTION_PROPERTIES

    values = {
        "client.dns.lookup": "use_all_dns_ips",
        "broker.address.family": "any",
        "metadata.recovery.strategy": "rebootstrap",
        "broker.version.fallback": "0.10.0",
    }
    config = {name: values.get(name, "1000") for name in CONNECTION_PROPERTIES}
    for flag in ("socket.keepalive.enable", "api.version.request"):
        config[flag] = "true"
    AdminClient({"bootstrap.servers": "127.0.0.1:9", **config})
