"""``ckb dlq replay``: send dead letters back to the topic they came from.

A replay reads a dead-letter topic under its own consumer group (``ckb-replay.<dlq topic>``
unless ``--group`` names another), from that group's committed position up to the end
offsets captured when it starts, so it terminates: letters written while it runs are left
for the next replay. Each selected letter is produced to ``ckb.original.topic`` (or
``--to``) with its key, value and headers byte for byte, minus every ``ckb.*`` header, by
an idempotent producer with ``acks=all``. To the original topic it goes to the original
partition when that partition still exists (keys stay where they were, whatever partitioner
wrote them); to another topic the producer's partitioner decides.

Progress is committed under the replay group only up to the lowest letter whose delivery
report has not come back without error (letters filtered out or skipped count as done), so
an interrupted replay resumes without loss and without replaying a delivered letter twice.
Payloads are never printed: not in the listing, not in the summary, not in errors.

The decisions (which letter, where to, what to strip, how to count) are pure functions
below; :class:`Replayer` only moves records and offsets.
"""

from __future__ import annotations

import re
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import Enum
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, KafkaError, KafkaException, TopicPartition
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from bridge.dead_letters import HEADER_PREFIX
from bridge.kafka_clients import (
    client_id,
    consumer_config,
    producer_config,
    quiet_kafka_logger,
)
from bridge.offsets import OffsetTracker
from bridge.records import Record
from bridge.settings import KafkaSettings

Headers = Sequence[tuple[str, bytes | None]]

GROUP_PREFIX = "ckb-replay."
#: seconds to wait for metadata, committed offsets and watermarks
METADATA_TIMEOUT = 10.0
#: seconds without any record or end of partition before the replay gives up
IDLE_LIMIT = 30.0
#: seconds to wait for outstanding deliveries, then for Kafka's answer to the last commit
FLUSH_TIMEOUT = 60.0
COMMIT_TIMEOUT = 30.0
#: commit progress after this many deliveries, or this many seconds, whichever comes first
COMMIT_EVERY = 500
COMMIT_INTERVAL = 1.0
CONSUME_BATCH = 500
#: the tracker's assignment epoch; a replay never sees a rebalance (it assigns, not subscribes)
EPOCH = 0

_AGE = re.compile(r"^(\d+)\s*([smhdw])$")
_AGE_UNITS = {"s": 1, "m": 60, "h": 3_600, "d": 86_400, "w": 604_800}


class ReplayError(Exception):
    """A runtime failure the user should read (Kafka unreachable, missing topic, …)."""


# == pure decisions =============================================================================


def default_group(source: str) -> str:
    return f"{GROUP_PREFIX}{source}"


def parse_since(text: str, now: datetime) -> datetime:
    """``--since``: an ISO-8601 datetime (UTC when it names no zone) or an age like ``2h``."""
    value = text.strip()
    age = _AGE.match(value.lower())
    if age is not None:
        return now - timedelta(seconds=int(age.group(1)) * _AGE_UNITS[age.group(2)])
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(
            f"{text!r} is neither an ISO-8601 datetime (e.g. 2024-05-01T12:00:00Z) "
            "nor an age (e.g. 30m, 2h, 1d; units s m h d w)"
        ) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def since_option(value: str | None) -> datetime | None:
    """``--since`` as given on the command line, resolved against the current time."""
    return None if value is None else parse_since(value, datetime.now(UTC))


def strip_ckb_headers(headers: Headers) -> list[tuple[str, bytes | None]]:
    """The record's own headers, in order and byte for byte, without any ``ckb.*`` header."""
    return [(name, value) for name, value in headers if not name.startswith(HEADER_PREFIX)]


def header_text(headers: Headers, name: str) -> str | None:
    """The last value of header ``name`` as text (the bridge appends its headers last)."""
    found: str | None = None
    for key, value in headers:
        if key == name and value is not None:
            found = value.decode("utf-8", "replace")
    return found


def _as_int(text: str | None) -> int | None:
    try:
        return None if text is None else int(text)
    except ValueError:
        return None


def _as_utc(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A record read from a dead-letter topic, with its ``ckb.*`` context parsed."""

    record: Record
    reason: str | None
    original_topic: str | None
    original_partition: int | None
    original_offset: int | None
    failed_at: datetime | None
    error_class: str | None

    @classmethod
    def from_record(cls, record: Record) -> DeadLetter:
        """Parse the ``ckb.*`` headers; missing or garbled ones become None."""
        headers = record.headers
        return cls(
            record=record,
            reason=header_text(headers, "ckb.reason"),
            original_topic=header_text(headers, "ckb.original.topic") or None,
            original_partition=_as_int(header_text(headers, "ckb.original.partition")),
            original_offset=_as_int(header_text(headers, "ckb.original.offset")),
            failed_at=_as_utc(header_text(headers, "ckb.failed.at")),
            error_class=header_text(headers, "ckb.error.class"),
        )

    def origin(self) -> str:
        """``topic[partition]@offset`` of the record before it was dead-lettered."""
        if self.original_topic is None:
            return "-"
        partition = "?" if self.original_partition is None else self.original_partition
        offset = "?" if self.original_offset is None else self.original_offset
        return f"{self.original_topic}[{partition}]@{offset}"


class Verdict(Enum):
    REPLAY = "replay"
    FILTERED = "filtered"
    SKIPPED = "skipped"


@dataclass(frozen=True)
class Selection:
    """Which letters to replay (``--reason``, ``--since``) and where to (``--to``)."""

    reasons: frozenset[str] = frozenset()
    since: datetime | None = None
    to_topic: str | None = None

    def verdict(self, letter: DeadLetter) -> Verdict:
        """SKIPPED: nowhere to send it (not a ckb dead letter, no ``--to``); FILTERED:
        excluded by ``--reason``/``--since`` (a letter without ``ckb.failed.at`` fails
        ``--since``); REPLAY otherwise."""
        if self.destination(letter) is None:
            return Verdict.SKIPPED
        if self.reasons and letter.reason not in self.reasons:
            return Verdict.FILTERED
        if self.since is not None and (letter.failed_at is None or letter.failed_at < self.since):
            return Verdict.FILTERED
        return Verdict.REPLAY

    def destination(self, letter: DeadLetter) -> str | None:
        return self.to_topic or letter.original_topic


def target_partition(letter: DeadLetter, destination: str, partitions: int) -> int | None:
    """The original partition when going back to the original topic and it still exists;
    None (the producer's partitioner decides by key) otherwise."""
    partition = letter.original_partition
    if destination != letter.original_topic or partition is None:
        return None
    return partition if 0 <= partition < partitions else None


@dataclass(frozen=True)
class PartitionPlan:
    """What to read of one dead-letter partition: ``[start, end)``, end captured at start."""

    partition: int
    start: int
    end: int
    committed: int | None

    @property
    def pending(self) -> int:
        return max(0, self.end - self.start)


def plan_partition(partition: int, committed: int, low: int, high: int) -> PartitionPlan:
    """Start at the committed offset, or at the low watermark when there is none (or it
    was deleted by retention: ``auto.offset.reset=earliest``)."""
    known = committed if committed >= 0 else None
    start = low if known is None else max(known, low)
    return PartitionPlan(partition, start, high, known)


OUTCOMES = ("replayed", "filtered", "skipped", "failed")
NO_REASON = "(none)"


@dataclass
class ReplayStats:
    """Examined letters per reason and outcome (``replayed`` means *would be* in a dry run)."""

    by_reason: dict[str, Counter[str]] = field(default_factory=dict)

    def count(self, reason: str | None, outcome: str) -> None:
        if outcome not in OUTCOMES:
            raise ValueError(f"unknown outcome {outcome!r}")
        self.by_reason.setdefault(reason or NO_REASON, Counter())[outcome] += 1

    def totals(self) -> Counter[str]:
        total: Counter[str] = Counter()
        for counts in self.by_reason.values():
            total.update(counts)
        return total

    @property
    def examined(self) -> int:
        return sum(self.totals().values())

    @property
    def replayed(self) -> int:
        return self.totals()["replayed"]

    def summary_line(self, dry_run: bool = False) -> str:
        totals = self.totals()
        replayed = "would replay" if dry_run else "replayed"
        line = (
            f"examined {self.examined}, {replayed} {totals['replayed']}, "
            f"filtered out {totals['filtered']}, skipped {totals['skipped']}"
        )
        if totals["failed"]:
            line += f", failed {totals['failed']}"
        return line


def outcome_of(verdict: Verdict) -> str:
    return {Verdict.REPLAY: "replayed", Verdict.FILTERED: "filtered"}.get(verdict, "skipped")


# == client configuration =======================================================================


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


# == commits ===================================================================================

TP = tuple[str, int]
#: commits the replay group's offsets (``{(topic, partition): offset}``) or raises
CommitOffsets = Callable[[dict[TP, int]], None]


class GroupOffsets:
    """Commits the replay group's offsets through the Admin API, with a timeout.

    Not ``Consumer.commit``: librdkafka gives a commit no timeout, so with the group
    coordinator unreachable a synchronous commit blocks for good (signals included), and
    ``Consumer.close`` waits for good on an unanswered asynchronous one. The replay never
    joins its group, so the group is empty and the Admin API may set its offsets.
    """

    def __init__(self, admin: Any, group: str) -> None:
        self._admin = admin
        self._group = group

    def __call__(self, points: dict[TP, int]) -> None:
        """Commit ``points``; retriable errors (the coordinator moving, loading) are retried
        for up to ``COMMIT_TIMEOUT`` seconds."""
        deadline = time.monotonic() + COMMIT_TIMEOUT
        while True:
            try:
                self._commit_once(points, max(1.0, deadline - time.monotonic()))
                return
            except KafkaException as exc:
                if not _retriable(exc) or time.monotonic() >= deadline:
                    raise
                time.sleep(0.5)

    def _commit_once(self, points: dict[TP, int], timeout: float) -> None:
        from confluent_kafka import ConsumerGroupTopicPartitions

        offsets = [TopicPartition(topic, p, offset) for (topic, p), offset in points.items()]
        request = ConsumerGroupTopicPartitions(self._group, offsets)
        futures = self._admin.alter_consumer_group_offsets([request], request_timeout=timeout)
        try:
            answer = futures[self._group].result(timeout=timeout + 5)
        except TimeoutError:
            raise ReplayError(f"no answer from Kafka within {timeout:.0f}s") from None
        for tp in answer.topic_partitions:
            if tp.error is not None:
                raise KafkaException(tp.error)


def replay_admin_config(kafka: KafkaSettings) -> dict[str, Any]:
    """For committing the replay group's offsets: the consumer's address and security."""
    security = ("security.", "sasl.", "ssl.")
    config: dict[str, Any] = {
        "bootstrap.servers": kafka.bootstrap_servers,
        "client.id": client_id("replay"),
    }
    config.update({k: v for k, v in kafka.consumer.items() if k.startswith(security)})
    return config


# == the replay =================================================================================


@dataclass(frozen=True)
class ReplayOptions:
    source: str
    group: str
    selection: Selection = field(default_factory=Selection)
    limit: int | None = None
    dry_run: bool = False


@dataclass
class ReplayResult:
    stats: ReplayStats = field(default_factory=ReplayStats)
    #: listing rows of the letters a dry run would replay (empty for a real run)
    selected: list[tuple[str, ...]] = field(default_factory=list)
    #: why the run ended early: an error message, or None
    error: str | None = None
    interrupted: bool = False


#: called as ``progress(examined, selected, total)``; total is an upper bound (``--limit``)
ProgressCallback = Callable[[int, int, int], None]


#: group coordinator errors worth another try, whether or not the error says retriable
#: (per-partition errors in Admin API answers never do)
COORDINATOR_BUSY = frozenset(
    {
        KafkaError.NOT_COORDINATOR,
        KafkaError.COORDINATOR_NOT_AVAILABLE,
        KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
        KafkaError.REQUEST_TIMED_OUT,
        KafkaError.NETWORK_EXCEPTION,
    }
)


def _retriable(exc: KafkaException) -> bool:
    error = exc.args[0] if exc.args else None
    if not isinstance(error, KafkaError):
        return False
    return bool(error.retriable()) or error.code() in COORDINATOR_BUSY


def committed_offsets(consumer: Any, tps: list[Any], attempts: int = 20) -> list[Any]:
    """``Consumer.committed``, retried while the group coordinator is still loading."""
    for attempt in range(attempts):
        try:
            return list(consumer.committed(tps, timeout=METADATA_TIMEOUT))
        except KafkaException as exc:
            if attempt == attempts - 1 or not _retriable(exc):
                raise
            time.sleep(0.5)
    raise AssertionError("unreachable")


def partition_count(consumer: Any, topic: str) -> int | None:
    """Partitions of ``topic``, or None when it does not exist (never auto-creates it)."""
    metadata = consumer.list_topics(topic, timeout=METADATA_TIMEOUT)
    info = metadata.topics.get(topic)
    if info is None or info.error is not None:
        return None
    return len(info.partitions)


def plan_topic(consumer: Any, topic: str) -> list[PartitionPlan]:
    """Where the replay group stands on each partition of ``topic``, and where it ends."""
    count = partition_count(consumer, topic)
    if count is None:
        raise ReplayError(f"topic {topic!r} does not exist (check --from)")
    tps = [TopicPartition(topic, p) for p in range(count)]
    plans = []
    for tp in committed_offsets(consumer, tps):
        if tp.error is not None:
            raise ReplayError(f"cannot read the committed offset of {topic}[{tp.partition}]")
        low, high = consumer.get_watermark_offsets(
            TopicPartition(topic, tp.partition), timeout=METADATA_TIMEOUT
        )
        plans.append(plan_partition(tp.partition, tp.offset, low, high))
    return plans


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
        self._tracker = OffsetTracker()
        self._ends: dict[int, int] = {}
        self._partitions: dict[str, int | None] = {}
        self._chosen = 0
        self._delivered_since_commit = 0
        self._last_commit = time.monotonic()
        self.result = ReplayResult()
        self.total = sum(plan.pending for plan in plans)
        for plan in plans:
            self._tracker.assign((options.source, plan.partition), EPOCH, plan.committed)
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
        committed = self._tracker.committed((self._options.source, partition))
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
        elif error.code() not in self._warned:  # transient (broker down, …): once per kind
            self._warned.add(error.code())
            self.on_warning(f"Kafka: {error.str()} (retrying)")

    def _close(self, partition: int) -> None:
        """Stop reading ``partition``: its end (as captured at start) was reached."""
        if self._ends.pop(partition, None) is not None:
            self._consumer.pause([TopicPartition(self._options.source, partition)])

    # -- one letter -----------------------------------------------------------------------
    def _examine(self, letter: DeadLetter) -> None:
        record = letter.record
        self._tracker.add(record.tp, record.offset, 0.0)
        verdict = self._options.selection.verdict(letter)
        if verdict is Verdict.REPLAY:
            self._chosen += 1
            if self._producer is not None:
                self._produce(letter)
                return
            self.result.selected.append(listing_row(letter))
        self.result.stats.count(letter.reason, outcome_of(verdict))
        self._tracker.finish(record.tp, record.offset, EPOCH)

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
                    headers=strip_ckb_headers(record.headers),
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
                self.result.error = (
                    f"Kafka did not accept {record.coordinates()} for {destination}: {err}; "
                    "progress is committed up to it: run again to retry (letters delivered "
                    "after it are sent again)"
                )
            return
        self.result.stats.count(letter.reason, "replayed")
        self._tracker.finish(record.tp, record.offset, EPOCH)
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
        points = self._tracker.committable()
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
            self._tracker.mark_committed(tp_key, offset)
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


@contextmanager
def stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """SIGINT/SIGTERM end the replay cleanly: flush, commit, summarise."""

    def handler(_signum: int, _frame: Any) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


@contextmanager
def replay_session(kafka: KafkaSettings, options: ReplayOptions) -> Iterator[Replayer]:
    """Clients and the partition plan for one replay; raises :class:`ReplayError` when the
    dead-letter topic cannot be read. The consumer is closed on exit (the producer was
    flushed by :meth:`Replayer.run`)."""
    from confluent_kafka import Consumer, Producer
    from confluent_kafka.admin import AdminClient

    logger: dict[str, Any] = {"logger": quiet_kafka_logger("replay")}
    consumer = Consumer({**replay_consumer_config(kafka, options.group), **logger})
    try:
        try:
            plans = plan_topic(consumer, options.source)
        except KafkaException as exc:
            raise ReplayError(
                f"cannot read {options.source!r} from Kafka at {kafka.bootstrap_servers}: {exc}"
            ) from exc
        if options.dry_run:
            yield Replayer(consumer, None, options, plans, None)
            return
        producer = Producer({**replay_producer_config(kafka), **logger})
        admin = AdminClient({**replay_admin_config(kafka), **logger})
        yield Replayer(consumer, producer, options, plans, GroupOffsets(admin, options.group))
    finally:
        consumer.close()


def replay(
    kafka: KafkaSettings, options: ReplayOptions, progress: ProgressCallback | None = None
) -> ReplayResult:
    """Run one replay; SIGINT/SIGTERM end it cleanly (flush, commit, summary)."""
    with replay_session(kafka, options) as replayer, stop_on_signals(replayer.stop):
        return replayer.run(progress or (lambda _examined, _chosen, _total: None))


# == output =====================================================================================


def run_with_progress(kafka: KafkaSettings, options: ReplayOptions) -> ReplayResult:
    """:func:`replay` with a rich progress bar on stderr."""
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[chosen]} selected"),
        TimeElapsedColumn(),
    )
    verb = "scanning" if options.dry_run else "replaying"
    with replay_session(kafka, options) as replayer, stop_on_signals(replayer.stop):
        bar = Progress(*columns, console=Console(stderr=True))
        task = bar.add_task(f"{verb} {options.source}", total=replayer.total, chosen=0)

        def update(examined: int, chosen: int, total: int) -> None:
            bar.update(task, completed=examined, chosen=chosen, total=total)

        def warn(message: str) -> None:
            bar.console.print(f"warning: {message}", style="yellow", markup=False)

        replayer.on_warning = warn

        with bar:
            result = replayer.run(update)
            bar.update(task, completed=result.stats.examined)
    return result


LISTING_COLUMNS = ("dead letter", "reason", "original", "failed at", "error class")


def listing_row(letter: DeadLetter) -> tuple[str, ...]:
    """One dry-run row: coordinates and context (failed at, in UTC), never the payload."""
    moment = letter.failed_at
    failed_at = "-" if moment is None else f"{moment.astimezone(UTC):%Y-%m-%d %H:%M:%S}Z"
    return (
        letter.record.coordinates(),
        letter.reason or NO_REASON,
        letter.origin(),
        failed_at,
        letter.error_class or "-",
    )


def render_selected(rows: list[tuple[str, ...]], console: Console) -> None:
    table = Table(title=f"{len(rows)} dead letters selected")
    for name in LISTING_COLUMNS:
        table.add_column(name, overflow="fold")
    for row in rows:
        table.add_row(*row)
    console.print(table)


def render_summary(result: ReplayResult, options: ReplayOptions, console: Console) -> None:
    """Counts per reason, then one plain line: ``done|stopped|dry run: examined N, …``."""
    stats = result.stats
    table = Table(title=f"{options.source} (group {options.group})")
    table.add_column("reason")
    replayed = "would replay" if options.dry_run else "replayed"
    headings = ("examined", replayed, "filtered out", "skipped", "failed")
    for heading in headings:
        table.add_column(heading, justify="right")
    for reason, counts in sorted(stats.by_reason.items()):
        table.add_row(reason, str(sum(counts.values())), *(str(counts[o]) for o in OUTCOMES))
    totals = stats.totals()
    table.add_row("total", str(stats.examined), *(str(totals[o]) for o in OUTCOMES), style="bold")
    if stats.examined:
        console.print(table)
    stopped = result.error is not None or result.interrupted
    prefix = "dry run" if options.dry_run else "stopped" if stopped else "done"
    console.print(f"{prefix}: {stats.summary_line(options.dry_run)}", highlight=False)
    totals = stats.totals()
    if totals["filtered"] and not options.dry_run:
        console.print(
            f"filtered out {totals['filtered']}: examined, so committed past under group "
            f"{options.group}; replay them later under another --group",
            highlight=False,
        )
    skipped = totals["skipped"]
    if skipped:
        console.print(
            f"skipped {skipped}: not a ckb dead letter (no ckb.original.topic); "
            "pass --to TOPIC to replay such records",
            highlight=False,
        )
    if options.dry_run:
        console.print("dry run: nothing produced, nothing committed", highlight=False)
