"""Consumer lag from the broker's end offsets, read on a thread with its own Kafka client.

The consumer loop owns the group's ``Consumer`` and nothing else may touch it, so the monitor
opens a second, never-subscribed ``Consumer`` (same connection and security settings, so it
can read the group's committed offsets; it never joins the group). Every ``interval`` seconds
it asks for the end offset of each partition the bridge holds (learned from the metrics
observer, which follows the loop's rebalance events) and sets
``ckb_consumer_lag_records = end offset - committed offset``. The committed offset is the one
the bridge last committed; for a partition it has not committed yet, the group's committed
offset in Kafka, or the partition's first offset when the group has none.

Each successful round also tells readiness that Kafka answers (:meth:`LagMonitor.reachable`);
with nothing assigned, a metadata request stands in. The loop never waits on any of this.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from confluent_kafka import Consumer, KafkaException, TopicPartition

from bridge.core.vocabulary import TP
from bridge.io_retry import OutageLog
from bridge.kafka_clients import client_id, consumer_config
from bridge.metrics import PrometheusObserver
from bridge.settings import KafkaSettings

log = logging.getLogger(__name__)

ConsumerFactory = Callable[[], Any]


def lag_consumer_config(kafka: KafkaSettings) -> dict[str, Any]:
    config = consumer_config(kafka)
    config["client.id"] = client_id("lag")
    return config


class LagMonitor:
    """Background thread: end offsets and lag of assigned partitions; Kafka reachability."""

    def __init__(
        self,
        metrics: PrometheusObserver,
        consumer_factory: ConsumerFactory,
        interval: float = 5.0,
        timeout: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._metrics = metrics
        self._factory = consumer_factory
        self.interval = interval
        self._timeout = timeout
        self._clock = clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._outage = OutageLog(log, "Kafka (lag monitor)")
        #: when a round last succeeded (monotonic seconds), None before the first one
        self.last_success: float | None = None

    @classmethod
    def for_settings(
        cls, kafka: KafkaSettings, metrics: PrometheusObserver, kafka_log: logging.Logger
    ) -> LagMonitor:
        return cls(metrics, lambda: Consumer({**lag_consumer_config(kafka), "logger": kafka_log}))

    def reachable(self, max_age: float | None = None) -> bool:
        """Whether a round succeeded within ``max_age`` seconds (default: three intervals)."""
        limit = max_age if max_age is not None else 3 * self.interval + self._timeout
        last = self.last_success
        return last is not None and self._clock() - last <= limit

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
            self._outage.failed(exc)
            return
        self.last_success = self._clock()
        self._outage.recovered()

    def _round(self, consumer: Any) -> None:
        tps = self._metrics.assigned()
        if not tps:
            consumer.list_topics(timeout=self._timeout)
            return
        # committed offsets first, end offsets after: so end >= committed, lag never negative
        committed = self._metrics.committed_offsets()
        unknown = [tp for tp in tps if tp not in committed]
        if unknown:
            committed.update(self._group_committed(consumer, unknown))
        ends: dict[TP, int] = {}
        for topic, partition in tps:
            low, high = consumer.get_watermark_offsets(
                TopicPartition(topic, partition), timeout=self._timeout, cached=False
            )
            ends[(topic, partition)] = high
            committed.setdefault((topic, partition), low)  # nothing committed: from the start
        self._metrics.set_end_offsets(ends, committed)

    def _group_committed(self, consumer: Any, tps: list[TP]) -> dict[TP, int]:
        answer = consumer.committed([TopicPartition(t, p) for t, p in tps], timeout=self._timeout)
        return {(tp.topic, tp.partition): tp.offset for tp in answer if tp.offset >= 0}
