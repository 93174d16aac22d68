"""Consumer lag from the broker's end offsets, read on a thread with its own Kafka client.

The consumer loop owns the group's ``Consumer`` and nothing else may touch it, so the monitor
opens a second, never-subscribed ``Consumer`` (same connection and security settings, so it
can read the group's committed offsets; it never joins the group). The monitor is an
observer of the loop: the partition snapshots the loop hands its observers about once a
second say which partitions the bridge holds and what it last committed for each. Every
``interval`` seconds the monitor asks Kafka for their end offsets and works out each lag with
:func:`partition_lag`: from the offset the bridge last committed or, for a partition it has
not committed yet, the group's committed offset in Kafka, or the partition's first offset
when the group has none. The lags go to ``ckb_consumer_lag_records`` (``on_lag``, when
metrics are enabled) and, with the latest snapshot, make up ``/status`` (:meth:`status`).

Each successful round also tells readiness that Kafka answers (:meth:`LagMonitor.reachable`);
with nothing assigned, a metadata request stands in. The loop never waits on any of this.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from confluent_kafka import Consumer, KafkaException, TopicPartition

from bridge.access_errors import KafkaClient
from bridge.access_problems import AccessProblems, KafkaAccess
from bridge.core.vocabulary import TP
from bridge.events import Observer, PartitionState
from bridge.io_retry import OutageLog
from bridge.kafka_clients import client_id, consumer_config, kafka_error_of
from bridge.settings import KafkaSettings

log = logging.getLogger(__name__)

ConsumerFactory = Callable[[], Any]
#: receives the lag of every partition of a round (``PrometheusObserver.set_lag``)
LagSink = Callable[[Mapping[TP, int]], None]


def partition_lag(end: int, committed: int | None, first: int) -> int:
    """The lag rule, for the lag gauge, ``/status`` and ``ckb status`` alike.

    Records from the committed offset to the end offset. With nothing committed the group
    starts at the partition's first offset, so an empty partition (``first == end``), or one
    whose records all expired, counts as caught up. Never negative.
    """
    start = first if committed is None else committed
    return max(end - start, 0)


def lag_consumer_config(kafka: KafkaSettings) -> dict[str, Any]:
    config = consumer_config(kafka)
    config["client.id"] = client_id("lag")
    return config


class LagMonitor(Observer):
    """Background thread: end offsets and lag of assigned partitions; Kafka reachability."""

    def __init__(
        self,
        consumer_factory: ConsumerFactory,
        on_lag: LagSink | None = None,
        interval: float = 5.0,
        timeout: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        access: KafkaAccess | None = None,
    ) -> None:
        self._factory = consumer_factory
        #: where a refused password, certificate or grant goes, with its fix
        self._access = access
        #: the topic of the request under way, for a refusal's message
        self._asking: str | None = None
        self._on_lag = on_lag
        self.interval = interval
        self._timeout = timeout
        self._clock = clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._outage = OutageLog(log, "Kafka (lag monitor)")
        #: when a round last succeeded (monotonic seconds), None before the first one
        self.last_success: float | None = None
        # the loop's latest snapshot (loop thread) and the last round's answers (own thread)
        self._lock = threading.Lock()
        self._snapshot: list[PartitionState] = []
        self._snapshot_at: float | None = None
        self._ends: dict[TP, int] = {}
        self._lags: dict[TP, int] = {}

    @classmethod
    def for_settings(
        cls,
        kafka: KafkaSettings,
        kafka_log: logging.Logger,
        on_lag: LagSink | None = None,
        problems: AccessProblems | None = None,
    ) -> LagMonitor:
        config: dict[str, Any] = {**lag_consumer_config(kafka), "logger": kafka_log}
        access = None
        if problems is not None:
            access = KafkaAccess(KafkaClient.of(config), problems, "kafka:lag", kafka.group_id)
            config["error_cb"] = access.on_error  # a refused login or certificate

        def factory() -> Any:
            return Consumer(config)

        return cls(factory, on_lag, access=access)

    def reachable(self, max_age: float | None = None) -> bool:
        """Whether a round succeeded within ``max_age`` seconds (default: three intervals)."""
        limit = max_age if max_age is not None else 3 * self.interval + self._timeout
        last = self.last_success
        return last is not None and self._clock() - last <= limit

    # -- the loop's snapshots (loop thread) -----------------------------------------------
    def on_snapshot(self, partitions: list[PartitionState]) -> None:
        now = self._clock()
        with self._lock:
            self._snapshot, self._snapshot_at = partitions, now

    # -- /status (HTTP threads) -------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """The loop's latest partition snapshot, with end offset and lag where known."""
        with self._lock:
            snapshot, taken_at = self._snapshot, self._snapshot_at
            ends, lags = self._ends, self._lags
        age = None if taken_at is None else round(self._clock() - taken_at, 3)
        return {
            "snapshot_age_seconds": age,
            "paused_partitions": sum(1 for state in snapshot if state.paused),
            "partitions": [_state_json(state, ends, lags) for state in snapshot],
        }

    # -- lifecycle ----------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="ckb-lag", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self._timeout + 1)

    def _run(self) -> None:
        consumer = self._factory()
        try:
            while True:
                self.check_once(consumer)
                consumer.poll(0)  # serves librdkafka's log lines to the logger (no records:
                # this consumer never subscribes)
                if self._stop.wait(self.interval):
                    return
        finally:
            consumer.close()

    # -- one round ------------------------------------------------------------------------
    def check_once(self, consumer: Any) -> None:
        """Read end offsets (or metadata when nothing is assigned); never raises for Kafka."""
        try:
            self._round(consumer)
        except KafkaException as exc:
            refused = self._access is not None and self._access.check(
                kafka_error_of(exc), self._asking, hold=3 * self.interval + self._timeout
            )
            if not refused:
                self._outage.failed(exc)
            return
        self.last_success = self._clock()
        self._outage.recovered()
        if self._access is not None:
            self._access.fine()

    def _round(self, consumer: Any) -> None:
        with self._lock:
            snapshot = self._snapshot
        if not snapshot:
            consumer.list_topics(timeout=self._timeout)
            return
        # committed offsets first, end offsets after: so end >= committed, lag never negative
        committed = {(state.topic, state.partition): state.committed for state in snapshot}
        unknown = [tp for tp, offset in committed.items() if offset is None]
        self._asking = None
        if unknown:
            committed.update(self._group_committed(consumer, unknown))
        ends: dict[TP, int] = {}
        lags: dict[TP, int] = {}
        for (topic, partition), offset in committed.items():
            self._asking = topic
            first, end = consumer.get_watermark_offsets(
                TopicPartition(topic, partition), timeout=self._timeout, cached=False
            )
            ends[(topic, partition)] = end
            lags[(topic, partition)] = partition_lag(end, offset, first)
        with self._lock:
            self._ends, self._lags = ends, lags
        if self._on_lag is not None:
            self._on_lag(lags)

    def _group_committed(self, consumer: Any, tps: list[TP]) -> dict[TP, int]:
        answer = consumer.committed([TopicPartition(t, p) for t, p in tps], timeout=self._timeout)
        return {(tp.topic, tp.partition): tp.offset for tp in answer if tp.offset >= 0}


def _state_json(state: PartitionState, ends: dict[TP, int], lags: dict[TP, int]) -> dict[str, Any]:
    tp = (state.topic, state.partition)
    age = None if state.oldest_open_age is None else round(state.oldest_open_age, 3)
    return {
        "topic": state.topic,
        "partition": state.partition,
        "open": state.open_records,
        "in_flight": state.in_flight,
        "committed": state.committed,
        "oldest_open_age_seconds": age,
        "paused": state.paused,
        "end": ends.get(tp),
        "lag": lags.get(tp),
    }
