"""The dead-letter writer's metrics (``ckb_dlq_pending_records``, ``ckb_dlq_values_dropped_total``,
``ckb_dlq_producer_rebuilds_total``, ``ckb_dlq_loops_stopped_total``) from its latest state."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from bridge.events import DeadLetterState


def dead_letter_families(state: DeadLetterState) -> Iterator[Metric]:
    pending = GaugeMetricFamily(
        "ckb_dlq_pending_records",
        "Dead letters not yet acknowledged by Kafka (refused: waiting for an operator).",
        labels=("dlq_topic", "state"),
    )
    for (topic, state_name), count in sorted(state.pending.items()):
        pending.add_metric([topic, state_name], count)
    yield pending
    dropped = CounterMetricFamily(
        "ckb_dlq_values_dropped",
        "Dead letters too large for their topic, written without their value.",
        labels=("dlq_topic",),
    )
    for topic, count in sorted(state.values_dropped.items()):
        dropped.add_metric([topic], count)
    yield dropped
    rebuilds = CounterMetricFamily(
        "ckb_dlq_producer_rebuilds", "Dead-letter producers replaced after a fatal error."
    )
    rebuilds.add_metric([], state.rebuilds)
    yield rebuilds
    loops = CounterMetricFamily(
        "ckb_dlq_loops_stopped",
        "Dead letters that failed again and were not written to a topic the bridge consumes.",
        labels=("topic",),
    )
    for topic, count in sorted(state.loops_stopped.items()):
        loops.add_metric([topic], count)
    yield loops
