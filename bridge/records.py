"""The bridge's view of a Kafka record, independent of confluent-kafka's ``Message``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from bridge.core.vocabulary import TP


class KafkaMessage(Protocol):
    """The part of ``confluent_kafka.Message`` the bridge reads."""

    def topic(self) -> str | None: ...
    def partition(self) -> int | None: ...
    def offset(self) -> int | None: ...
    def key(self) -> bytes | None: ...
    def value(self) -> bytes | None: ...
    def headers(self) -> list[tuple[str, bytes | None]] | None: ...
    def timestamp(self) -> tuple[int, int]: ...


@dataclass(frozen=True, slots=True)
class Record:
    """One consumed record: coordinates, raw key/value/headers and the timestamp in ms."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes | None], ...]
    timestamp_ms: int

    @classmethod
    def from_message(cls, message: KafkaMessage) -> Record:
        _, timestamp = message.timestamp()
        return cls(
            topic=message.topic() or "",
            partition=message.partition() or 0,
            offset=message.offset() or 0,
            key=message.key(),
            value=message.value(),
            headers=tuple(message.headers() or ()),
            timestamp_ms=timestamp,
        )

    @property
    def tp(self) -> TP:
        return (self.topic, self.partition)

    def coordinates(self) -> str:
        """``topic[partition]@offset``: how logs and errors name a record (never its payload)."""
        return f"{self.topic}[{self.partition}]@{self.offset}"
