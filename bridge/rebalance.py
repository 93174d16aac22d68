"""The consumer's rebalance callbacks: what an assignment, a revoke or a loss does to the work.

librdkafka calls them inside ``consume()``/``poll()``, on the loop's thread. On revoke the
partitions' unsent records are dropped, the tasks a worker is running get up to
``revoke_grace`` to finish, what finished is committed synchronously (the group waits for it),
and the partitions are forgotten whole; on loss they are forgotten without a commit (another
member may own them).

A revoke does not wait for tasks still queued in Celery. The group cannot finish a
rebalance before every member returned from its revoke callback: each second spent here is a
second the moving partitions have no owner, and (classic protocol) a second every member's
JoinGroup, and with it their commits and a leaving member's LeaveGroup, waits at the
coordinator. A queued task runs anyway; the next owner of its partition finds its dispatch
marker and watches it instead of sending it again (:mod:`bridge.sender`), and a task that
finished meanwhile is concluded from its stored result. Without dispatch markers the next owner
would send every unfinished record again, so then the revoke waits for all tasks in flight.
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
from bridge.result_source import ResultSource

log = logging.getLogger(__name__)


class RebalanceCallbacks:
    def __init__(
        self,
        engine: WorkEngine[Work],
        intake: Intake,
        commits: Committer,
        dead_letters: DeadLetterWriter,
        watcher: ResultSource,
        observers: Observers,
        clock: Callable[[], float],
        revoke_grace: float,
        stopping: Callable[[], bool],
        wait_turn: Callable[[], None],
        markers: bool = True,
        hurry: Callable[[], bool] = lambda: False,
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
        #: dispatch markers are written: the next owner adopts the tasks still queued
        self._markers = markers
        #: a second stop signal: no more waiting for tasks, not even without markers
        self._hurry = hurry

    def on_assign(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        tps = [(p.topic, p.partition) for p in partitions]
        try:
            consumer.incremental_assign(partitions)
        except KafkaException:  # an eager assignor (range, roundrobin): the whole assignment
            consumer.assign(partitions)
        if partitions and self._stopping():
            # assigned while shutting down: nothing will be consumed; close() hands them on
            consumer.pause(partitions)
        elif partitions:
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
        began = self._clock()
        awaited = self._wait_for_running(tps)
        # the group waits for this commit; at shutdown it was made already, asynchronously
        # (without markers a revoke inside the shutdown's wait just waited: commit that)
        self._commits.commit(sync=not self._stopping() or not self._markers, tps=tps)
        handed_on = self._engine.in_flight_of(tps)
        self._forget(consumer, tps)
        log.info(
            "revoked %s (waited %.1fs for %d running tasks; %d tasks in flight handed on)",
            names(tps),
            self._clock() - began,
            awaited,
            handed_on,
        )
        self._events.on_rebalance(Rebalance.REVOKE, tps)

    def _wait_for_running(self, tps: list[TP]) -> int:
        """Up to ``revoke_grace``, until the tasks of ``tps`` a worker started or took by now
        finished (with markers; else every task in flight) and no dead letter of ``tps`` that
        may still land is pending (another partition's, or one its topic refuses, is not waited
        for); with markers not at all once the bridge stops (shutdown waited already). Without
        markers a revoke inside the shutdown's wait (a member joined meanwhile) waits as any
        other: the new owner would send every task in flight again. How many it waited for."""
        adopted = self._markers  # the next owner adopts what is left: stopping ends the wait
        if self._stopping() and adopted:
            return 0
        awaited = running_tasks(self._engine, tps) if self._markers else None
        deadline = self._clock() + self._revoke_grace
        while self._clock() < deadline and not (self._stopping() and adopted) and not self._hurry():
            left = (
                self._engine.in_flight_of(tps)
                if awaited is None
                else still_in_flight(self._engine, awaited)
            )
            if not left and not self._dlq.pending_for(tps):
                break
            self._wait_turn()
        return self._engine.in_flight_of(tps) if awaited is None else len(awaited)

    def on_lost(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        tps = sorted({(p.topic, p.partition) for p in partitions})
        self._forget(consumer, tps)
        log.warning("lost %s (no commit; the new owner redelivers)", names(tps))
        self._events.on_rebalance(Rebalance.LOST, tps)

    def rewound(self, tp: TP, offset: int) -> None:
        """``tp`` delivered ``offset`` again, behind what it delivered before, without a
        rebalance. librdkafka does this after a broker restart (the restored high watermark
        can lag, the fetch position is reset): the records are the same, so they are ignored.
        A recreated or truncated topic looks the same from here, so it is said once per
        assignment, counted (``ckb_offset_resets_total``), and left to the operator."""
        part = self._engine.partition(tp)
        if part is None or part.rewind_reported:
            return
        part.rewind_reported = True
        log.warning(
            "%s[%d] delivered offset %d again after %s without a rebalance: ignored as a "
            "redelivery. If the topic was recreated or truncated, its new records at these "
            "offsets are not processed: restart the bridge with a new dedupe_generation after "
            "resetting the group's offsets",
            tp[0],
            tp[1],
            offset,
            part.offsets.next_offset,
        )
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


def running_tasks(engine: WorkEngine[Any], tps: Iterable[TP]) -> set[str]:
    """Task ids of ``tps`` in flight that a worker started (a STARTED or RETRY state was seen)
    or took (its queue's workers finished a task sent after it, or the broker's queue holds
    fewer messages than were sent after it): the ones worth waiting for on a revoke or a
    shutdown. The others still wait in the Celery queue."""
    queues = engine.queues()
    found: set[str] = set()
    for tp in tps:
        part = engine.partition(tp)
        if part is None or part.policy is None:
            continue
        progress = queues.get(part.policy.queue)
        for task_id, job in part.jobs.items():
            if job.started or (progress is not None and progress.taken_at(job.seq) is not None):
                found.add(task_id)
    return found


def still_in_flight(engine: WorkEngine[Any], task_ids: Iterable[str]) -> int:
    """How many of ``task_ids`` have no final state yet (and belong to an owned partition)."""
    return sum(engine.job(task_id) is not None for task_id in task_ids)


def names(tps: Iterable[TP]) -> str:
    return ", ".join(f"{t}[{p}]" for t, p in tps) or "nothing"
