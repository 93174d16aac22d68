"""The replay engine: :class:`Replayer` moves records and offsets.

It consumes the planned dead-letter partitions, re-produces each selected letter (``ckb.*``
headers stripped) to its destination, counts the delivery reports, and commits progress
only up to the lowest letter not yet delivered.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, KafkaError, KafkaException, TopicPartition

from bridge.access_errors import DEAD_LETTER_TOPIC, SOURCE_TOPIC, KafkaClient, kafka_problem
from bridge.core.offsets import PartitionOffsets
from bridge.core.vocabulary import TP
from bridge.records import Record
from bridge.replay.commits import CommitOffsets
from bridge.replay.letters import DeadLetter, replayed_headers
from bridge.replay.options import ProgressCallback, ReplayError, ReplayOptions, ReplayResult
from bridge.replay.plan import PartitionPlan, partition_count
from bridge.replay.render import listing_row
from bridge.replay.selection import Verdict, target_partition
from bridge.replay.stats import outcome_of

#: seconds without any record or end of partition before the replay gives up
IDLE_LIMIT = 30.0
#: seconds to wait for outstanding deliveries
FLUSH_TIMEOUT = 60.0
#: commit progress after this many deliveries, or this many seconds, whichever comes first
COMMIT_EVERY = 500
COMMIT_INTERVAL = 1.0
CONSUME_BATCH = 500


def _advances(messages: list[Any]) -> bool:
    """Whether a batch moved the replay on: a record or an end of partition, not just
    transient error events (those repeat for as long as a broker is down)."""
    return any(m.error() is None or m.error().code() == KafkaError._PARTITION_EOF for m in messages)


class Replayer:
    """Reads planned partitions, produces selected letters, commits delivered progress."""

    def __init__(
        self,
        consumer: Any,
        producer: Any | None,
        options: ReplayOptions,
        plans: list[PartitionPlan],
        commit: CommitOffsets | None,
    ) -> None:
        self._consumer = consumer
        self._commit_offsets = commit  # None for a dry run
        self._producer = producer  # None for a dry run
        self._options = options
        self.stop = threading.Event()
        #: told once per kind of transient consumer error
        self.on_warning: Callable[[str], None] = lambda _message: None
        self._warned: set[int] = set()
        #: who asks Kafka, to name a refused grant (None: Kafka's own words)
        self.client: KafkaClient | None = None
        #: what each partition of the dead-letter topic may commit (letters not yet done)
        self._offsets: dict[TP, PartitionOffsets] = {}
        self._ends: dict[int, int] = {}
        self._partitions: dict[str, int | None] = {}
        self._chosen = 0
        self._delivered_since_commit = 0
        self._last_commit = time.monotonic()
        self.result = ReplayResult()
        self.total = sum(plan.pending for plan in plans)
        for plan in plans:
            self._offsets[(options.source, plan.partition)] = PartitionOffsets(
                committed=plan.committed
            )
            if plan.pending:
                self._ends[plan.partition] = plan.end

    # -- driving --------------------------------------------------------------------------
    def run(self, progress: ProgressCallback) -> ReplayResult:
        """Replay until every partition reached its end (or ``--limit``, an interrupt, an
        error); then flush the producer and commit what was delivered."""
        if self._ends:
            self._consumer.assign(
                [TopicPartition(self._options.source, p, self._start(p)) for p in self._ends]
            )
        try:
            self._read(progress)
        except (ReplayError, KafkaException) as exc:
            self.result.error = str(exc)
        self.result.interrupted = self.stop.is_set()
        self._finish()
        return self.result

    def _start(self, partition: int) -> int:
        committed = self._offsets[(self._options.source, partition)].committed
        return OFFSET_BEGINNING if committed is None else committed

    def _read(self, progress: ProgressCallback) -> None:
        idle_since = time.monotonic()
        while self._ends and not self._done():
            messages = self._consumer.consume(CONSUME_BATCH, 0.5)
            now = time.monotonic()
            if _advances(messages):
                idle_since = now
            elif now - idle_since > IDLE_LIMIT:
                raise ReplayError(
                    f"no progress reading {self._options.source} for {IDLE_LIMIT:.0f}s "
                    "(is Kafka reachable?)"
                )
            for message in messages:
                self._take(message)
                if self._done():
                    break
            self._service()
            progress(self.result.stats.examined, self._chosen, self.total)

    def _done(self) -> bool:
        limit = self._options.limit
        limited = limit is not None and self._chosen >= limit
        return limited or self.stop.is_set() or self.result.error is not None

    def _take(self, message: Any) -> None:
        error = message.error()
        if error is not None:
            self._on_event(message, error)
            return
        partition, offset = message.partition(), message.offset()
        end = self._ends.get(partition)
        if end is None or offset >= end:
            self._close(partition)  # beyond the end captured at start: not chased
            return
        self._examine(DeadLetter.from_record(Record.from_message(message)))
        if offset + 1 >= end:
            self._close(partition)

    def _on_event(self, message: Any, error: KafkaError) -> None:
        if error.code() == KafkaError._PARTITION_EOF:
            self._close(message.partition())
        elif error.fatal():
            raise ReplayError(f"Kafka consumer failed: {error.str()}")
        elif problem := self._refused(error, message.topic(), SOURCE_TOPIC):
            raise ReplayError(problem)
        elif error.code() not in self._warned:  # transient (broker down, …): once per kind
            self._warned.add(error.code())
            self.on_warning(f"Kafka: {error.str()} (retrying)")

    def _refused(self, error: Any, topic: str | None, needs: tuple[str, ...]) -> str | None:
        """The access problem ``error`` reports (its fix in one line), if it is one."""
        if self.client is None or not isinstance(error, KafkaError):
            return None
        group = self._options.group
        problem = kafka_problem(error, self.client, topic=topic, group=group, topic_needs=needs)
        return None if problem is None else problem.message

    def _close(self, partition: int) -> None:
        """Stop reading ``partition``: its end (as captured at start) was reached."""
        if self._ends.pop(partition, None) is not None:
            self._consumer.pause([TopicPartition(self._options.source, partition)])

    # -- one letter -----------------------------------------------------------------------
    def _examine(self, letter: DeadLetter) -> None:
        record = letter.record
        self._offsets[record.tp].add(record.offset, 0.0)
        verdict, refusal = self._options.selection.judge(letter)
        if verdict is Verdict.REPLAY:
            self._chosen += 1
            if self._producer is not None:
                self._produce(letter)
                return
            self.result.selected.append(listing_row(letter))
        elif refusal is not None and self._producer is None:
            self.result.refused.append((*listing_row(letter), refusal.value))
        # filtered, skipped or refused: done with, committed past (it stays in the topic)
        self.result.stats.count(letter.reason, outcome_of(verdict), refusal)
        self._offsets[record.tp].finish(record.offset)

    def _produce(self, letter: DeadLetter) -> None:
        record = letter.record
        destination = self._options.selection.destination(letter)
        assert destination is not None  # the verdict was REPLAY
        extra: dict[str, Any] = {}
        partition = target_partition(letter, destination, self._partition_count(destination))
        if partition is not None:
            extra["partition"] = partition

        def delivered(err: Any, _msg: Any) -> None:
            self._delivered(letter, destination, err)

        while True:
            try:
                self._producer_any.produce(
                    destination,
                    key=record.key,
                    value=record.value,
                    headers=replayed_headers(record.headers, (letter.replays or 0) + 1),
                    on_delivery=delivered,
                    **extra,
                )
                return
            except BufferError:  # the local queue is full: serve delivery reports, retry
                self._producer_any.poll(0.1)

    @property
    def _producer_any(self) -> Any:
        assert self._producer is not None
        return self._producer

    def _partition_count(self, topic: str) -> int:
        if topic not in self._partitions:
            self._partitions[topic] = partition_count(self._consumer, topic)
        count = self._partitions[topic]
        if count is None:
            raise ReplayError(
                f"destination topic {topic!r} does not exist: create it, or pass --to TOPIC"
            )
        return count

    def _delivered(self, letter: DeadLetter, destination: str, err: Any) -> None:
        """Delivery report (served by ``poll``/``flush`` on this thread)."""
        record = letter.record
        if err is not None:
            self.result.stats.count(letter.reason, "failed")
            if self.result.error is None:
                why = self._refused(err, destination, DEAD_LETTER_TOPIC) or err
                self.result.error = (
                    f"Kafka did not accept {record.coordinates()} for {destination}: {why}; "
                    "progress is committed up to it: run again to retry (letters delivered "
                    "after it are sent again)"
                )
            return
        self.result.stats.count(letter.reason, "replayed")
        self._offsets[record.tp].finish(record.offset)
        self._delivered_since_commit += 1

    # -- progress -------------------------------------------------------------------------
    def _service(self) -> None:
        if self._producer is not None:
            self._producer.poll(0)
        due = time.monotonic() - self._last_commit >= COMMIT_INTERVAL
        if due or self._delivered_since_commit >= COMMIT_EVERY:
            self._commit()

    def _commit(self) -> None:
        """Commit each partition up to its lowest letter not yet delivered (never in a dry
        run); raises :class:`ReplayError` when Kafka does not take it."""
        self._last_commit = time.monotonic()
        points = {
            tp: point
            for tp, offsets in self._offsets.items()
            if (point := offsets.committable()) is not None
        }
        if self._commit_offsets is None or not points:
            return
        try:
            self._commit_offsets(points)
        except (KafkaException, ReplayError) as exc:
            raise ReplayError(
                f"could not commit progress under group {self._options.group!r}: {exc}; "
                "letters replayed since its last commit will be replayed again by the next run"
            ) from exc
        for tp_key, offset in points.items():
            self._offsets[tp_key].mark_committed(offset)
        self._delivered_since_commit = 0

    def _finish(self) -> None:
        """Wait for outstanding deliveries, then commit what they confirmed."""
        if self._producer is not None:
            remaining = self._producer.flush(FLUSH_TIMEOUT)
            if remaining and self.result.error is None:
                self.result.error = f"{remaining} replayed records were not confirmed by Kafka"
        try:
            self._commit()
        except ReplayError as exc:
            error = self.result.error
            if error is None or str(exc) not in error:
                self.result.error = str(exc) if error is None else f"{error}; {exc}"
