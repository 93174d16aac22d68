"""The consumer loop: the one thread that owns the confluent-kafka ``Consumer``.

It is the I/O shell around the :class:`~bridge.core.engine.WorkEngine`: each turn it polls a
batch and hands the records to the engine, applies the outcomes the result watcher reported,
sends what the engine selects, re-sends or dead-letters what it declares lost, commits the
points it allows and pauses or resumes the partitions it names. It keeps polling while
partitions are paused, so heartbeats and rebalance callbacks keep running however long the
tasks take.
"""

from __future__ import annotations

import logging
import queue
import time
from collections.abc import Callable
from typing import Any

from confluent_kafka import TopicPartition

from bridge.access_errors import KafkaClient
from bridge.access_problems import AccessProblems
from bridge.batch_requests import batch_id_for
from bridge.bounded_close import close_within
from bridge.commits import CommitReports, Committer, FatalConsumerError
from bridge.consumer_errors import ConsumerErrors
from bridge.core.engine import WorkEngine
from bridge.core.jobs import Job
from bridge.core.policy import Limits
from bridge.core.vocabulary import TaskState
from bridge.dead_letters import DeadLetterWriter
from bridge.dispatcher import Dispatcher
from bridge.events import Observers, PartitionState
from bridge.intake import Intake, Rejected, Work, rejected
from bridge.kafka_clients import consumer_config
from bridge.lost_tasks import LostTasks
from bridge.outcomes import Outcomes
from bridge.rate_limit import TokenBuckets
from bridge.rebalance import RebalanceCallbacks, running_tasks, still_in_flight
from bridge.records import Record
from bridge.result_source import Ledger, ResultSource
from bridge.routing import Router
from bridge.sender import Sender
from bridge.settings import Settings
from bridge.snapshots import partition_states, queue_windows

__all__ = ["CommitReports", "ConsumerLoop", "FatalConsumerError"]

log = logging.getLogger(__name__)

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


class ConsumerLoop:
    """Owns the consumer; everything it calls runs on its thread."""

    def __init__(
        self,
        settings: Settings,
        consumer: Any,
        dispatcher: Dispatcher,
        watcher: ResultSource,
        ledger: Ledger,
        dead_letters: DeadLetterWriter,
        observers: Observers,
        clock: Callable[[], float] = time.monotonic,
        commit_reports: CommitReports | None = None,
        buckets: TokenBuckets | None = None,
        access: AccessProblems | None = None,
    ) -> None:
        self.settings = settings
        self._consumer = consumer
        client = KafkaClient.of(consumer_config(settings.kafka))
        problems = access if access is not None else AccessProblems(log)
        self.errors = ConsumerErrors(client, settings.kafka.group_id, problems)
        self._watcher = watcher
        self._dlq = dead_letters
        self._events = observers
        self._clock = clock
        self._router = Router(settings.routes)
        self._intake = Intake(settings, self._router)
        limits = settings.limits
        self.engine: WorkEngine[Work] = WorkEngine(
            Limits(
                limits.max_in_flight_total,
                limits.resume_ratio,
                max_queue_time=limits.max_queue_time,
                max_in_flight_bytes_total=limits.max_in_flight_bytes_total,
            ),
            batch_id=batch_id_for(settings),
        )
        reports = commit_reports or CommitReports()
        self._commits = Committer(consumer, self.engine, observers, reports, self._clock)
        self._outcomes = Outcomes(self.engine, dead_letters, watcher, observers, clock)
        self._sender = Sender(
            self.engine, dispatcher, watcher, ledger, self._outcomes, observers, clock, buckets
        )
        self.lost = LostTasks(self.engine, self._sender, self._outcomes, observers, clock)
        self._rebalance = RebalanceCallbacks(
            self.engine,
            self._intake,
            self._commits,
            dead_letters,
            watcher,
            observers,
            clock,
            revoke_grace=limits.revoke_grace,
            stopping=lambda: self.stopping,
            wait_turn=self._wait_for_outcomes,
            markers=settings.results.dispatch_markers,
            hurry=lambda: self.hurry,
        )
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
            on_assign=self._rebalance.on_assign,
            on_revoke=self._rebalance.on_revoke,
            on_lost=self._rebalance.on_lost,
        )

    def run(self) -> None:
        """Turn until :meth:`request_stop`, then drain, commit and close."""
        self.subscribe()
        while not self.stopping:
            self.run_once()
        self.shutdown()

    def request_stop(self) -> None:
        self.stopping = True

    def run_once(self, poll_timeout: float = 0.05) -> None:
        for message in self._fetch(poll_timeout):
            self._take(message)
        self._commits.apply_reports()
        self._dlq.poll()
        self._apply_events()
        self.lost.handle()
        if not self.stopping:
            self._sender.send_selected()
        self._commits.commit_if_due(self._clock(), self.settings.kafka.commit_interval)
        self._apply_flow()
        self.last_iteration = self._clock()
        if self.last_iteration >= self._next_snapshot:
            self._next_snapshot = self.last_iteration + SNAPSHOT_INTERVAL
            self._sender.observe_queues()
            self._events.on_snapshot(self.snapshot())
            self._events.on_windows(queue_windows(self.engine))
            self._events.on_dead_letter_state(self._dlq.state())

    def _fetch(self, timeout: float) -> list[Any]:
        """Wait for the first record only, then take what is already fetched (no 50 ms wait
        for a full batch under light traffic)."""
        first = self._consumer.poll(timeout)
        if first is None:
            return []
        rest = self.settings.kafka.poll_batch - 1
        return [first, *self._consumer.consume(rest, 0)] if rest > 0 else [first]

    def snapshot(self) -> list[PartitionState]:
        """Per-partition state for observers (metrics, status); call on the loop's thread."""
        return partition_states(self.engine, self._clock())

    def shutdown(self) -> None:
        """Stop fetching, wait up to ``shutdown_grace`` for the tasks a worker is running (the
        next owner adopts the queued ones through their dispatch markers), commit, close."""
        began = self._clock()
        log.info("shutting down: %d tasks in flight", self.engine.in_flight)
        owned = self.engine.partitions()
        if owned:
            self._consumer.pause([TopicPartition(t, p) for t, p in owned])
        self.engine.clear_waiting()  # never dispatched: their offsets stay uncommitted
        running = running_tasks(self.engine, owned)
        markers = self.settings.results.dispatch_markers
        grace_end = began + self.settings.limits.shutdown_grace
        while self._dlq.pending_for() or (
            still_in_flight(self.engine, running) if markers else self.engine.in_flight
        ):
            if self.hurry or self._clock() >= grace_end:
                break
            self._consumer.consume(self.settings.kafka.poll_batch, 0.05)  # keeps membership
            self._wait_for_outcomes()
        # delivery reports finish their records before the commit
        left = self._dlq.flush(DEAD_LETTER_FLUSH_WAIT)
        if left:
            log.warning("%d dead letters not acknowledged at shutdown; not committed", left)
        deadline = self._clock() + COMMIT_WAIT
        while self._clock() < deadline:  # never hang on Kafka
            if not self._commits.pending:  # again if refused: the group moved on meanwhile
                if not self.engine.committable():
                    break
                self._commits.commit(sync=False)
            self._consumer.consume(self.settings.kafka.poll_batch, 0.05)
            self._commits.apply_reports()
        # on_revoke runs with nothing to wait for, then the consumer leaves the group. close()
        # waits for the coordinator's answer, which (classic protocol) comes once a rebalance
        # under way is over; giving up leaves the group waiting a session timeout for this
        # member, so it also gets what is left of shutdown_grace
        handed_on, closing = self.engine.in_flight, self._clock()
        close_wait = CLOSE_WAIT + max(0.0, grace_end - closing)
        self.closed_cleanly = close_within(self._consumer.close, close_wait, "Kafka consumer")
        log.info(
            "stopped in %.1fs (close %.1fs); %d tasks in flight handed on to the next owners",
            self._clock() - began,
            self._clock() - closing,
            handed_on,
        )

    def _wait_for_outcomes(self) -> None:
        """One short turn of delivery reports and task outcomes (revoke, shutdown)."""
        self._dlq.poll()
        self._apply_events(timeout=0.05)
        self.last_iteration = self._clock()  # waiting on purpose is not hanging

    # == intake ==========================================================================
    def _take(self, message: Any) -> None:
        error = message.error()
        if error is not None:
            self.errors.seen(error, message.topic())
            return
        record = Record.from_message(message)
        self.errors.consumed(record.topic)
        if self.stopping:
            return
        epoch = self.engine.open(record.tp, record.offset, self._clock(), record.size)
        if epoch is None and self.engine.rewound(record.tp, record.offset):
            self._rebalance.rewound(record.tp, record.offset)
        if epoch is None:
            return
        self._events.on_consumed(record)
        if self.settings.logging.debug_payloads:  # opt-in only: payloads may be personal data
            log.debug("record %s value %r", record.coordinates(), (record.value or b"")[:2048])
        try:
            read = self._intake.read(record, epoch)
        except Exception as exc:  # a bug of ours for this one record: its dead letter says so
            log.exception("reading %s failed; dead-lettering it", record.coordinates())
            read = rejected(self._router.match(record.topic), exc)
        if isinstance(read, Job):
            self.engine.enqueue(read)
        elif isinstance(read, Rejected):
            self._outcomes.dead_letter(record, read.route, epoch, read.failure)
        else:
            self.engine.finish(record.tp, record.offset, epoch)

    # == outcomes ========================================================================
    def _apply_events(self, timeout: float = 0.0) -> None:
        completions = self._watcher.completions
        try:
            event = completions.get(timeout=timeout) if timeout else completions.get_nowait()
        except queue.Empty:
            return
        while True:
            state = TaskState.parse(event.state)
            if state is not None and state.final:
                job = self.engine.complete(event.task_id, self._clock())
                if job is not None:  # else: a partition we no longer own, or a duplicate
                    self._outcomes.conclude(job, event)
            else:
                self.engine.progress(event.task_id, self._clock(), state is TaskState.RETRY)
            try:
                event = completions.get_nowait()
            except queue.Empty:
                return

    # == flow control ====================================================================
    def _apply_flow(self) -> None:
        change = self.engine.flow()
        if change.pause:
            self._consumer.pause([TopicPartition(t, p) for t, p in change.pause])
        if change.resume:
            self._consumer.resume([TopicPartition(t, p) for t, p in change.resume])
        if change.pause or change.resume:
            log.debug("paused %d partitions, resumed %d", len(change.pause), len(change.resume))
            self._events.on_paused(self.engine.paused_count)
