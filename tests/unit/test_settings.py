"""Settings: YAML + CKB_ environment, and config errors that name the field."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest
from pydantic import ValidationError

from bridge.settings import ConfigError, Route, Settings, load_settings

REPO = Path(__file__).resolve().parents[2]

GOOD_YAML = """\
kafka:
  bootstrap_servers: 10.0.0.1:9092
  group_id: orders-bridge
  consumer:
    security.protocol: SASL_SSL
    sasl.mechanism: PLAIN
    fetch.min.bytes: 1024
  producer:
    linger.ms: 10
celery:
  broker_url: redis://127.0.0.1:6379/0
  result_backend: redis://127.0.0.1:6379/1
routes:
  - topic: orders
    task: tasks.examples.process_order
    queue: orders
    call: kwargs
    payload: json
    ordering: key
    max_in_flight: 50
    task_timeout: 30
    max_redispatch: 1
    dlq_topic: orders.failed
  - topic: ^audit\\..*
    task: tasks.examples.audit
    payload: text
unrouted: skip
dedupe_generation: 3
limits: {max_in_flight_total: 500, revoke_grace: 5, shutdown_grace: 7}
metrics: {host: 127.0.0.1, port: 9200}
logging: {level: DEBUG, json: true}
"""

MINIMAL_ROUTES = """\
routes:
  - topic: orders
    task: tasks.examples.process_order
"""


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith("CKB_"):
            monkeypatch.delenv(name)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bridge.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def config_error(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, text))
    return str(info.value)


def test_good_yaml_loads_every_section(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, GOOD_YAML))
    assert settings.kafka.bootstrap_servers == "10.0.0.1:9092"
    assert settings.kafka.group_id == "orders-bridge"
    assert settings.kafka.consumer == {
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "PLAIN",
        "fetch.min.bytes": "1024",  # librdkafka values: the text written
    }
    assert settings.kafka.producer == {"linger.ms": "10"}
    assert not settings.kafka.uses_kip848
    orders, audit = settings.routes
    assert (orders.topic, orders.task, orders.queue) == (
        "orders",
        "tasks.examples.process_order",
        "orders",
    )
    assert (orders.call, orders.payload, orders.ordering) == ("kwargs", "json", "key")
    assert (orders.max_in_flight, orders.task_timeout, orders.max_redispatch) == (50, 30.0, 1)
    assert orders.dlq_for("orders") == "orders.failed"
    assert not orders.is_pattern
    assert audit.is_pattern
    assert audit.topic == "^audit\\..*"
    assert audit.payload == "text"
    assert audit.call == "arg"  # defaults
    assert audit.dlq_for("audit.eu") == "audit.eu.dlq"
    assert settings.unrouted == "skip"
    assert settings.dedupe_generation == 3
    assert settings.limits.max_in_flight_total == 500
    assert settings.limits.revoke_grace == 5
    assert settings.limits.shutdown_grace == 7
    assert (settings.metrics.host, settings.metrics.port) == ("127.0.0.1", 9200)
    assert settings.logging.level == "DEBUG"
    assert settings.logging.json_format is True


def test_defaults_of_a_minimal_file(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, MINIMAL_ROUTES))
    route = settings.routes[0]
    assert (route.call, route.payload, route.ordering) == ("arg", "json", "unordered")
    assert (route.max_in_flight, route.task_timeout, route.max_redispatch) == (1000, 300.0, 2)
    assert route.queue is None
    assert settings.unrouted == "dlq"
    assert settings.dedupe_generation == 0
    assert settings.celery.result_backend.startswith("redis://")


def test_real_example_config_loads() -> None:
    example = REPO / "config" / "bridge.yaml"
    if not example.exists():
        pytest.skip("config/bridge.yaml not written yet")
    settings = load_settings(example)
    assert settings.routes
    assert all(route.task for route in settings.routes)


def test_environment_overrides_yaml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CKB_KAFKA__BOOTSTRAP_SERVERS", "broker.example:9093")
    monkeypatch.setenv("CKB_LIMITS__REVOKE_GRACE", "2.5")
    settings = load_settings(write(tmp_path, GOOD_YAML))
    assert settings.kafka.bootstrap_servers == "broker.example:9093"
    assert settings.limits.revoke_grace == 2.5
    # the rest of the same sections still comes from the file
    assert settings.kafka.group_id == "orders-bridge"
    assert settings.kafka.consumer["security.protocol"] == "SASL_SSL"
    assert settings.limits.max_in_flight_total == 500


def test_routes_from_environment_as_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CKB_ROUTES", '[{"topic": "orders", "task": "tasks.x"}]')
    settings = load_settings(None)
    assert [(r.topic, r.task) for r in settings.routes] == [("orders", "tasks.x")]


def test_bad_environment_value_names_the_field(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CKB_LIMITS__MAX_IN_FLIGHT_TOTAL", "lots")
    with pytest.raises(ConfigError, match=r"limits\.max_in_flight_total"):
        load_settings(write(tmp_path, MINIMAL_ROUTES))


def test_ckb_config_variable_is_not_mistaken_for_a_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CKB_CONFIG", str(tmp_path / "bridge.yaml"))  # read by the CLI
    settings = load_settings(write(tmp_path, MINIMAL_ROUTES))
    assert settings.routes[0].topic == "orders"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            """\
            routes:
              - topic: orders
                task: tasks.x
                max_in_flight: lots
            """,
            ["routes.0.max_in_flight", "integer"],
            id="wrong-type",
        ),
        pytest.param(
            """\
            kafka:
              bootstrapservers: 127.0.0.1:9092
            routes:
              - {topic: orders, task: tasks.x}
            """,
            ["kafka.bootstrapservers", "unknown key"],
            id="unknown-key",
        ),
        pytest.param(
            """\
            routes:
              - topic: orders
            """,
            ["routes.0.task", "required"],
            id="missing-task",
        ),
        pytest.param(
            """\
            routes:
              - {topic: "^orders[", task: tasks.x}
            """,
            ["routes.0.topic", "regular expression"],
            id="bad-regex",
        ),
        pytest.param(
            """\
            routes: []
            """,
            ["routes", "at least 1"],
            id="empty-routes",
        ),
        pytest.param(
            """\
            kafka: {}
            """,
            ["routes", "required"],
            id="no-routes",
        ),
        pytest.param(
            """\
            routes:
              - {topic: orders, task: tasks.x}
              - {topic: ^pay.*, task: tasks.y}
              - {topic: orders, task: tasks.z}
            """,
            ["routes", "'orders'"],
            id="duplicate-exact-topic",
        ),
        pytest.param(
            """\
            kafka:
              consumer:
                enable.auto.commit: true
            routes:
              - {topic: orders, task: tasks.x}
            """,
            ["kafka.consumer", "enable.auto.commit"],
            id="reserved-consumer-property",
        ),
        pytest.param(
            """\
            kafka:
              consumer:
                group.protocol: consumer
                partition.assignment.strategy: range
            routes:
              - {topic: orders, task: tasks.x}
            """,
            ["kafka", "partition.assignment.strategy", "group.protocol"],
            id="kip848-with-assignment-strategy",
        ),
        pytest.param(
            """\
            celery:
              result_backend: nosuch://h/db
            routes:
              - {topic: orders, task: tasks.x}
            """,
            ["celery.result_backend", "redis"],
            id="result-backend-unknown",
        ),
        pytest.param(
            """\
            routes:
              - {topic: orders, task: tasks.x, call: positional}
            """,
            ["routes.0.call"],
            id="bad-call-mode",
        ),
    ],
)
def test_broken_yaml_names_the_field(tmp_path: Path, text: str, expected: list[str]) -> None:
    message = config_error(tmp_path, text)
    for fragment in expected:
        assert fragment in message


def test_regex_routes_may_share_a_pattern_with_exact_names(tmp_path: Path) -> None:
    settings = load_settings(
        write(
            tmp_path,
            """\
            routes:
              - {topic: orders, task: tasks.x}
              - {topic: ^orders, task: tasks.y}
              - {topic: ^orders, task: tasks.z}
            """,
        )
    )
    assert [route.task for route in settings.routes] == ["tasks.x", "tasks.y", "tasks.z"]


def test_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_settings(missing)
    assert str(missing) in str(info.value)
    assert "not found" in str(info.value)


@pytest.mark.parametrize("text", ["- orders\n- payments\n", "just a string\n", "42\n"])
def test_top_level_must_be_a_mapping(tmp_path: Path, text: str) -> None:
    message = config_error(tmp_path, text)
    assert "top level must be a mapping" in message


def test_invalid_yaml_syntax(tmp_path: Path) -> None:
    message = config_error(tmp_path, "routes: [\n  {topic: orders\n")
    assert "not valid YAML" in message
    assert "bridge.yaml" in message


def test_empty_file_reports_missing_routes(tmp_path: Path) -> None:
    assert "routes: required" in config_error(tmp_path, "")


def test_route_model_rejects_empty_topic_and_bad_limits() -> None:
    with pytest.raises(ValueError, match="topic"):
        Route(topic="", task="tasks.x")
    with pytest.raises(ValueError, match="task_timeout"):
        Route(topic="orders", task="tasks.x", task_timeout=0)
    with pytest.raises(ValueError, match="max_in_flight"):
        Route(topic="orders", task="tasks.x", max_in_flight=0)


def test_settings_are_frozen(tmp_path: Path) -> None:
    settings: Settings = load_settings(write(tmp_path, MINIMAL_ROUTES))
    with pytest.raises(ValueError, match="frozen"):
        settings.routes[0].task = "other"


# == dead-letter topics the bridge would consume (issue 10) ================================
def routes(*items: dict[str, str]) -> list[dict[str, str]]:
    return [{"task": "tasks.t", **item} for item in items]


@pytest.mark.parametrize(
    ("items", "expected"),
    [
        # its own topic
        ([{"topic": "orders", "dlq_topic": "orders"}], "routes.0.dlq_topic: 'orders'"),
        # matched by a route's pattern
        (
            [{"topic": "^orders.*", "dlq_topic": "orders-failed"}],
            "routes.0.dlq_topic: 'orders-failed' is consumed by routes.0 (^orders.*)",
        ),
        (
            [{"topic": "payments", "dlq_topic": "orders-failed"}, {"topic": "^orders.*"}],
            "routes.0.dlq_topic: 'orders-failed' is consumed by routes.1",
        ),
        # the default <topic>.dlq, consumed by an exact route
        (
            [{"topic": "orders"}, {"topic": "orders.dlq"}],
            "routes.0.dlq_topic: 'orders.dlq' (the default) is consumed by routes.1",
        ),
    ],
)
def test_a_dead_letter_topic_a_route_consumes_is_refused(
    items: list[dict[str, str]], expected: str
) -> None:
    with pytest.raises(ValueError, match="dead-lettered again") as raised:
        Settings(routes=routes(*items))
    assert expected in str(raised.value)


def test_dead_letter_topics_no_route_consumes_are_fine() -> None:
    Settings(routes=routes({"topic": "^orders.*"}, {"topic": "payments", "dlq_topic": "pay-dlq"}))
    # a pattern never routes a .dlq topic: orders.dlq is not consumed by ^orders.*
    Settings(routes=routes({"topic": "^orders.*", "dlq_topic": "orders.dlq"}))


@pytest.mark.parametrize("name", ["bad topic", "orders/dlq", "x" * 250, "..", "ördérs"])
def test_a_dead_letter_topic_kafka_would_refuse_is_refused(name: str) -> None:
    with pytest.raises(ValueError, match="not a valid Kafka topic name"):
        Settings(routes=routes({"topic": "orders", "dlq_topic": name}))


@pytest.mark.parametrize("value", ["inf", "nan", "-inf"])
def test_an_infinite_or_nan_timeout_is_refused_at_load(value: str) -> None:
    with pytest.raises(ValidationError):
        Settings(routes=[{"topic": "t", "task": "x", "task_timeout": float(value)}])
    with pytest.raises(ValidationError):
        Settings(routes=[{"topic": "t", "task": "x"}], limits={"shutdown_grace": float(value)})


# --- librdkafka values keep the text written (issue 10): YAML 1.1 reads 0123 as 83, yes as True

RDKAFKA_YAML = """\
kafka:
  consumer:
    sasl.password: 0123
    sasl.username: yes
    fetch.min.bytes: 1024
    enable.partition.eof: off
    socket.timeout.ms: 0x10
    client.rack: 1.50
    ssl.key.password: 2024-01-01
  producer:
    sasl.password: on
    linger.ms: 5
dead_letters:
  topic_config: {retention.ms: 0604800000}
routes: [{topic: orders, task: tasks.examples.process_order}]
"""


def test_librdkafka_values_are_kept_as_written(tmp_path: Path) -> None:
    from bridge.kafka_clients import consumer_config, producer_config

    settings = load_settings(write(tmp_path, RDKAFKA_YAML))
    assert settings.kafka.consumer == {
        "sasl.password": "0123",
        "sasl.username": "yes",
        "fetch.min.bytes": "1024",
        "enable.partition.eof": "off",
        "socket.timeout.ms": "0x10",
        "client.rack": "1.50",
        "ssl.key.password": "2024-01-01",
    }
    assert settings.kafka.producer == {"sasl.password": "on", "linger.ms": "5"}
    assert settings.dead_letters.topic_config == {"retention.ms": "0604800000"}
    # and so they reach librdkafka
    assert consumer_config(settings.kafka)["sasl.password"] == "0123"
    assert producer_config(settings.kafka)["sasl.password"] == "on"


def test_only_librdkafka_sections_are_kept_as_text(tmp_path: Path) -> None:
    settings = load_settings(
        write(tmp_path, RDKAFKA_YAML + "dedupe_generation: 010\nmetrics: {enabled: no}\n")
    )
    assert settings.dedupe_generation == 8  # YAML's own typing elsewhere
    assert settings.metrics.enabled is False


def test_an_empty_librdkafka_value_is_refused(tmp_path: Path) -> None:
    message = config_error(tmp_path, "kafka:\n  consumer:\n    sasl.password:\n" + MINIMAL_ROUTES)
    assert "kafka.consumer.sasl.password" in message


def test_a_yaml_syntax_error_does_not_print_a_secret(tmp_path: Path) -> None:
    for text in (
        'kafka:\n  consumer:\n    sasl.password: "hunt3r2\n    x: [\n',
        "kafka:\n  consumer:\n    sasl.password: hunt3r2: x\n",
    ):
        message = config_error(tmp_path, text + MINIMAL_ROUTES)
        assert "not valid YAML" in message
        assert "line 3" in message
        assert "hunt3r2" not in message


@pytest.mark.parametrize("char", ["/", "?", "#"])
@pytest.mark.parametrize("field", ["broker_url", "result_backend"])
def test_a_url_password_that_needs_percent_encoding_is_refused_unseen(
    tmp_path: Path, field: str, char: str
) -> None:
    """urllib (so kombu and redis-py) would cut the URL at the character and fail with
    "Port could not be cast to integer value as 'hun'": part of the password, in a log."""
    url = f"redis://:hun{char}ter2@redis:6379/0"
    message = config_error(tmp_path, f"celery: {{{field}: '{url}'}}\n" + MINIMAL_ROUTES)
    assert f"celery.{field}" in message
    assert "percent-encode" in message and "%2F" in message
    assert "hun" not in message and "ter2" not in message


def test_percent_encoded_and_plain_urls_pass(tmp_path: Path) -> None:
    text = "celery: {broker_url: 'redis://u:hun%2Fter2@redis:6379/0', result_backend: 'redis://redis/1'}\n"
    settings = load_settings(write(tmp_path, text + MINIMAL_ROUTES))
    assert settings.celery.broker_url == "redis://u:hun%2Fter2@redis:6379/0"
