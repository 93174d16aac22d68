"""Writing records to a Kafka dead-letter topic, and knowing when Kafka has them.

A record counts as finished only when the DLQ write's delivery report comes back without
error. A failed write is retried with backoff, forever: the record stays open (uncommitted),
never dropped. The producer is idempotent (``enable.idempotence=true``, ``acks=all``).
Delivery callbacks run inside :meth:`DeadLetterWriter.poll`, on the consumer loop's thread.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from bridge.core.vocabulary import TP
from bridge.io_retry import OutageLog
from bridge.records import Record

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 2_048
MAX_TRACEBACK_BYTES = 8_192
HEADER_PREFIX = "ckb."


@dataclass(frozen=True, slots=True)
class Failure:
    """Why a record is dead-lettered, and what was attempted."""

    reason: str
    task_name: str = ""
    task_id: str = ""
    attempts: int = 0
    error_class: str = ""
    error_message: str = ""
    traceback: str = ""


def _bounded(text: str, limit: int) -> bytes:
    data = text.encode("utf-8", "replace")
    if len(data) <= limit:
        return data
    return data[: limit - 15].decode("utf-8", "ignore").encode("utf-8") + b"...[truncated]"


def dlq_headers(
    record: Record, failure: Failure, group: str, now: datetime
) -> list[tuple[str, bytes | None]]:
    """The record's own headers, byte for byte, followed by the ``ckb.*`` context headers."""
    added = {
        "ckb.reason": failure.reason.encode(),
        "ckb.original.topic": record.topic.encode(),
        "ckb.original.partition": str(record.partition).encode(),
        "ckb.original.offset": str(record.offset).encode(),
        "ckb.original.timestamp": str(record.timestamp_ms).encode(),
        "ckb.group": group.encode(),
        "ckb.task.name": failure.task_name.encode(),
        "ckb.task.id": failure.task_id.encode(),
        "ckb.attempts": str(failure.attempts).encode(),
        "ckb.error.class": failure.error_class.encode(),
        "ckb.error.message": _bounded(failure.error_message, MAX_MESSAGE_BYTES),
        "ckb.error.traceback": _bounded(failure.traceback, MAX_TRACEBACK_BYTES),
        "ckb.failed.at": now.astimezone(UTC).isoformat(timespec="milliseconds").encode(),
    }
    original = [(k, v) for k, v in record.headers if not k.startswith(HEADER_PREFIX)]
    return original + list(added.items())


class TopicGate(Protocol):
    """Says whether a dead-letter topic may be written to now (``bridge.dlq_topics``)."""

    def ready(self, topic: str) -> bool: ...

    def poll(self) -> None:
        """Serve the gate's own client (called on every :meth:`DeadLetterWriter.poll`)."""


@dataclass
class _Pending:
    record: Record
    topic: str
    failure: Failure
    on_done: Callable[[], None]
    #: False once the record's partition moved away: a failed write is then not retried
    wanted: Callable[[], bool]
    attempt: int = 0


class DeadLetterWriter:
    """Produces dead letters and calls ``on_done`` only after Kafka acknowledged them."""

    def __init__(
        self,
        producer: Any,
        group: str,
        retry_max: float = 30.0,
        topics: TopicGate | None = None,
    ) -> None:
        self._producer = producer
        #: asked before each write; not ready holds it (its topic is being created)
        self._topics = topics
        self._held: list[_Pending] = []
        self._group = group
        self._retry_max = retry_max
        self._retry: list[tuple[float, _Pending]] = []
        self._outage = OutageLog(log, "dead-letter topic")
        self.in_flight = 0

    def send(
        self,
        record: Record,
        topic: str,
        failure: Failure,
        on_done: Callable[[], None],
        wanted: Callable[[], bool] = lambda: True,
    ) -> None:
        """Dead-letter ``record``; ``on_done`` runs once Kafka acknowledged the write."""
        self._produce(_Pending(record, topic, failure, on_done, wanted))

    def _produce(self, item: _Pending) -> None:
        if self._topics is not None and not self._topics.ready(item.topic):
            self._held.append(item)  # looked at again on every poll()
            return
        headers = dlq_headers(item.record, item.failure, self._group, datetime.now(UTC))

        def delivered(err: Any, _msg: Any) -> None:
            self.in_flight -= 1
            if err is None:
                self._outage.recovered()
                item.on_done()
            else:
                self._schedule_retry(item, err)

        try:
            self._producer.produce(
                item.topic,
                value=item.record.value,
                key=item.record.key,
                headers=headers,
                on_delivery=delivered,
            )
        except (BufferError, Exception) as exc:  # queue full, unknown topic, …
            self._schedule_retry(item, exc)
            return
        self.in_flight += 1

    def _schedule_retry(self, item: _Pending, error: object) -> None:
        if not item.wanted():
            return  # the partition has a new owner, who dead-letters it again if needed
        self._outage.failed(error if isinstance(error, BaseException) else RuntimeError(error))
        item.attempt += 1
        delay = min(self._retry_max, 0.5 * 2 ** min(item.attempt, 10))
        self._retry.append((time.monotonic() + delay, item))

    def poll(self) -> None:
        """Serve delivery reports and re-produce writes whose backoff has passed."""
        self._producer.poll(0)
        if self._topics is not None:
            self._topics.poll()
        if self._held:
            held, self._held = self._held, []
            for item in held:
                self._produce(item)
        if not self._retry:
            return
        now = time.monotonic()
        due = [item for when, item in self._retry if when <= now]
        self._retry = [(when, item) for when, item in self._retry if when > now]
        for item in due:
            self._produce(item)

    @property
    def pending(self) -> int:
        """Dead letters not yet acknowledged (in flight or waiting to be retried)."""
        return self.in_flight + len(self._retry) + len(self._held)

    def forget(self, tps: set[TP]) -> None:
        """Drop retries for records of partitions this bridge no longer owns."""
        self._retry = [(w, item) for w, item in self._retry if item.record.tp not in tps]
        self._held = [item for item in self._held if item.record.tp not in tps]

    def flush(self, timeout: float) -> int:
        """Wait for outstanding writes; returns how many are still not acknowledged."""
        remaining: int = self._producer.flush(timeout)
        return remaining + len(self._retry) + len(self._held)
