"""Committing the engine's commit points to Kafka, and reading librdkafka's answers.

Commits are asynchronous (they never block the loop, even with Kafka away) except on revoke,
where the group waits for them. A failed commit un-marks its point so the next turn sends it
again. One asynchronous commit at a time: librdkafka retries an unanswered OffsetCommit after a
reconnect, possibly after a newer one, and the broker keeps whichever came last; waiting for
each answer keeps the committed offset from ever going back.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from confluent_kafka import KafkaError, KafkaException, TopicPartition

from bridge.core.engine import WorkEngine
from bridge.core.vocabulary import TP
from bridge.events import Observers
from bridge.kafka_clients import kafka_error_of

log = logging.getLogger(__name__)


#: seconds between commits of points that did not move (cheap: one request per partition)
RECOMMIT_EVERY = 10.0
#: seconds after which an unanswered asynchronous commit no longer holds back the next one
#: (librdkafka answers every commit, at the latest when its request times out; this is a net)
COMMIT_ANSWER_TIMEOUT = 120.0


class FatalConsumerError(Exception):
    """Kafka said something the bridge cannot recover from (e.g. fenced static member)."""


class CommitReports:
    """librdkafka's commit reports (the consumer's ``on_commit``), kept for the loop to apply.

    librdkafka calls it inside ``consume()``, on the loop's thread; the loop drains it each turn.
    """

    def __init__(self) -> None:
        self.reports: deque[tuple[KafkaError | None, list[TopicPartition]]] = deque()

    def __call__(self, error: KafkaError | None, partitions: list[TopicPartition]) -> None:
        self.reports.append((error, partitions))


class Committer:
    def __init__(
        self,
        consumer: Any,
        engine: WorkEngine[Any],
        events: Observers,
        reports: CommitReports,
        clock: Callable[[], float],
    ) -> None:
        self._clock = clock
        self._consumer = consumer
        self._engine = engine
        self._events = events
        self.reports = reports
        #: asynchronous commits sent and not yet answered
        self.pending = 0
        self._sent_at = 0.0
        self._last = 0.0
        self._last_again = 0.0

    def commit_if_due(self, now: float, interval: float) -> None:
        if self.pending and not self._answer_overdue(now):
            return  # the next commit goes after the answer to this one (see the module doc)
        if now - self._last >= interval:
            self._last = now
            # every RECOMMIT_EVERY seconds the unchanged points too: a broker restarted before
            # it made the last commits durable has lost them (CI's chaos 08 saw 150 -> 127)
            again = now - self._last_again >= RECOMMIT_EVERY
            if again:
                self._last_again = now
            self.commit(sync=False, again=again)

    def _answer_overdue(self, now: float) -> bool:
        if now - self._sent_at < COMMIT_ANSWER_TIMEOUT:
            return False
        log.warning(
            "no answer to a commit sent %.0fs ago; committing again without waiting",
            now - self._sent_at,
        )
        self.pending = 0
        return True

    def commit(self, sync: bool, tps: Iterable[TP] | None = None, again: bool = False) -> None:
        """Commit the points that moved; asynchronous unless the group is about to move."""
        points = self._engine.committable(tps, again)
        if not points:
            return
        offsets = [TopicPartition(t, p, offset) for (t, p), offset in points.items()]
        try:
            answer = self._consumer.commit(offsets=offsets, asynchronous=not sync)
        except KafkaException as exc:
            self._failed(kafka_error_of(exc), exc)
            return
        for tp, offset in points.items():
            self._engine.mark_committed(tp, offset)
        if sync:  # librdkafka reports only asynchronous commits through on_commit
            self._apply(None, answer or offsets, counted=False)
        else:
            self.pending += 1
            self._sent_at = self._clock()

    def apply_reports(self) -> None:
        while self.reports.reports:
            error, partitions = self.reports.reports.popleft()
            self._apply(error, partitions, counted=True)

    def _apply(
        self, error: KafkaError | None, partitions: list[TopicPartition], counted: bool
    ) -> None:
        if counted:
            self.pending = max(0, self.pending - 1)
        for part in partitions:
            tp = (part.topic, part.partition)
            failed = error or part.error
            if failed is None:
                self._events.on_committed(tp, part.offset)
            else:
                self._engine.unmark_committed(tp, part.offset)
                self._failed(failed, failed)

    @staticmethod
    def _failed(error: object, cause: object) -> None:
        if not isinstance(error, KafkaError):
            log.info("commit not accepted now (%s); retrying next turn", cause)
            return
        if error.code() == KafkaError._NO_OFFSET:
            return
        if error.fatal():
            raise FatalConsumerError(f"commit failed fatally: {error.str()}")
        # a moving group (rebalance in progress, unknown member, …) or Kafka away: retried
        log.info("commit not accepted (%s); retrying", error.str())


def fatal_message(error: KafkaError) -> str:
    if error.code() in (KafkaError._FENCED, KafkaError.FENCED_INSTANCE_ID):
        return (
            f"fenced by the group ({error.str()}): another instance uses the same "
            "group.instance.id; give each instance its own kafka.consumer.group.instance.id"
        )
    return f"Kafka consumer failed: {error.str()}"
