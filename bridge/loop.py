"""The consumer loop: the one thread that owns the confluent-kafka ``Consumer``.

Each turn it polls a batch, routes and decodes records, dispatches what the in-flight caps
allow, applies the outcomes the result watcher reported, dead-letters what failed, commits
the commit points the :class:`~bridge.offsets.OffsetTracker` allows, and pauses or resumes
partitions. It keeps polling while partitions are paused, so heartbeats and rebalance
callbacks keep running however long the tasks take.
"""

from __future__ import annotations

import logging
import queue
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaError, KafkaException, TopicPartition

from bridge.bounded_close import close_within
from bridge.dead_letters import DeadLetterWriter, Failure
from bridge.dispatch_ledger import DispatchLedger
from bridge.dispatcher import Dispatcher, PublishError, TaskRequest
from bridge.events import Observers, PartitionState
from bridge.inflight import InFlightTable, Job
from bridge.offsets import OffsetTracker
from bridge.ordering import OrderingGate
from bridge.payloads import DecodeError, build_call, kafka_headers
from bridge.records import Record
from bridge.results import ResultWatcher, TaskEvent
from bridge.routing import Router
from bridge.settings import Route, Settings
from bridge.task_ids import task_id_for
from bridge.tracing import trace_headers

log = logging.getLogger(__name__)

TP = tuple[str, int]

#: task states and the DLQ reason / ``outcome`` label each final one maps to
#: seconds between partition snapshots handed to observers
SNAPSHOT_INTERVAL = 1.0
#: most seconds shutdown waits for its last commit's answer (Kafka may be away)
COMMIT_WAIT = 10.0
#: most seconds shutdown waits for ``Consumer.close()`` (leaving the group) to return
CLOSE_WAIT = 10.0
#: most seconds shutdown waits for the dead-letter producer's last delivery reports
DEAD_LETTER_FLUSH_WAIT = 5.0
#: how long shutdown can take beyond ``limits.shutdown_grace`` when Kafka does not answer;
#: a supervisor's grace period before SIGKILL should exceed the sum
SHUTDOWN_OVERHEAD = DEAD_LETTER_FLUSH_WAIT + COMMIT_WAIT + CLOSE_WAIT

FAILED_STATES = {"FAILURE": ("task_failed", "failure"), "REVOKED": ("task_revoked", "revoked")}


class FatalConsumerError(Exception):
    """Kafka said something the bridge cannot recover from (e.g. fenced static member)."""


@dataclass
class Waiting:
    """A consumed record waiting for room under the in-flight caps."""

    record: Record
    route: Route
    epoch: int
    request: TaskRequest


class CommitReports:
    """librdkafka's commit reports (the consumer's ``on_commit``), kept for the loop to apply.

    librdkafka calls it inside ``consume()``, on the loop's thread; the loop drains it each turn.
    """

    def __init__(self) -> None:
        self.reports: deque[tuple[KafkaError | None, list[TopicPartition]]] = deque()

    def __call__(self, error: KafkaError | None, partitions: list[TopicPartition]) -> None:
        self.reports.append((error, partitions))


class ConsumerLoop:
    """Owns the consumer; everything it calls runs on its thread."""

    def __init__(
        self,
        settings: Settings,
        consumer: Any,
        dispatcher: Dispatcher,
        watcher: ResultWatcher,
        ledger: DispatchLedger,
        dead_letters: DeadLetterWriter,
        observers: Observers,
        clock: Callable[[], float] = time.monotonic,
        commit_reports: CommitReports | None = None,
    ) -> None:
        self.settings = settings
        self._consumer = consumer
        self._dispatcher = dispatcher
        self._watcher = watcher
        self._ledger = ledger
        self._dlq = dead_letters
        self._events = observers
        self._clock = clock
        self._router = Router(settings.routes)
        self.tracker = OffsetTracker()
        self.jobs = InFlightTable()
        self._waiting: dict[TP, deque[Waiting]] = {}
        #: partitions whose waiting records may be dispatchable (new records or freed room)
        self._dirty: set[TP] = set()
        self._gate = OrderingGate()
        self._paused: set[TP] = set()
        self._epochs = 0
        self._last_commit = 0.0
        self._commits_pending = 0
        self._commit_reports = commit_reports or CommitReports()
        self._publish_backoff_until = 0.0
        #: records whose task an earlier dispatch had sent, watched instead of sent again
        self.adopted = 0
        self.stopping = False
        #: set by a second stop signal: do not wait for running tasks any longer
        self.hurry = False
        self.last_iteration = clock()
        self._next_snapshot = 0.0
        #: False when shutdown gave up waiting for ``Consumer.close()``
        self.closed_cleanly = True

    # == lifecycle ======================================================================
    def subscribe(self) -> None:
        self._consumer.subscribe(
            self._router.subscription(),
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )

    def run(self) -> None:
        """Turn until :meth:`request_stop`, then drain, commit and close."""
        self.subscribe()
        while not self.stopping:
            self.run_once()
        self.shutdown()

    @property
    def paused_count(self) -> int:
        return len(self._paused)

    def request_stop(self) -> None:
        self.stopping = True

    def run_once(self, poll_timeout: float = 0.05) -> None:
        for message in self._fetch(poll_timeout):
            self._take(message)
        self._turn()

    def _fetch(self, timeout: float) -> list[Any]:
        """Wait for the first record only, then take what is already fetched (no 50 ms wait
        for a full batch under light traffic)."""
        first = self._consumer.poll(timeout)
        if first is None:
            return []
        rest = self.settings.kafka.poll_batch - 1
        return [first, *self._consumer.consume(rest, 0)] if rest > 0 else [first]

    def _turn(self) -> None:
        self._apply_commit_reports()
        self._dlq.poll()
        self._apply_events()
        self._expire()
        self._dispatch_waiting()
        self._commit_if_due()
        self._update_pauses()
        self.last_iteration = self._clock()
        if self.last_iteration >= self._next_snapshot:
            self._next_snapshot = self.last_iteration + SNAPSHOT_INTERVAL
            self._events.on_snapshot(self.snapshot())
            # safety net: every waiting record is looked at again at least once a second
            self._dirty.update(tp for tp, waiting in self._waiting.items() if waiting)

    def snapshot(self) -> list[PartitionState]:
        """Per-partition state for observers (metrics, status); call on the loop's thread."""
        now = self._clock()
        states = []
        for tp in self.tracker.partitions():
            since = self.tracker.oldest_open_since(tp)
            states.append(
                PartitionState(
                    topic=tp[0],
                    partition=tp[1],
                    open_records=self.tracker.open_count(tp),
                    in_flight=self.jobs.count(tp),
                    committed=self.tracker.committed(tp),
                    oldest_open_age=None if since is None else now - since,
                    paused=tp in self._paused,
                )
            )
        return states

    def shutdown(self) -> None:
        """Stop fetching, wait up to ``shutdown_grace`` for in-flight tasks, commit, close."""
        log.info("shutting down: %d tasks in flight", len(self.jobs))
        assigned = [TopicPartition(t, p) for t, p in self.tracker.partitions()]
        if assigned:
            self._consumer.pause(assigned)
        for waiting in self._waiting.values():
            waiting.clear()  # never dispatched: their offsets stay uncommitted
        deadline = self._clock() + self.settings.limits.shutdown_grace
        while (len(self.jobs) or self._dlq.pending) and self._clock() < deadline and not self.hurry:
            self._consumer.consume(self.settings.kafka.poll_batch, 0.05)  # keeps membership
            self._dlq.poll()
            self._apply_events(timeout=0.05)
            self.last_iteration = self._clock()  # waiting on purpose is not hanging
        # delivery reports finish their records before the commit
        left = self._dlq.flush(DEAD_LETTER_FLUSH_WAIT)
        if left:
            log.warning("%d dead letters not acknowledged at shutdown; not committed", left)
        self._commit(sync=False)
        deadline = self._clock() + COMMIT_WAIT
        while self._commits_pending and self._clock() < deadline:  # never hang on Kafka
            self._consumer.consume(self.settings.kafka.poll_batch, 0.05)
            self._apply_commit_reports()
        # on_revoke runs with nothing to wait for, then the consumer leaves the group; close()
        # has no timeout of its own and waits as long as the coordinator does not answer
        self.closed_cleanly = close_within(self._consumer.close, CLOSE_WAIT, "Kafka consumer")
        log.info(
            "stopped; %d tasks were still running (their records will be redelivered)",
            len(self.jobs),
        )

    # == intake ==========================================================================
    def _take(self, message: Any) -> None:
        error = message.error()
        if error is not None:
            self._on_consume_error(error)
            return
        record = Record.from_message(message)
        if self.stopping or not self.tracker.add(record.tp, record.offset, self._clock()):
            return
        self._events.on_consumed(record)
        if self.settings.logging.debug_payloads:  # opt-in only: payloads may be personal data
            log.debug("record %s value %r", record.coordinates(), (record.value or b"")[:2048])
        epoch = self.tracker.epoch(record.tp) or 0
        route = self._router.match(record.topic)
        if route is None:
            self._unrouted(record, epoch)
            return
        try:
            args, kwargs = build_call(route, record)
        except DecodeError as exc:
            # per record: DEBUG only; the DLQ record and the counters carry it
            log.debug("cannot decode %s: %s", record.coordinates(), exc)
            self._dead_letter(
                record,
                route,
                epoch,
                Failure(
                    reason=exc.reason,
                    task_name=route.task,
                    error_class=type(exc).__name__,
                    error_message=str(exc),
                ),
            )
            return
        task_id = task_id_for(
            self.settings.kafka.group_id,
            record.topic,
            record.partition,
            record.offset,
            record.timestamp_ms,
            self.settings.dedupe_generation,
        )
        request = TaskRequest(
            task_id=task_id,
            name=route.task,
            args=args,
            kwargs=kwargs,
            queue=route.queue,
            headers={**kafka_headers(record), **trace_headers(record.headers, task_id)},
            label=f"<kafka {record.coordinates()}>",
        )
        self._waiting.setdefault(record.tp, deque()).append(Waiting(record, route, epoch, request))
        self._dirty.add(record.tp)

    def _on_consume_error(self, error: KafkaError) -> None:
        if error.code() == KafkaError._PARTITION_EOF:
            return
        if error.fatal():
            raise FatalConsumerError(_fatal_message(error))
        log.warning("Kafka consumer error (retrying): %s", error.str())

    def _unrouted(self, record: Record, epoch: int) -> None:
        if self.settings.unrouted == "skip" or record.topic.endswith(".dlq"):
            self._finish_offset(record, epoch)
            return
        self._dead_letter(
            record,
            None,
            epoch,
            Failure(
                reason="no_route",
                error_class="NoRoute",
                error_message=f"no route matches topic {record.topic!r}; add one under routes:",
            ),
        )

    # == dispatch ========================================================================
    def _room(self, tp: TP, route: Route, selected: int) -> int:
        """How many more of ``tp``'s records may start, ``selected`` others already chosen."""
        per_partition = route.max_in_flight - self.jobs.count(tp)
        total = self.settings.limits.max_in_flight_total - len(self.jobs) - selected
        return min(per_partition, total)

    def _dispatch_waiting(self) -> None:
        if self.stopping or self._clock() < self._publish_backoff_until or not self._dirty:
            return
        batch: list[Waiting] = []
        dirty, self._dirty = self._dirty, set()
        for tp in dirty:
            waiting = self._waiting.get(tp)
            if not waiting:
                continue
            route = waiting[0].route
            room = self._room(tp, route, len(batch))
            batch.extend(self._gate.select(route.ordering, tp, waiting, room, _key_of))
        if batch:
            self._send(batch)

    def _send(self, batch: list[Waiting]) -> None:
        known = self._ledger.lookup([w.request.task_id for w in batch])
        fresh = []
        for waiting in batch:
            task_id = waiting.request.task_id
            if task_id in known.finals:  # done before (a restart, an earlier owner): no rerun
                self._conclude(self._job_of(waiting), known.finals[task_id])
                self._dirty.add(waiting.record.tp)  # it took no room: look again next turn
            elif task_id in known.in_progress:  # sent by an earlier owner: watch, not resend
                self._adopt(waiting)
            else:
                fresh.append(waiting)
        if not fresh:
            return
        self._watcher.watch(w.request.task_id for w in fresh)
        try:
            self._dispatcher.publish([w.request for w in fresh])
        except PublishError as exc:
            log.warning("%s; will retry", exc)
            self._publish_backoff_until = self._clock() + 1.0
            self._put_back(fresh)
            return
        self._ledger.mark((w.request.task_id for w in fresh), _marker_ttl(fresh[0].route))
        now = self._clock()
        for waiting in fresh:
            self.jobs.add(self._job_of(waiting), now)
            self._gate.started(waiting.record.tp, waiting.record.key)
            self._events.on_dispatched(waiting.record, waiting.route.task, False)

    def _adopt(self, waiting: Waiting) -> None:
        """Wait for a task another dispatch already sent, as if this bridge had sent it."""
        self._watcher.watch([waiting.request.task_id])
        self.jobs.add(self._job_of(waiting), self._clock())
        self._gate.started(waiting.record.tp, waiting.record.key)
        self.adopted += 1

    def _put_back(self, unsent: list[Waiting]) -> None:
        """Return unsent records to their queues, in offset order, to be tried again."""
        for tp in {w.record.tp for w in unsent}:
            queue_ = self._waiting.get(tp)
            if queue_ is None:
                continue  # revoked meanwhile
            merged = sorted(
                [*queue_, *(w for w in unsent if w.record.tp == tp)], key=lambda w: w.record.offset
            )
            queue_.clear()
            queue_.extend(merged)
            self._dirty.add(tp)

    @staticmethod
    def _job_of(waiting: Waiting) -> Job:
        return Job(waiting.record, waiting.route, waiting.epoch, waiting.request)

    # == outcomes ========================================================================
    def _apply_events(self, timeout: float = 0.0) -> None:
        completions = self._watcher.completions
        try:
            event = completions.get(timeout=timeout) if timeout else completions.get_nowait()
        except queue.Empty:
            return
        while True:
            if event.final:
                self._on_final(event)
            else:
                self._on_progress(event)
            try:
                event = completions.get_nowait()
            except queue.Empty:
                return

    def _on_progress(self, event: TaskEvent) -> None:
        job = self.jobs.get(event.task_id)
        if job is None:
            return
        if event.state == "RETRY":
            job.retries_seen += 1
        self.jobs.extend(job, self._clock())

    def _on_final(self, event: TaskEvent) -> None:
        job = self._release(event.task_id)
        if job is not None:  # else: a partition we no longer own, or a duplicate report
            self._conclude(job, event)

    def _release(self, task_id: str) -> Job | None:
        """Take a job out of flight; its partition (or all, if the total cap bound) may send."""
        was_full = len(self.jobs) >= self.settings.limits.max_in_flight_total
        job = self.jobs.pop(task_id)
        if job is None:
            return None
        self._gate.finished(job.record.tp, job.record.key)
        self._dirty.add(job.record.tp)
        if was_full:
            self._dirty.update(tp for tp, waiting in self._waiting.items() if waiting)
        return job

    def _conclude(self, job: Job, event: TaskEvent) -> None:
        """The one place a final task state becomes a finished offset or a dead letter."""
        duration = self._clock() - job.first_dispatch if job.dispatches else None
        if event.state == "SUCCESS":
            self._events.on_task_finished(job.record, job.route.task, "success", duration)
            self._finish_offset(job.record, job.epoch)
            return
        reason, outcome = FAILED_STATES[event.state]
        self._events.on_task_finished(job.record, job.route.task, outcome, duration)
        self._dead_letter(
            job.record,
            job.route,
            job.epoch,
            Failure(
                reason=reason,
                task_name=job.route.task,
                task_id=job.request.task_id,
                attempts=job.attempts,
                error_class=event.error_class or "",
                error_message=event.error_message or "",
                traceback=event.traceback or "",
            ),
        )

    def _expire(self) -> None:
        for job in self.jobs.expired(self._clock()):
            if job.dispatches <= job.route.max_redispatch:
                log.warning(
                    "task %s for %s has no final state after %.0fs; sending it again",
                    job.request.task_id,
                    job.record.coordinates(),
                    job.route.task_timeout,
                )
                self._redispatch(job)
                continue
            self._release(job.request.task_id)
            self._watcher.unwatch(job.request.task_id)
            self._events.on_task_finished(job.record, job.route.task, "timeout", None)
            self._dead_letter(
                job.record,
                job.route,
                job.epoch,
                Failure(
                    reason="task_timeout",
                    task_name=job.route.task,
                    task_id=job.request.task_id,
                    attempts=job.attempts,
                    error_class="TaskTimeout",
                    error_message=f"no final state within {job.route.task_timeout:.0f}s "
                    f"after {job.dispatches} dispatches",
                ),
            )

    def _redispatch(self, job: Job) -> None:
        # Celery never re-stores a SUCCESS, so read the key before waiting on the same id again
        known = self._ledger.lookup([job.request.task_id])
        if job.request.task_id in known.finals:
            self._on_final(known.finals[job.request.task_id])
            return
        try:
            self._dispatcher.publish([job.request])
        except PublishError as exc:
            log.warning("%s; will retry", exc)
            self.jobs.extend(job, self._clock())
            return
        self._ledger.mark([job.request.task_id], _marker_ttl(job.route))
        self.jobs.add(job, self._clock())
        self._events.on_dispatched(job.record, job.route.task, True)

    def _dead_letter(
        self, record: Record, route: Route | None, epoch: int, failure: Failure
    ) -> None:
        topic = route.dlq_for(record.topic) if route else f"{record.topic}.dlq"

        def written() -> None:
            self._events.on_dead_lettered(record, failure.reason)
            self._finish_offset(record, epoch)

        self._dlq.send(record, topic, failure, written, lambda: self.tracker.owns(record.tp, epoch))

    def _finish_offset(self, record: Record, epoch: int) -> None:
        self.tracker.finish(record.tp, record.offset, epoch)

    # == commits =========================================================================
    def _commit_if_due(self) -> None:
        now = self._clock()
        if now - self._last_commit >= self.settings.kafka.commit_interval:
            self._last_commit = now
            self._commit(sync=False)

    def _commit(self, sync: bool, tps: list[TP] | None = None) -> None:
        """Commit the points that moved; asynchronous unless the group is about to move.

        An asynchronous commit never blocks the loop, even with Kafka away; its outcome
        arrives in :meth:`on_commit`, which un-marks a failed point so it is sent again.
        """
        points = self.tracker.committable(tps)
        if not points:
            return
        offsets = [TopicPartition(t, p, offset) for (t, p), offset in points.items()]
        try:
            self._consumer.commit(offsets=offsets, asynchronous=not sync)
        except KafkaException as exc:
            self._on_commit_error(exc)
            return
        for tp, offset in points.items():
            self.tracker.mark_committed(tp, offset)
        if sync:  # librdkafka reports only asynchronous commits through on_commit
            for tp, offset in points.items():
                self._events.on_committed(tp, offset)
        else:
            self._commits_pending += 1

    def _apply_commit_reports(self) -> None:
        reports = self._commit_reports.reports
        while reports:
            error, partitions = reports.popleft()
            self._on_commit_report(error, partitions)

    def _on_commit_report(self, error: KafkaError | None, partitions: list[TopicPartition]) -> None:
        self._commits_pending = max(0, self._commits_pending - 1)
        for part in partitions:
            tp = (part.topic, part.partition)
            failed = error or part.error
            if failed is None:
                self._events.on_committed(tp, part.offset)
            else:
                self.tracker.unmark_committed(tp, part.offset)
                self._commit_failed(failed)

    def _commit_failed(self, error: KafkaError) -> None:
        if error.code() == KafkaError._NO_OFFSET:
            return
        if error.fatal():
            raise FatalConsumerError(f"commit failed fatally: {error.str()}")
        # a moving group (rebalance in progress, unknown member, …) or Kafka away: retried
        log.info("commit not accepted (%s); retrying", error.str())

    def _on_commit_error(self, exc: KafkaException) -> None:
        error = exc.args[0] if exc.args else None
        if isinstance(error, KafkaError):
            self._commit_failed(error)
        else:
            log.info("commit not accepted now (%s); retrying next turn", exc)

    # == flow control ====================================================================
    def _update_pauses(self) -> None:
        limits = self.settings.limits
        total_full = self.tracker.open_total >= limits.max_in_flight_total
        to_pause, to_resume = [], []
        for tp in self.tracker.partitions():
            route = self._router.match(tp[0])
            cap = route.max_in_flight if route else limits.max_in_flight_total
            open_records = self.tracker.open_count(tp)
            if tp not in self._paused and (total_full or open_records >= cap):
                to_pause.append(tp)
            elif (
                tp in self._paused
                and not total_full
                and open_records <= cap * (limits.resume_ratio)
                and self.tracker.open_total <= limits.max_in_flight_total * limits.resume_ratio
            ):
                to_resume.append(tp)
        if to_pause:
            self._consumer.pause([TopicPartition(t, p) for t, p in to_pause])
            self._paused.update(to_pause)
        if to_resume:
            self._consumer.resume([TopicPartition(t, p) for t, p in to_resume])
            self._paused.difference_update(to_resume)
        if to_pause or to_resume:
            log.debug("paused %d partitions, resumed %d", len(to_pause), len(to_resume))
            self._events.on_paused(len(self._paused))

    # == rebalance callbacks (run inside consume(), on this thread) =====================
    def _on_assign(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        tps = [(p.topic, p.partition) for p in partitions]
        try:
            consumer.incremental_assign(partitions)
        except KafkaException:  # an eager assignor (range, roundrobin): the whole assignment
            consumer.assign(partitions)
        if partitions:
            # librdkafka keeps a partition's pause flag across revoke and re-assignment
            consumer.resume(partitions)
        for tp in tps:
            self._epochs += 1
            self.tracker.assign(tp, self._epochs)
            self._waiting[tp] = deque()
            self._paused.discard(tp)
        log.info("assigned %s", _names(tps))
        self._events.on_rebalance("assign", tps)

    def _on_revoke(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        tps = {(p.topic, p.partition) for p in partitions}
        for tp in tps:
            self._waiting.pop(tp, None)
        grace = 0.0 if self.stopping else self.settings.limits.revoke_grace
        deadline = self._clock() + grace
        while self._open_jobs(tps) and self._clock() < deadline:
            self._dlq.poll()
            self._apply_events(timeout=0.05)
            self.last_iteration = self._clock()
        # the group waits for this commit; at shutdown it was made already, asynchronously
        self._commit(sync=not self.stopping, tps=list(tps))
        self._forget(tps)
        log.info("revoked %s", _names(sorted(tps)))
        self._events.on_rebalance("revoke", sorted(tps))

    def _on_lost(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        tps = {(p.topic, p.partition) for p in partitions}
        self._forget(tps)
        log.warning("lost %s (no commit; the new owner redelivers)", _names(sorted(tps)))
        self._events.on_rebalance("lost", sorted(tps))

    def _open_jobs(self, tps: set[TP]) -> int:
        return sum(self.jobs.count(tp) for tp in tps) + self._dlq.pending

    def _forget(self, tps: set[TP]) -> None:
        paused = [TopicPartition(t, p) for t, p in tps & self._paused]
        if paused:
            try:  # or the pause outlives the assignment and stalls a later one
                self._consumer.resume(paused)
            except KafkaException as exc:
                log.debug("resuming revoked partitions failed: %s", exc)
        for job in self.jobs.drop_partitions(tps):
            self._watcher.unwatch(job.request.task_id)
        for tp in tps:
            self.tracker.revoke(tp)
            self._waiting.pop(tp, None)
            self._paused.discard(tp)
            self._gate.forget(tp)
            self._dirty.discard(tp)
        self._dlq.forget(tps)


def _fatal_message(error: KafkaError) -> str:
    if error.code() in (KafkaError._FENCED, KafkaError.FENCED_INSTANCE_ID):
        return (
            f"fenced by the group ({error.str()}): another instance uses the same "
            "group.instance.id; give each instance its own kafka.consumer.group.instance.id"
        )
    return f"Kafka consumer failed: {error.str()}"


def _marker_ttl(route: Route) -> float:
    """How long a dispatch marker lives: past every re-send the route allows."""
    return route.task_timeout * (route.max_redispatch + 2)


def _key_of(waiting: Waiting) -> bytes | None:
    return waiting.record.key


def _names(tps: list[TP]) -> str:
    return ", ".join(f"{t}[{p}]" for t, p in tps) or "nothing"
