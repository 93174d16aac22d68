"""The bridge's view of a Kafka record, independent of confluent-kafka's ``Message``."""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Protocol

from bridge.core.vocabulary import TP

#: ``message.headers()`` through a call path that checks the result: confluent-kafka returns a
#: list *and* sets an exception on a non-UTF-8 header name, and CPython 3.11's specialized
#: method call does not check, so a plain call raises later, somewhere else. A second call
#: returns a tuple holding NULL: the headers of such a message are never read again.
_read_headers = operator.methodcaller("headers")


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
    #: the headers could not be read (confluent-kafka raises on a header name that is not
    #: UTF-8); such a record is dead-lettered, without its headers
    headers_unreadable: bool = False

    @classmethod
    def from_message(cls, message: KafkaMessage) -> Record:
        _, timestamp = message.timestamp()
        try:
            headers, unreadable = tuple(_read_headers(message) or ()), False
        except SystemError:  # confluent-kafka's C code, on a header name that is not UTF-8
            headers, unreadable = (), True
        return cls(
            topic=message.topic() or "",
            partition=message.partition() or 0,
            offset=message.offset() or 0,
            key=message.key(),
            value=message.value(),
            headers=headers,
            timestamp_ms=timestamp,
            headers_unreadable=unreadable,
        )

    @property
    def size(self) -> int:
        """Bytes the record holds (value, key, headers): what the byte budgets count."""
        size = len(self.value or b"") + len(self.key or b"")
        for name, data in self.headers:
            size += len(name) + len(data or b"")
        return size

    @property
    def tp(self) -> TP:
        return (self.topic, self.partition)

    def coordinates(self) -> str:
        """``topic[partition]@offset``: how logs and errors name a record (never its payload)."""
        return f"{self.topic}[{self.partition}]@{self.offset}"
