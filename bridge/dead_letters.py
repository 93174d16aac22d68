"""Writing records to a Kafka dead-letter topic, and knowing when Kafka has them.

A record counts as finished only when the DLQ write's delivery report comes back without
error. The producer is idempotent (``enable.idempotence=true``, ``acks=all``) and compresses
(``compression.type``, see :mod:`bridge.kafka_clients`). Delivery callbacks run inside
:meth:`DeadLetterWriter.poll`, on the consumer loop's thread.

Every failed write is classified (:mod:`bridge.dead_letter_errors`), because some can never
succeed as they are and retrying them unchanged would block their partition forever:

- **retriable** (timeouts, a broker away, a full local queue, a topic not created yet):
  written again with exponential backoff, forever; the record stays uncommitted.
- **too large** (``MSG_SIZE_TOO_LARGE``, ``RECORD_LIST_TOO_LARGE``): the broker refuses a whole
  batch, so a small letter batched with a big one is refused too. A refused letter is first
  tried again *alone* (no other letter in flight: librdkafka cannot batch it with anything);
  refused alone, it is written without its value, keeping its key and headers and adding
  ``ckb.value.dropped`` (the value's size in bytes), so it lands and its partition moves on.
  A letter the producer itself refuses as too large (over ``message.max.bytes``) goes without
  its value at once. The record itself is still in its source topic until retention.
- **refused** (``TOPIC_AUTHORIZATION_FAILED``, an invalid topic name, a cluster policy, a letter
  too large even without its value): only an operator can fix these. Dropping the record
  would lose it, so it is *not* committed: the write is retried with backoff, logged once as
  an ERROR naming the topic and the fix, counted in ``ckb_dlq_pending_records{state="refused"}``
  and given as a ``/readyz`` reason. A revoke or shutdown does not wait for it
  (:meth:`~DeadLetterWriter.pending_for` leaves it out): the next owner of its partition
  consumes the record again. A topic stays refusing until one of its letters lands
  (librdkafka answers ``TOPIC_EXCEPTION`` once, then ``_UNKNOWN_TOPIC`` locally).
- **fatal** (the idempotent producer's fatal error, e.g. a sequence desync): that producer
  never writes again. It is replaced by a new one (``rebuild``) and every letter not yet
  acknowledged is written again through it; reports of the old one are ignored.

A record that already carries ``ckb.reason`` (it is a dead letter itself) and would be
dead-lettered to a topic the bridge consumes, or to its own topic, is not written: that is a
loop. It is finished where it is (it already sits in a dead-letter topic, nothing is lost),
logged once per topic and counted (``ckb_dlq_loops_stopped_total``).

What a dead letter carries is in :mod:`bridge.dead_letter_headers` (the worker's exception text
masked), how a failed write is classified in :mod:`bridge.dead_letter_errors`.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any, Protocol

from bridge.access_errors import KafkaClient
from bridge.core.vocabulary import TP
from bridge.dead_letter_backlog import Letter, summarize
from bridge.dead_letter_errors import (
    HEADERS_TOO_LARGE,
    WriteError,
    classify,
    describe,
    kafka_error,
    refused_fix,
)
from bridge.dead_letter_headers import (
    HEADER_PREFIX,
    MAX_MESSAGE_BYTES,
    MAX_TRACEBACK_BYTES,
    VALUE_DROPPED,
    Failure,
    dlq_headers,
)
from bridge.events import DeadLetterState
from bridge.io_retry import OutageLog
from bridge.records import Record

__all__ = [
    "HEADER_PREFIX",
    "MAX_MESSAGE_BYTES",
    "MAX_TRACEBACK_BYTES",
    "VALUE_DROPPED",
    "DeadLetterState",
    "DeadLetterWriter",
    "Failure",
    "dlq_headers",
]

log = logging.getLogger(__name__)


class TopicGate(Protocol):
    """Says whether a dead-letter topic may be written to now (``bridge.dlq_topics``)."""

    def ready(self, topic: str) -> bool: ...

    def poll(self) -> None:
        """Serve the gate's own client (called on every :meth:`DeadLetterWriter.poll`)."""


class DeadLetterWriter:
    """Produces dead letters and calls ``on_done`` only after Kafka acknowledged them."""

    def __init__(
        self,
        producer: Any,
        group: str,
        retry_max: float = 30.0,
        topics: TopicGate | None = None,
        rebuild: Callable[[], Any] | None = None,
        consumes: Callable[[str], bool] = lambda topic: False,
        client: KafkaClient | None = None,
    ) -> None:
        self._producer = producer
        self._client = client  # who writes: names the principal of a missing grant
        #: builds a new producer after a fatal error of the current one
        self._rebuild = rebuild
        self._generation = 0
        self._broken = False
        #: asked before each write; not ready holds it (its topic is being created)
        self._topics = topics
        #: whether the bridge consumes a topic (a dead letter written there would loop)
        self._consumes = consumes
        self._held: list[Letter] = []
        self._group = group
        self._retry_max = retry_max
        self._retry: list[tuple[float, Letter]] = []
        self._sending: set[Letter] = set()
        #: refused as too large in a batch, waiting to be written alone; and the one that is
        self._alone: list[Letter] = []
        self._alone_now: Letter | None = None
        self._outage = OutageLog(log, "dead-letter topic")
        self._said: set[tuple[str, str]] = set()
        #: topics that refuse dead letters now: the error and its fix (until one lands)
        self._refusing: dict[str, tuple[str, str]] = {}
        self._values_dropped: Counter[str] = Counter()
        self._loops_stopped: Counter[str] = Counter()
        self._rebuilds = 0
        #: the latest :meth:`state`'s problem; read by ``/readyz`` from another thread
        self.problem: str | None = None

    def send(
        self,
        record: Record,
        topic: str,
        failure: Failure,
        on_done: Callable[[], None],
        wanted: Callable[[], bool] = lambda: True,
    ) -> None:
        """Dead-letter ``record``; ``on_done`` runs once Kafka acknowledged the write."""
        if self._would_loop(record, topic):
            self._loops_stopped[record.topic] += 1
            on_done()
            return
        self._produce(Letter(record, topic, failure, on_done, wanted, time.monotonic()))

    def _would_loop(self, record: Record, topic: str) -> bool:
        if not any(name == "ckb.reason" for name, _ in record.headers):
            return False
        if topic != record.topic and not self._consumes(topic):
            return False
        if ("loop", topic) not in self._said:
            self._said.add(("loop", topic))
            log.warning(
                "a dead letter from %s failed again and would be dead-lettered to %s, which "
                "the bridge consumes: not written again (it stays in %s); give the route of "
                "%s a dead-letter topic no route consumes",
                record.topic,
                topic,
                record.topic,
                record.topic,
            )
        return True

    @property
    def _alone_busy(self) -> bool:
        return self._alone_now is not None or bool(self._alone)

    def _waits(self, item: Letter, alone: bool) -> bool:
        """Whether ``item`` must wait before it is produced (and is put where it waits)."""
        if not alone and item.suspect:
            self._alone.append(item)  # written alone, one at a time (poll)
        elif not alone and self._alone_busy:
            self._held.append(item)  # nothing is batched with a letter tried alone
        elif self._topics is not None and not self._topics.ready(item.topic):
            self._held.append(item)  # looked at again on every poll()
        else:
            return False
        return True

    def _produce(self, item: Letter, alone: bool = False) -> None:
        if self._waits(item, alone):
            if item is self._alone_now:
                self._alone_now = None  # its topic is not ready: tried alone again later
            return
        headers = dlq_headers(item.record, item.failure, self._group, datetime.now(UTC))
        value = item.record.value
        if item.dropped is not None:
            headers.append((VALUE_DROPPED, str(item.dropped).encode()))
            value = None
        generation = self._generation

        def delivered(err: Any, _msg: Any) -> None:
            if generation != self._generation:
                return  # a replaced producer's report: the letter went again through the new one
            self._sending.discard(item)
            if item is self._alone_now:
                self._alone_now = None
            if err is None:
                self._landed(item)
            else:
                self._failed(item, err, alone)

        try:
            self._producer.produce(
                item.topic, value=value, key=item.record.key, headers=headers, on_delivery=delivered
            )
        except (BufferError, Exception) as exc:  # queue full, too large, unknown topic, …
            if item is self._alone_now:
                self._alone_now = None
            self._failed(item, exc, alone=True)  # the producer judged this letter by itself
            return
        self._sending.add(item)

    def _landed(self, item: Letter) -> None:
        if self._refusing.pop(item.topic, None) is not None:
            self._said -= {key for key in self._said if key[0] == item.topic}  # said again
            log.warning("dead letters to %s are written again", item.topic)
        self._outage.recovered()
        if item.dropped is not None:
            self._values_dropped[item.topic] += 1
        item.on_done()

    def _failed(self, item: Letter, error: object, alone: bool) -> None:
        if not item.wanted():
            return  # the partition has a new owner, who dead-letters it again if needed
        kind = classify(error)
        item.last_error = describe(error)
        if kind is WriteError.FATAL and self._rebuild is not None:
            self._broken = True
            self._retry.append((0.0, item))  # again through the rebuilt producer
            return
        if kind is WriteError.TOO_LARGE:
            if item.dropped is None and not alone:
                item.suspect = True
                self._retry.append((0.0, item))
                return
            if item.dropped is None and item.record.value and not item.whole_only:
                item.suspect = False
                item.dropped = len(item.record.value)
                log.warning(
                    "dead letter of %s is too large for %s: written without its value (%d "
                    "bytes; header %s); raise the topic's max.message.bytes to keep values",
                    item.record.coordinates(),
                    item.topic,
                    item.dropped,
                    VALUE_DROPPED,
                )
                self._retry.append((0.0, item))
                return
            # refused even without its value: only a larger max.message.bytes helps, and then
            # the letter should land whole: from now on it is tried with its value only
            item.dropped = None
            item.whole_only = True
            self._refuse(item, HEADERS_TOO_LARGE)
        elif kind is WriteError.REFUSED:
            fix = refused_fix(kafka_error(error), item.topic, self._client)
            self._refuse(item, fix or "see the error")
        elif item.topic in self._refusing:  # librdkafka then says _UNKNOWN_TOPIC, for instance
            item.last_error, item.refused = self._refusing[item.topic]
        else:
            item.refused = None
            self._outage.failed(error if isinstance(error, BaseException) else RuntimeError(error))
        self._schedule_retry(item)

    def _refuse(self, item: Letter, fix: str) -> None:
        item.refused = fix
        self._refusing[item.topic] = (item.last_error, fix)
        if (item.topic, item.last_error) not in self._said:
            self._said.add((item.topic, item.last_error))
            log.error(
                "cannot write dead letters to %s (%s): %s. They are retried with backoff and "
                "their records stay uncommitted until then",
                item.topic,
                item.last_error,
                fix,
            )

    def _schedule_retry(self, item: Letter) -> None:
        item.attempt += 1
        delay = min(self._retry_max, 0.5 * 2 ** min(item.attempt, 10))
        self._retry.append((time.monotonic() + delay, item))

    def poll(self) -> None:
        """Serve delivery reports and re-produce writes whose backoff has passed."""
        self._producer.poll(0)
        if self._topics is not None:
            self._topics.poll()
        if self._broken and self._rebuild is not None:
            self._replace_producer()
        if self._alone_now is None and self._alone and not self._sending:
            self._alone_now = self._alone.pop(0)
            self._produce(self._alone_now, alone=True)
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

    def _replace_producer(self) -> None:
        """A new producer after a fatal error; every letter in flight goes again through it."""
        assert self._rebuild is not None
        old = self._producer
        try:
            self._producer = self._rebuild()
        except Exception as exc:  # asked again on the next poll; said once
            if ("", "rebuild") not in self._said:
                self._said.add(("", "rebuild"))
                log.error("cannot build a new dead-letter producer (%s); trying again", exc)
            return
        self._said.discard(("", "rebuild"))
        self._generation += 1
        self._broken = False
        self._rebuilds += 1
        again = [*self._sending, *([self._alone_now] if self._alone_now else [])]
        self._sending.clear()
        self._alone_now = None
        self._retry.extend((0.0, item) for item in again if item.wanted())
        log.error(
            "the dead-letter producer failed fatally; replaced by a new one, %d letters are "
            "written again",
            len(again),
        )
        try:  # its queued letters fail at once; their reports are ignored (old generation)
            old.purge()
            old.poll(0)
        except Exception as exc:  # a broken producer may refuse even this
            log.debug("purging the failed dead-letter producer: %s", exc)

    def _items(self) -> Iterable[Letter]:
        yield from self._sending
        yield from (item for _, item in self._retry)
        yield from self._held
        yield from self._alone
        if self._alone_now is not None and self._alone_now not in self._sending:
            yield self._alone_now

    @property
    def in_flight(self) -> int:
        """Dead letters handed to the producer and not yet reported on."""
        return len(self._sending)

    @property
    def pending(self) -> int:
        """Dead letters not yet acknowledged (in flight, waiting to be retried or held)."""
        return sum(1 for _ in self._items())

    def pending_for(self, tps: Iterable[TP] | None = None) -> int:
        """Dead letters of ``tps`` (default: all) that may still land: what a revoke or a
        shutdown waits for. Letters refused by a permanent error are left out: waiting for
        them is futile, and their records stay uncommitted for the next owner."""
        wanted = None if tps is None else set(tps)
        return sum(
            1
            for item in self._items()
            if item.refused is None and (wanted is None or item.record.tp in wanted)
        )

    def state(self) -> DeadLetterState:
        """Pending letters by topic and state, the totals, and a ``/readyz`` problem if any."""
        pending, self.problem = summarize(self._items(), self._sending, time.monotonic())
        return DeadLetterState(
            pending,
            dict(self._values_dropped),
            self._rebuilds,
            dict(self._loops_stopped),
            self.problem,
        )

    def forget(self, tps: set[TP]) -> None:
        """Drop retries for records of partitions this bridge no longer owns."""
        self._retry = [(w, item) for w, item in self._retry if item.record.tp not in tps]
        self._held = [item for item in self._held if item.record.tp not in tps]
        self._alone = [item for item in self._alone if item.record.tp not in tps]

    def flush(self, timeout: float) -> int:
        """Wait for outstanding writes; returns how many are still not acknowledged."""
        self._producer.flush(timeout)
        return self.pending
