"""The one typed settings object: YAML file, overridden by ``CKB_`` environment variables.

``CKB_KAFKA__BOOTSTRAP_SERVERS=host:9092`` overrides ``kafka.bootstrap_servers``; lists and
mappings take JSON (``CKB_ROUTES='[{"topic": "orders", "task": "tasks.examples.process_order"}]'``).
Built once by :func:`load_settings` and passed down; nothing reads the environment later.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from bridge.backend_urls import backend_kind, rate_limit_without_redis, rpc_without_amqp
from bridge.dead_letter_routes import dead_letter_loop
from bridge.route_settings import BatchSettings, Route, Strict
from bridge.secrets import mask_text, password_needs_encoding
from bridge.sentinel import sentinel_problems
from bridge.tracing import otel_missing

__all__ = ["BatchSettings", "Route", "Settings", "Strict"]

#: librdkafka properties the bridge sets itself; a user value would break its guarantees.
RESERVED_CONSUMER_PROPERTIES = frozenset(
    {"enable.auto.commit", "enable.auto.offset.store", "group.id", "bootstrap.servers"}
)
#: not accepted by librdkafka with ``group.protocol=consumer`` (KIP-848): the broker decides
CLASSIC_ONLY = ("partition.assignment.strategy", "session.timeout.ms", "heartbeat.interval.ms")


class KafkaSettings(Strict):
    bootstrap_servers: str = "127.0.0.1:9092"
    group_id: str = "ckb-bridge"
    consumer: dict[str, str | int | float | bool] = Field(default_factory=dict)
    producer: dict[str, str | int | float | bool] = Field(default_factory=dict)
    poll_batch: int = Field(default=500, ge=1, le=100_000)
    commit_interval: float = Field(default=1.0, gt=0, le=60)

    @field_validator("consumer")
    @classmethod
    def _no_reserved(cls, value: dict[str, Any]) -> dict[str, Any]:
        clash = sorted(RESERVED_CONSUMER_PROPERTIES & value.keys())
        if clash:
            raise ValueError(
                f"{', '.join(clash)} is managed by the bridge; remove it "
                "(use kafka.bootstrap_servers / kafka.group_id for those two)"
            )
        return value

    @model_validator(mode="after")
    def _kip848_properties(self) -> KafkaSettings:
        if self.uses_kip848:
            clash = [name for name in CLASSIC_ONLY if name in self.consumer]
            if clash:
                raise ValueError(
                    f"consumer.{clash[0]} cannot be set with group.protocol=consumer "
                    "(the broker assigns partitions and sets timeouts): remove it"
                )
        return self

    @property
    def uses_kip848(self) -> bool:
        return str(self.consumer.get("group.protocol", "classic")) == "consumer"


class CelerySettings(Strict):
    broker_url: str = "redis://127.0.0.1:6379/0"
    result_backend: str = "redis://127.0.0.1:6379/1"
    default_queue: str = "celery"
    #: extra Celery configuration for the bridge's own app (e.g. broker_use_ssl)
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("broker_url", "result_backend")
    @classmethod
    def _password_encoded(cls, value: str) -> str:
        if password_needs_encoding(value):  # the message must not show the URL: a secret
            raise ValueError(
                "the password in this URL holds '/', '?' or '#': percent-encode it "
                "(/ as %2F, ? as %3F, # as %23, @ as %40)"
            )
        return value

    @model_validator(mode="after")
    def _sentinel_master(self) -> CelerySettings:
        urls = {"broker_url": self.broker_url, "result_backend": self.result_backend}
        problems = sentinel_problems(urls, self.options)
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @field_validator("result_backend")
    @classmethod
    def _watchable_backend(cls, value: str) -> str:
        if backend_kind(value) is None:
            raise ValueError(
                "the bridge watches results in Redis (redis://, rediss://, sentinel://), in "
                "Celery's database backend (db+postgresql://, db+mysql://, db+sqlite://), on "
                "its reply queue (rpc://, with a RabbitMQ broker), or through Celery's API for "
                "the other backends Celery ships (mongodb://, file://, s3://, …)"
            )
        return value

    @model_validator(mode="after")
    def _rpc_over_amqp(self) -> CelerySettings:
        problem = rpc_without_amqp(self.broker_url, self.result_backend)
        if problem is not None:
            raise ValueError(problem)
        return self


class Limits(Strict):
    max_in_flight_total: int = Field(default=10_000, ge=1)
    #: record bytes open over all partitions before they all pause (see README, memory)
    max_in_flight_bytes_total: int = Field(default=256 * 2**20, ge=1)
    revoke_grace: float = Field(default=20.0, ge=0)
    shutdown_grace: float = Field(default=30.0, ge=0)
    #: resume a paused partition once its open records fall to this fraction of the cap
    resume_ratio: float = Field(default=0.5, gt=0, le=1)
    #: seconds of queued work the bridge keeps ahead of each Celery queue's workers: the
    #: dispatch window follows how fast they finish tasks (see bridge/core/queues.py);
    #: 0 turns the window off (only the in-flight caps bound what is queued)
    max_queue_time: float = Field(default=5.0, ge=0, le=3600)


class ResultSettings(Strict):
    #: seconds between reconcile sweeps that read the result keys of open tasks
    reconcile_interval: float = Field(default=5.0, gt=0)
    key_prefix: str = "celery-task-meta-"
    #: mark each sent task in Redis so a new owner of its partition watches it instead of
    #: sending it again (one pipelined write per batch)
    dispatch_markers: bool = True


class DeadLetterSettings(Strict):
    """How the bridge creates dead-letter topics that do not exist yet."""

    #: create a missing dead-letter topic before its first write (needs CREATE permission)
    create_topics: bool = True
    #: -1: the broker's default (``num.partitions``, ``default.replication.factor``)
    partitions: int = Field(default=-1, ge=-1)
    replication_factor: int = Field(default=-1, ge=-1)
    #: topic configs for created dead-letter topics, e.g. ``retention.ms``
    topic_config: dict[str, str | int] = Field(default_factory=dict)

    @field_validator("partitions", "replication_factor")
    @classmethod
    def _not_zero(cls, value: int) -> int:
        if value == 0:
            raise ValueError("must be at least 1, or -1 for the broker's default")
        return value


class MetricsSettings(Strict):
    enabled: bool = True
    #: the ops port has no authentication: this machine only, unless a config says otherwise
    host: str = "127.0.0.1"
    port: int = Field(default=9108, ge=0, le=65535)


class LoggingSettings(Strict):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    json_format: bool = Field(default=False, alias="json")
    #: log record payloads (never on by default: payloads can hold personal data)
    debug_payloads: bool = False

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class TracingSettings(Strict):
    """Spans per record (bridge.otel); the exporter is set by the ``OTEL_*`` environment."""

    enabled: bool = False

    @field_validator("enabled")
    @classmethod
    def _extra_installed(cls, value: bool) -> bool:
        problem = otel_missing() if value else None
        if problem is not None:
            raise ValueError(problem)
        return value


class Settings(BaseSettings):
    """The bridge's whole configuration (see config/bridge.yaml for an annotated example)."""

    model_config = SettingsConfigDict(
        env_prefix="CKB_", env_nested_delimiter="__", extra="forbid", frozen=True
    )

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    celery: CelerySettings = Field(default_factory=CelerySettings)
    routes: list[Route] = Field(min_length=1)
    unrouted: Literal["dlq", "skip"] = "dlq"
    dedupe_generation: int = Field(default=0, ge=0)
    limits: Limits = Field(default_factory=Limits)
    results: ResultSettings = Field(default_factory=ResultSettings)
    dead_letters: DeadLetterSettings = Field(default_factory=DeadLetterSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    logging: LoggingSettings = Field(default_factory=LoggingSettings)
    tracing: TracingSettings = Field(default_factory=TracingSettings)

    @model_validator(mode="after")
    def _unique_exact_topics(self) -> Settings:
        seen: set[str] = set()
        for index, route in enumerate(self.routes):
            if not route.is_pattern and route.topic in seen:
                raise ValueError(
                    f"routes.{index}.topic: a second route for topic {route.topic!r}; keep one"
                )
            seen.add(route.topic)
        return self

    @model_validator(mode="after")
    def _rate_limits_have_redis(self) -> Settings:
        limited = [index for index, route in enumerate(self.routes) if route.rate_limit]
        problem = rate_limit_without_redis(
            self.celery.broker_url, self.celery.result_backend, limited
        )
        if problem is not None:
            raise ValueError(problem)
        return self

    @model_validator(mode="after")
    def _dead_letters_not_consumed(self) -> Settings:
        """A dead-letter topic a route consumes would feed its dead letters back in, forever."""
        problem = dead_letter_loop(self.routes)
        if problem is not None:
            raise ValueError(problem)
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # environment wins over the YAML file, which arrives as init arguments
        return env_settings, init_settings


class ConfigError(Exception):
    """A user mistake in configuration; the message names the field and the fix."""


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: file not found (pass -c PATH, or set CKB_CONFIG)") from exc
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
    try:
        data = _load_yaml(text)
    except yaml.YAMLError as exc:
        # the parser quotes the offending line, which may be a password's
        raise ConfigError(f"{path}: not valid YAML: {mask_text(str(exc))}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping (kafka:, celery:, routes: …)")
    return data


#: mappings of librdkafka (and Kafka topic) properties: their values stay the text written.
#: librdkafka takes every property as a string, and YAML 1.1 would turn an unquoted password
#: ``0123`` into 83 and ``yes`` into True; null stays null (and is refused).
VERBATIM_SECTIONS = (("kafka", "consumer"), ("kafka", "producer"), ("dead_letters", "topic_config"))
_STR_TAG = "tag:yaml.org,2002:str"
_TYPED_TAGS = frozenset(
    f"tag:yaml.org,2002:{name}" for name in ("int", "float", "bool", "timestamp")
)


def _load_yaml(text: str) -> Any:
    """``yaml.safe_load``, except that the values of :data:`VERBATIM_SECTIONS` stay strings."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        for section, key in VERBATIM_SECTIONS:
            properties = _mapping_value(_mapping_value(node, section), key)
            for _, value in properties.value if properties is not None else ():
                if isinstance(value, yaml.ScalarNode) and value.tag in _TYPED_TAGS:
                    value.tag = _STR_TAG
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _mapping_value(node: yaml.Node | None, key: str) -> yaml.MappingNode | None:
    if not isinstance(node, yaml.MappingNode):
        return None
    for key_node, value in node.value:
        if isinstance(key_node, yaml.ScalarNode) and key_node.value == key:
            return value if isinstance(value, yaml.MappingNode) else None
    return None


def describe_validation_error(error: ValidationError) -> str:
    """One line per problem: dotted field path, what is wrong, and the value's type."""
    lines = []
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"]) or "(top level)"
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            message = "unknown key: remove it or check its spelling against config/bridge.yaml"
        elif item["type"] == "missing":
            message = "required: add it"
        lines.append(f"  {where}: {message}")
    return "invalid configuration:\n" + "\n".join(lines)


def load_settings(path: Path | None) -> Settings:
    """Build the settings from ``path`` (optional) and the environment."""
    data = read_yaml(path) if path is not None else {}
    try:
        return Settings(**data)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc)) from exc
