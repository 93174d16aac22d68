"""Prometheus metrics (the ``ckb_*`` contract in DESIGN.md) as an observer of the loop's events.

The values live in plain dicts behind one lock, and a collector on the observer's own
``CollectorRegistry`` turns a copy of them into metric families when scraped. Each event is
applied under that lock as a whole, so a scrape never sees half of one: per topic, at every
scrape,

    sum(ckb_tasks_dispatched_total) == sum(ckb_tasks_finished_total) + sum(ckb_inflight_records)
                                       + tasks given up at a revoke/lost (see below)

Accounting rules:

- ``ckb_tasks_dispatched_total`` counts records handed to Celery, once per record. A re-dispatch
  after ``task_timeout`` reuses the task id and is *not* counted again (it is logged).
- A record is in flight (``ckb_inflight_records``) from its first dispatch until the bridge
  learns its final state, or until its partition is revoked or lost: then the new owner
  redelivers it, the partition's gauges are removed and those tasks are never counted as
  finished.
- ``ckb_tasks_finished_total`` counts final outcomes of tasks *this bridge dispatched*. A
  redelivered record whose task already had a result, or that the loop adopts because an
  earlier owner sent it (``ConsumerLoop._adopt``, which emits no event), is neither dispatched
  nor finished here; its dead letter, if any, still counts in ``ckb_dlq_records_total``.
- ``ckb_task_duration_seconds``: first dispatch → final state; a ``timeout`` has no final
  state and is not observed. ``ckb_record_latency_seconds``: the record's Kafka timestamp →
  the moment the bridge learned the outcome (any outcome), for records with a timestamp.
- ``ckb_rebalances_total`` counts rebalance callbacks that changed the assignment.
- ``ckb_oldest_inflight_age_seconds``: age of the oldest unfinished record of the partition
  (the one holding the commit point back), 0 when nothing is open; from the loop's snapshots.
- ``ckb_dispatch_window_tasks``, ``ckb_queue_finish_rate`` and ``ckb_queue_inflight_tasks``
  (label ``queue``): each Celery queue's dispatch window (see :mod:`bridge.core.queues`), the
  rate its tasks finish at, and its tasks in flight; from the loop's snapshots.
- ``ckb_tasks_unobservable_total``: each time a lost task was held instead of re-sent because
  the worker check found its outcome can never be seen (``bridge.worker_probe``).
- ``ckb_dlq_pending_records``, ``ckb_dlq_values_dropped_total``,
  ``ckb_dlq_producer_rebuilds_total``, ``ckb_dlq_loops_stopped_total``: the dead-letter
  writer's backlog and totals (:mod:`bridge.dead_letters`), from the loop's snapshots.
- ``ckb_consumer_lag_records`` comes from :class:`bridge.lag.LagMonitor` (:meth:`set_lag`),
  which reads end offsets with its own client.

Every observer method is a dict update under an uncontended lock: cheap on the loop thread.
"""

from __future__ import annotations

import threading
import time
from bisect import bisect_left
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from bridge.core.vocabulary import TP, Rebalance
from bridge.dead_letter_metrics import dead_letter_families
from bridge.events import DeadLetterState, Observer, PartitionState, QueueWindow
from bridge.records import Record

#: seconds; from a few milliseconds (a no-op task) to a day (a backlog worked off slowly)
BUCKETS: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 14400.0, 43200.0, 86400.0,
)  # fmt: skip

Labels = tuple[str, ...]


class Histogram:
    """Counts per bucket (the last one is +Inf) and the sum of observed values."""

    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(BUCKETS, value)] += 1  # le is inclusive: value <= bound
        self.total += value

    def copy(self) -> Histogram:
        other = Histogram()
        other.counts = list(self.counts)
        other.total = self.total
        return other


@dataclass(frozen=True)
class Scrape:
    """A consistent copy of every value: what one scrape shows."""

    counters: dict[str, Counter[Labels]]
    gauges: dict[str, dict[TP, float]]
    paused: int
    durations: dict[Labels, Histogram]
    latencies: dict[Labels, Histogram]
    windows: list[QueueWindow] = field(default_factory=list)
    dead_letters: DeadLetterState = field(default_factory=DeadLetterState)


@dataclass
class Values:
    """Everything the metrics show; guarded by :attr:`PrometheusObserver.lock`."""

    consumed: Counter[Labels] = field(default_factory=Counter)
    dispatched: Counter[Labels] = field(default_factory=Counter)
    finished: Counter[Labels] = field(default_factory=Counter)
    dead_letters: Counter[Labels] = field(default_factory=Counter)
    rebalances: Counter[Labels] = field(default_factory=Counter)
    offset_resets: Counter[Labels] = field(default_factory=Counter)
    unobservable: Counter[Labels] = field(default_factory=Counter)
    #: per route: tokens granted, and seconds its records waited for the next token
    rate_granted: Counter[Labels] = field(default_factory=Counter)
    rate_waited: Counter[Labels] = field(default_factory=Counter)
    #: offsets dispatched and not final, per assigned partition
    in_flight: dict[TP, set[int]] = field(default_factory=dict)
    oldest_age: dict[TP, float] = field(default_factory=dict)
    committed: dict[TP, int] = field(default_factory=dict)
    lag: dict[TP, int] = field(default_factory=dict)
    paused: int = 0
    windows: list[QueueWindow] = field(default_factory=list)
    dead_letter_state: DeadLetterState = field(default_factory=DeadLetterState)
    durations: dict[Labels, Histogram] = field(default_factory=dict)
    latencies: dict[Labels, Histogram] = field(default_factory=dict)

    def scrape(self) -> Scrape:
        return Scrape(
            counters={
                "consumed": Counter(self.consumed),
                "dispatched": Counter(self.dispatched),
                "finished": Counter(self.finished),
                "dead_letters": Counter(self.dead_letters),
                "rebalances": Counter(self.rebalances),
                "offset_resets": Counter(self.offset_resets),
                "unobservable": Counter(self.unobservable),
                "rate_granted": Counter(self.rate_granted),
                "rate_waited": Counter(self.rate_waited),
            },
            gauges={
                "in_flight": {tp: len(offsets) for tp, offsets in self.in_flight.items()},
                "oldest_age": dict(self.oldest_age),
                "committed": dict(self.committed),
                "lag": dict(self.lag),
            },
            paused=self.paused,
            durations={k: h.copy() for k, h in self.durations.items()},
            latencies={k: h.copy() for k, h in self.latencies.items()},
            windows=list(self.windows),
            dead_letters=self.dead_letter_state,  # frozen, replaced whole
        )

    def forget(self, tps: Iterable[TP]) -> None:
        """Drop the gauges of partitions no longer assigned (counters stay: they only grow)."""
        for tp in tps:
            for gauge in (self.in_flight, self.oldest_age, self.committed, self.lag):
                gauge.pop(tp, None)


class PrometheusObserver(Observer):
    """Observer keeping the ``ckb_*`` metrics on its own registry (several may coexist)."""

    def __init__(
        self, registry: CollectorRegistry | None = None, clock: Callable[[], float] = time.time
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.lock = threading.Lock()
        self._values = Values()
        self._clock = clock
        self.registry.register(_Collector(self))

    # == events (loop thread) ==========================================================
    def on_consumed(self, record: Record) -> None:
        with self.lock:
            self._values.consumed[(record.topic, str(record.partition))] += 1

    def on_rate_limited(self, route: str, granted: int, wait: float) -> None:
        with self.lock:
            self._values.rate_granted[(route,)] += granted
            self._values.rate_waited[(route,)] += wait  # type: ignore[assignment]  # seconds

    def on_dispatched(self, record: Record, task: str, redispatch: bool) -> None:
        if redispatch:
            return  # same record, same task id: already counted and in flight
        with self.lock:
            self._values.dispatched[(record.topic, task)] += 1
            self._values.in_flight.setdefault(record.tp, set()).add(record.offset)

    def on_task_finished(
        self, record: Record, task: str, outcome: str, duration: float | None
    ) -> None:
        now = self._clock()
        with self.lock:
            values = self._values
            open_offsets = values.in_flight.get(record.tp)
            if open_offsets is None or record.offset not in open_offsets:
                return  # not dispatched by this bridge (finished earlier), or since revoked
            open_offsets.discard(record.offset)
            values.finished[(record.topic, task, outcome)] += 1
            if duration is not None:
                _histogram(values.durations, (record.topic, task)).observe(max(duration, 0.0))
            if record.timestamp_ms > 0:
                latency = max(now - record.timestamp_ms / 1000.0, 0.0)
                _histogram(values.latencies, (record.topic,)).observe(latency)

    def on_dead_lettered(self, record: Record, reason: str) -> None:
        with self.lock:
            self._values.dead_letters[(record.topic, reason)] += 1

    def on_committed(self, tp: TP, offset: int) -> None:
        with self.lock:
            self._values.committed[tp] = offset

    def on_rebalance(self, event: str, tps: list[TP]) -> None:
        if not tps:
            return
        with self.lock:
            self._values.rebalances[(event,)] += 1
            if event == Rebalance.ASSIGN:
                for tp in tps:
                    self._values.in_flight.setdefault(tp, set())
            else:
                self._values.forget(tps)

    def on_paused(self, paused: int) -> None:
        with self.lock:
            self._values.paused = paused

    def on_snapshot(self, partitions: list[PartitionState]) -> None:
        with self.lock:
            values = self._values
            for state in partitions:
                if (state.topic, state.partition) in values.in_flight:
                    values.oldest_age[(state.topic, state.partition)] = state.oldest_open_age or 0.0
            values.paused = sum(1 for state in partitions if state.paused)

    def on_unobservable(self, record: Record, task: str) -> None:
        with self.lock:
            self._values.unobservable[(record.topic, task)] += 1

    def on_offset_reset(self, tp: TP) -> None:
        with self.lock:
            self._values.offset_resets[(tp[0], str(tp[1]))] += 1

    def on_windows(self, windows: list[QueueWindow]) -> None:
        with self.lock:
            self._values.windows = list(windows)

    def on_dead_letter_state(self, state: DeadLetterState) -> None:
        with self.lock:
            self._values.dead_letter_state = state

    # == from the lag monitor (its own thread) =========================================
    def set_lag(self, lags: Mapping[TP, int]) -> None:
        """The lag of each partition (:func:`bridge.lag.partition_lag`), for those still
        assigned: the monitor learns of a revoke up to a snapshot later than this observer."""
        with self.lock:
            values = self._values
            for tp, lag in lags.items():
                if tp in values.in_flight:
                    values.lag[tp] = lag

    def scrape(self) -> Scrape:
        """A consistent copy of every value (what one scrape shows)."""
        with self.lock:
            return self._values.scrape()


def _histogram(histograms: dict[Labels, Histogram], labels: Labels) -> Histogram:
    histogram = histograms.get(labels)
    if histogram is None:
        histogram = histograms[labels] = Histogram()
    return histogram


# == exposition ==========================================================================
#: counters: (metric name without _total, help, label names, key in Scrape.counters)
COUNTERS: tuple[tuple[str, str, Labels, str], ...] = (
    ("ckb_records_consumed", "Records consumed.", ("topic", "partition"), "consumed"),
    ("ckb_tasks_dispatched", "Records sent to Celery (a re-dispatch is not counted again).",
     ("topic", "task"), "dispatched"),
    ("ckb_tasks_finished", "Final outcomes of the tasks this bridge dispatched.",
     ("topic", "task", "outcome"), "finished"),
    ("ckb_dlq_records", "Dead letters acknowledged by Kafka.", ("topic", "reason"),
     "dead_letters"),
    ("ckb_rebalances", "Rebalance callbacks that changed the assignment.", ("event",),
     "rebalances"),
    ("ckb_offset_resets", "Times a partition's offsets went back without a rebalance.",
     ("topic", "partition"), "offset_resets"),
    ("ckb_tasks_unobservable", "Lost tasks held, not re-sent: their outcome can never be seen "
     "(see the worker check in the log).", ("topic", "task"), "unobservable"),
    ("ckb_rate_limit_granted", "Task sends a route's rate limit allowed (tokens granted).",
     ("route",), "rate_granted"),
    ("ckb_rate_limit_wait_seconds", "Seconds a route's records waited for its rate limit's "
     "next token.", ("route",), "rate_waited"),
)  # fmt: skip

#: per-partition gauges: (metric name, help, key in Scrape.gauges)
GAUGES: tuple[tuple[str, str, str], ...] = (
    ("ckb_inflight_records", "Tasks dispatched and not final.", "in_flight"),
    ("ckb_oldest_inflight_age_seconds",
     "Seconds since the oldest unfinished record (the one holding the commit) was read.",
     "oldest_age"),
    ("ckb_committed_offset", "Last offset the bridge committed.", "committed"),
    ("ckb_consumer_lag_records", "End offset minus committed offset.", "lag"),
)  # fmt: skip


class _Collector(Collector):
    def __init__(self, observer: PrometheusObserver) -> None:
        self._observer = observer

    def collect(self) -> Iterator[Metric]:
        scrape = self._observer.scrape()
        for name, doc, labels, key in COUNTERS:
            counter = CounterMetricFamily(name, doc, labels=labels)
            for label_values, count in sorted(scrape.counters[key].items()):
                counter.add_metric(label_values, count)
            yield counter
        for name, doc, key in GAUGES:
            gauge = GaugeMetricFamily(name, doc, labels=("topic", "partition"))
            for (topic, partition), value in sorted(scrape.gauges[key].items()):
                gauge.add_metric([topic, str(partition)], value)
            yield gauge
        paused = GaugeMetricFamily("ckb_paused_partitions", "Partitions paused at the cap.")
        paused.add_metric([], scrape.paused)
        yield paused
        yield from _window_families(scrape.windows)
        yield from dead_letter_families(scrape.dead_letters)
        yield _histogram_family(
            "ckb_task_duration_seconds",
            "Seconds from a record's first dispatch to its task's final state.",
            ("topic", "task"),
            scrape.durations,
        )
        yield _histogram_family(
            "ckb_record_latency_seconds",
            "Seconds from the record's Kafka timestamp to its task's final state.",
            ("topic",),
            scrape.latencies,
        )


#: per-queue gauges: (metric name, help, QueueWindow field)
QUEUE_GAUGES: tuple[tuple[str, str, str], ...] = (
    ("ckb_dispatch_window_tasks",
     "Tasks the bridge lets be in flight to this Celery queue now (limits.max_queue_time).",
     "window"),
    ("ckb_queue_inflight_tasks", "Tasks in flight to this Celery queue.", "in_flight"),
    ("ckb_queue_finish_rate", "Tasks of this queue finished per second (moving average).",
     "rate"),
)  # fmt: skip


def _window_families(windows: list[QueueWindow]) -> Iterator[Metric]:
    for name, doc, attribute in QUEUE_GAUGES:
        gauge = GaugeMetricFamily(name, doc, labels=("queue",))
        for window in windows:
            gauge.add_metric([window.queue], float(getattr(window, attribute)))
        yield gauge


def _histogram_family(
    name: str, doc: str, labels: Labels, histograms: dict[Labels, Histogram]
) -> Metric:
    family = HistogramMetricFamily(name, doc, labels=labels)
    for label_values, histogram in sorted(histograms.items()):
        cumulative, buckets = 0, []
        for bound, count in zip([*BUCKETS, float("inf")], histogram.counts, strict=True):
            cumulative += count
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), float(cumulative)))
        family.add_metric(label_values, buckets, histogram.total)
    return family
