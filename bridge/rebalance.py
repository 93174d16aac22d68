"""The consumer's rebalance callbacks: what an assignment, a revoke or a loss does to the work.

librdkafka calls them inside ``consume()``/``poll()``, on the loop's thread. On revoke the
partitions' unsent records are dropped, in-flight tasks get up to ``revoke_grace`` to finish,
what finished is committed synchronously (the group waits for it), and the partitions are
forgotten whole; on loss they are forgotten without a commit (another member may own them).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

from confluent_kafka import KafkaException, TopicPartition

from bridge.commits import Committer
from bridge.core.engine import WorkEngine
from bridge.core.vocabulary import TP, Rebalance
from bridge.dead_letters import DeadLetterWriter
from bridge.events import Observers
from bridge.intake import Intake, Work
from bridge.results import ResultWatcher

log = logging.getLogger(__name__)


class RebalanceCallbacks:
    def __init__(
        self,
        engine: WorkEngine[Work],
        intake: Intake,
        commits: Committer,
        dead_letters: DeadLetterWriter,
        watcher: ResultWatcher,
        observers: Observers,
        clock: Callable[[], float],
        revoke_grace: float,
        stopping: Callable[[], bool],
        wait_turn: Callable[[], None],
    ) -> None:
        self._engine = engine
        self._intake = intake
        self._commits = commits
        self._dlq = dead_letters
        self._watcher = watcher
        self._events = observers
        self._clock = clock
        #: seconds a revoke waits for in-flight tasks (none once the bridge is stopping)
        self._revoke_grace = revoke_grace
        self._stopping = stopping
        #: one short turn of applying outcomes and delivery reports
        self._wait_turn = wait_turn

    def on_assign(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        tps = [(p.topic, p.partition) for p in partitions]
        try:
            consumer.incremental_assign(partitions)
        except KafkaException:  # an eager assignor (range, roundrobin): the whole assignment
            consumer.assign(partitions)
        if partitions:
            # librdkafka keeps a partition's pause flag across revoke and re-assignment
            consumer.resume(partitions)
        for tp in tps:
            self._engine.assign(tp, self._intake.policy_for(tp[0]))
        log.info("assigned %s", names(tps))
        self._events.on_rebalance(Rebalance.ASSIGN, tps)

    def on_revoke(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        tps = sorted({(p.topic, p.partition) for p in partitions})
        for tp in tps:
            part = self._engine.partition(tp)
            if part is not None:
                part.waiting.clear()  # not sent: the next owner consumes them again
        stopping = self._stopping()
        deadline = self._clock() + (0.0 if stopping else self._revoke_grace)
        while self._engine.in_flight_of(tps) + self._dlq.pending and self._clock() < deadline:
            self._wait_turn()
        # the group waits for this commit; at shutdown it was made already, asynchronously
        self._commits.commit(sync=not stopping, tps=tps)
        self._forget(consumer, tps)
        log.info("revoked %s", names(tps))
        self._events.on_rebalance(Rebalance.REVOKE, tps)

    def on_lost(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        tps = sorted({(p.topic, p.partition) for p in partitions})
        self._forget(consumer, tps)
        log.warning("lost %s (no commit; the new owner redelivers)", names(tps))
        self._events.on_rebalance(Rebalance.LOST, tps)

    def restart(self, consumer: Any, tp: TP, offset: int) -> None:
        """``tp`` went back to ``offset`` without a rebalance (topic recreated, log truncated):
        what was open belongs to a log that is gone; track the partition afresh from here."""
        part = self._engine.partition(tp)
        before = None if part is None else part.offsets.next_offset
        log.warning(
            "%s[%d] went back from offset %s to %d without a rebalance (topic recreated or log "
            "truncated?); %d open records of the old log are given up, the new ones processed",
            tp[0],
            tp[1],
            before,
            offset,
            0 if part is None else part.open_count,
        )
        self._forget(consumer, [tp])
        self._engine.assign(tp, self._intake.policy_for(tp[0]))
        self._events.on_offset_reset(tp)

    def _forget(self, consumer: Any, tps: list[TP]) -> None:
        paused = []
        for tp in tps:
            part = self._engine.drop(tp)
            if part is None:
                continue
            if part.paused:
                paused.append(TopicPartition(*tp))
            for task_id in part.jobs:
                self._watcher.unwatch(task_id)
        if paused:
            try:  # or the pause outlives the assignment and stalls a later one
                consumer.resume(paused)
            except KafkaException as exc:
                log.debug("resuming revoked partitions failed: %s", exc)
        self._dlq.forget(set(tps))


def names(tps: Iterable[TP]) -> str:
    return ", ".join(f"{t}[{p}]" for t, p in tps) or "nothing"
