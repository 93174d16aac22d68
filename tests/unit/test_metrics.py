"""The ``ckb_*`` metrics as the observer keeps them, the probes, and the HTTP endpoint."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from bench.common import free_port
from bridge.events import DeadLetterState, Observers, PartitionState, QueueWindow
from bridge.http_server import OpsApp, OpsServer, Probes
from bridge.metrics import BUCKETS, PrometheusObserver
from bridge.records import Record
from bridge.settings import Settings
from bridge.status import PartitionStatus, add_bridge_state, render_status

#: the contract in DESIGN.md: sample name, type, label names
CONTRACT = {
    "ckb_records_consumed": ("counter", {"topic", "partition"}),
    "ckb_tasks_dispatched": ("counter", {"topic", "task"}),
    "ckb_tasks_finished": ("counter", {"topic", "task", "outcome"}),
    "ckb_dlq_records": ("counter", {"topic", "reason"}),
    "ckb_inflight_records": ("gauge", {"topic", "partition"}),
    "ckb_oldest_inflight_age_seconds": ("gauge", {"topic", "partition"}),
    "ckb_committed_offset": ("gauge", {"topic", "partition"}),
    "ckb_consumer_lag_records": ("gauge", {"topic", "partition"}),
    "ckb_task_duration_seconds": ("histogram", {"topic", "task"}),
    "ckb_record_latency_seconds": ("histogram", {"topic"}),
    "ckb_rebalances": ("counter", {"event"}),
    "ckb_paused_partitions": ("gauge", set()),
    # not in DESIGN.md's table (added with the dispatch window, issue 12)
    "ckb_dispatch_window_tasks": ("gauge", {"queue"}),
    "ckb_queue_inflight_tasks": ("gauge", {"queue"}),
    "ckb_queue_finish_rate": ("gauge", {"queue"}),
    "ckb_offset_resets": ("counter", {"topic", "partition"}),
    "ckb_tasks_unobservable": ("counter", {"topic", "task"}),
    "ckb_dlq_pending_records": ("gauge", {"dlq_topic", "state"}),
    "ckb_dlq_values_dropped": ("counter", {"dlq_topic"}),
    "ckb_dlq_producer_rebuilds": ("counter", set()),
    "ckb_dlq_loops_stopped": ("counter", {"topic"}),
    "ckb_rate_limit_granted": ("counter", {"route"}),
    "ckb_rate_limit_wait_seconds": ("counter", {"route"}),
}

NOW = 1_700_000_100.0
TASK = "tasks.x"


def record(offset: int, partition: int = 0, topic: str = "orders", ts: float = NOW - 2) -> Record:
    return Record(topic, partition, offset, None, b"{}", (), int(ts * 1000))


def observer() -> PrometheusObserver:
    metrics = PrometheusObserver(CollectorRegistry(), clock=lambda: NOW)
    metrics.on_rebalance("assign", [("orders", 0), ("orders", 1)])
    return metrics


def value(metrics: PrometheusObserver, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_every_contract_metric_is_exposed_with_its_type_and_labels() -> None:
    metrics = observer()
    rec = record(0)
    metrics.on_consumed(rec)
    metrics.on_dispatched(rec, TASK, False)
    metrics.on_rate_limited("orders", 1, 0.0)
    metrics.on_task_finished(rec, TASK, "success", 0.2)
    metrics.on_dead_lettered(record(1), "decode_error")
    metrics.on_committed(("orders", 0), 2)
    metrics.on_snapshot([PartitionState("orders", 0, 0, 0, 2, None, False)])
    metrics.on_windows([QueueWindow("celery", 32, 3, 10.0)])
    metrics.on_offset_reset(("orders", 0))
    metrics.on_unobservable(rec, TASK)
    metrics.on_dead_letter_state(
        DeadLetterState({("orders.dlq", "refused"): 2}, {"orders.dlq": 1}, 1, {"orders": 1})
    )
    metrics.set_lag({("orders", 0): 0})
    text = metrics.registry.collect()
    families = {family.name: family for family in text}
    assert set(families) == set(CONTRACT)
    for name, (kind, labels) in CONTRACT.items():
        family = families[name]
        assert family.type == kind, name
        assert family.samples, f"{name} has no samples"
        for sample in family.samples:
            assert set(sample.labels) - {"le"} == labels, (name, sample.labels)


def test_counters_by_their_labels() -> None:
    metrics = observer()
    for offset in range(3):
        metrics.on_consumed(record(offset))
    metrics.on_consumed(record(0, partition=1))
    metrics.on_dispatched(record(0), TASK, False)
    metrics.on_dispatched(record(1), TASK, False)
    metrics.on_task_finished(record(0), TASK, "success", 0.1)
    metrics.on_task_finished(record(1), TASK, "failure", 0.1)
    metrics.on_dead_lettered(record(1), "task_failed")
    metrics.on_dead_lettered(record(2), "decode_error")

    assert value(metrics, "ckb_records_consumed_total", topic="orders", partition="0") == 3
    assert value(metrics, "ckb_records_consumed_total", topic="orders", partition="1") == 1
    assert value(metrics, "ckb_tasks_dispatched_total", topic="orders", task=TASK) == 2
    for outcome in ("success", "failure"):
        finished = value(
            metrics, "ckb_tasks_finished_total", topic="orders", task=TASK, outcome=outcome
        )
        assert finished == 1
    assert value(metrics, "ckb_dlq_records_total", topic="orders", reason="task_failed") == 1
    assert value(metrics, "ckb_dlq_records_total", topic="orders", reason="decode_error") == 1
    assert value(metrics, "ckb_rebalances_total", event="assign") == 1


def dispatched_finished_in_flight(metrics: PrometheusObserver) -> tuple[float, float, float]:
    totals = {"ckb_tasks_dispatched_total": 0.0, "ckb_tasks_finished_total": 0.0}
    in_flight = 0.0
    for family in metrics.registry.collect():
        for sample in family.samples:
            if sample.name in totals:
                totals[sample.name] += sample.value
            elif sample.name == "ckb_inflight_records":
                in_flight += sample.value
    return totals["ckb_tasks_dispatched_total"], totals["ckb_tasks_finished_total"], in_flight


def test_dispatched_equals_finished_plus_in_flight_redispatch_counted_once() -> None:
    metrics = observer()
    for offset in range(5):
        metrics.on_dispatched(record(offset), TASK, False)
    metrics.on_dispatched(record(4), TASK, True)  # re-sent after task_timeout: same record
    metrics.on_task_finished(record(0), TASK, "success", 0.1)
    metrics.on_task_finished(record(1), TASK, "timeout", None)
    assert dispatched_finished_in_flight(metrics) == (5, 2, 3)
    assert value(metrics, "ckb_inflight_records", topic="orders", partition="0") == 3
    assert value(metrics, "ckb_inflight_records", topic="orders", partition="1") == 0


def test_a_record_found_finished_before_dispatch_is_not_counted_as_finished() -> None:
    metrics = observer()
    # a redelivered record whose task already succeeded: the loop reports it, undispatched
    metrics.on_task_finished(record(7), TASK, "success", None)
    metrics.on_task_finished(record(7), TASK, "success", 0.1)  # a duplicate report
    assert dispatched_finished_in_flight(metrics) == (0, 0, 0)


def test_histograms_observe_duration_and_record_latency() -> None:
    metrics = observer()
    for offset, duration in ((0, 0.3), (1, 42.0)):
        metrics.on_dispatched(record(offset), TASK, False)
        metrics.on_task_finished(record(offset, ts=NOW - 7200), TASK, "success", duration)
    metrics.on_dispatched(record(2), TASK, False)
    metrics.on_task_finished(record(2, ts=NOW - 0.004), TASK, "timeout", None)

    def bucket(le: str) -> float | None:
        return value(metrics, "ckb_task_duration_seconds_bucket", topic="orders", task=TASK, le=le)

    assert (bucket("0.25"), bucket("0.5"), bucket("30.0"), bucket("60.0")) == (0, 1, 1, 2)
    assert bucket("+Inf") == 2  # the timeout has no final state, hence no duration
    labels = {"topic": "orders", "task": TASK}
    assert value(metrics, "ckb_task_duration_seconds_count", **labels) == 2
    assert value(metrics, "ckb_task_duration_seconds_sum", **labels) == pytest.approx(42.3)

    def latency(le: str) -> float | None:
        return value(metrics, "ckb_record_latency_seconds_bucket", topic="orders", le=le)

    assert latency("0.005") == 1  # record timestamp -> outcome, for every outcome
    assert (latency("3600.0"), latency("7200.0"), latency("+Inf")) == (1, 3, 3)
    assert value(metrics, "ckb_record_latency_seconds_sum", topic="orders") == pytest.approx(
        14400.004, abs=0.01
    )


def test_buckets_span_milliseconds_to_hours() -> None:
    assert BUCKETS[0] <= 0.005 and BUCKETS[-1] >= 4 * 3600
    assert list(BUCKETS) == sorted(BUCKETS)


@pytest.mark.parametrize("event", ["revoke", "lost"])
def test_gauges_of_partitions_no_longer_assigned_are_removed(event: str) -> None:
    metrics = observer()
    metrics.on_dispatched(record(0, partition=1), TASK, False)
    metrics.on_committed(("orders", 1), 5)
    metrics.on_snapshot([PartitionState("orders", 1, 1, 1, 5, 3.5, True)])
    metrics.set_lag({("orders", 1): 4})
    p1 = {"topic": "orders", "partition": "1"}
    assert value(metrics, "ckb_consumer_lag_records", **p1) == 4
    assert value(metrics, "ckb_oldest_inflight_age_seconds", **p1) == 3.5
    assert value(metrics, "ckb_paused_partitions") == 1

    metrics.on_rebalance(event, [("orders", 1)])
    gauges = ("ckb_inflight_records", "ckb_oldest_inflight_age_seconds", "ckb_committed_offset")
    for name in (*gauges, "ckb_consumer_lag_records"):
        assert value(metrics, name, **p1) is None, name
    assert value(metrics, "ckb_inflight_records", topic="orders", partition="0") == 0
    assert value(metrics, "ckb_rebalances_total", event=event) == 1
    # the task's late result is ignored by the loop; the observer ignores it as well
    metrics.on_task_finished(record(0, partition=1), TASK, "success", 0.1)
    assert dispatched_finished_in_flight(metrics) == (1, 0, 0)
    # a lag read while the partition was being revoked does not bring it back
    metrics.set_lag({("orders", 1): 4})
    assert value(metrics, "ckb_consumer_lag_records", **p1) is None
    assert value(metrics, "ckb_records_consumed_total", **p1) is None  # never consumed


def test_empty_rebalance_callbacks_are_not_counted() -> None:
    metrics = observer()
    metrics.on_rebalance("revoke", [])
    assert value(metrics, "ckb_rebalances_total", event="revoke") is None


def test_snapshot_feeds_paused_and_oldest_age() -> None:
    metrics = observer()
    metrics.on_paused(2)
    assert value(metrics, "ckb_paused_partitions") == 2
    metrics.on_snapshot(
        [
            PartitionState("orders", 0, 3, 2, 10, 1.25, False),
            PartitionState("orders", 1, 0, 0, None, None, True),
        ]
    )
    assert value(metrics, "ckb_paused_partitions") == 1
    assert value(metrics, "ckb_oldest_inflight_age_seconds", topic="orders", partition="0") == 1.25
    assert value(metrics, "ckb_oldest_inflight_age_seconds", topic="orders", partition="1") == 0


def test_observers_each_have_their_own_registry() -> None:
    first, second = observer(), observer()
    Observers([first]).on_consumed(record(0))
    assert value(first, "ckb_records_consumed_total", topic="orders", partition="0") == 1
    assert value(second, "ckb_records_consumed_total", topic="orders", partition="0") is None


# == probes and endpoint ==================================================================
def probes(**overrides: Any) -> Probes:
    args: dict[str, Any] = {
        "last_iteration": lambda: 100.0,
        "stopping": lambda: False,
        "redis_ok": lambda: True,
        "kafka_ok": lambda: True,
        "clock": lambda: 110.0,
    }
    return Probes(**{**args, **overrides})


def test_probes() -> None:
    assert probes().live()[0] and probes().ready() == (True, {"status": "ready"})
    stalled = probes(clock=lambda: 131.0)
    assert not stalled.live()[0] and not stalled.ready()[0]
    ready, body = probes(redis_ok=lambda: False, stopping=lambda: True).ready()
    assert not ready
    assert body["reasons"] == ["stopping", "results: result backend not connected"]
    assert probes(kafka_ok=lambda: False).ready()[1]["reasons"] == [
        "kafka: no answer to the lag monitor recently"
    ]


def get(url: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.headers["Content-Type"], response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read()


def test_server_serves_metrics_probes_and_status_on_a_free_port() -> None:
    metrics = observer()
    metrics.on_consumed(record(0))
    redis_up = [True]
    app = OpsApp(metrics.registry, probes(redis_ok=lambda: redis_up[0]), lambda: {"partitions": []})
    server = OpsServer(app, "127.0.0.1", 0)
    server.start()
    try:
        base = f"http://127.0.0.1:{server.port}"
        code, content_type, body = get(f"{base}/metrics")
        assert code == 200 and content_type.startswith("text/plain")
        families = {f.name: f for f in text_string_to_metric_families(body.decode())}
        assert families["ckb_records_consumed"].samples[0].value == 1
        assert get(f"{base}/healthz")[0] == 200
        assert get(f"{base}/readyz")[0] == 200
        redis_up[0] = False
        code, content_type, body = get(f"{base}/readyz")
        assert (code, content_type) == (503, "application/json")
        assert json.loads(body)["reasons"] == ["results: result backend not connected"]
        assert json.loads(get(f"{base}/status")[2]) == {"partitions": []}
        assert get(f"{base}/nope")[0] == 404
    finally:
        server.stop()


def test_probes_and_status_are_served_with_metrics_disabled() -> None:
    """The container health check and the Kubernetes probes call them either way."""
    app = OpsApp(None, probes(), lambda: {"group": "g", "partitions": []})
    server = OpsServer(app, "127.0.0.1", 0)
    server.start()
    try:
        base = f"http://127.0.0.1:{server.port}"
        assert get(f"{base}/healthz")[0] == 200
        assert get(f"{base}/readyz")[0] == 200
        assert json.loads(get(f"{base}/status")[2]) == {"group": "g", "partitions": []}
        code, _, body = get(f"{base}/metrics")
        assert code == 404
        assert json.loads(body)["paths"] == ["/healthz", "/readyz", "/status"]
    finally:
        server.stop()


# == ckb status: what a bridge's /status adds ============================================
def test_status_rows_get_in_flight_and_paused_from_a_bridge(
    capsys: pytest.CaptureFixture[str],
) -> None:
    report = {"partitions": [{"topic": "orders", "partition": 0, "in_flight": 4, "paused": True}]}
    server = OpsServer(OpsApp(CollectorRegistry(), probes(), lambda: report), "127.0.0.1", 0)
    server.start()
    try:
        url = f"http://127.0.0.1:{server.port}"
        routes = [{"topic": "orders", "task": TASK}]
        by_default = Settings.model_validate(
            {"routes": routes, "metrics": {"host": "0.0.0.0", "port": server.port}}
        )
        rows = [PartitionStatus("orders", p, 10, 15, 5) for p in range(2)]
        assert add_bridge_state(rows, by_default, ()) == []  # the local bridge, found quietly
        assert [(r.in_flight, r.paused) for r in rows] == [(4, True), (None, None)]
        render_status("g", rows)
        table = capsys.readouterr().out
        assert "in flight" in table and "yes" in table

        nowhere = Settings.model_validate({"routes": routes, "metrics": {"port": free_port()}})
        assert add_bridge_state(rows, nowhere, ()) == []  # no bridge here: nothing said
        warnings = add_bridge_state(rows, nowhere, (f"http://127.0.0.1:{free_port()}",))
        assert len(warnings) == 1 and "no bridge status" in warnings[0]
        assert add_bridge_state(rows, nowhere, (url,)) == []
    finally:
        server.stop()


def test_the_dead_letter_backlog_and_totals() -> None:
    metrics = observer()
    assert value(metrics, "ckb_dlq_producer_rebuilds_total") == 0
    state = DeadLetterState(
        {("orders.dlq", "refused"): 2, ("orders.dlq", "writing"): 1},
        {"orders.dlq": 3},
        1,
        {"orders": 4},
        "dead letters: orders.dlq refuses them",
    )
    metrics.on_dead_letter_state(state)
    pending = "ckb_dlq_pending_records"
    assert value(metrics, pending, dlq_topic="orders.dlq", state="refused") == 2
    assert value(metrics, pending, dlq_topic="orders.dlq", state="writing") == 1
    assert value(metrics, "ckb_dlq_values_dropped_total", dlq_topic="orders.dlq") == 3
    assert value(metrics, "ckb_dlq_producer_rebuilds_total") == 1
    assert value(metrics, "ckb_dlq_loops_stopped_total", topic="orders") == 4
    metrics.on_dead_letter_state(DeadLetterState())  # all landed: the gauge series go away
    assert value(metrics, pending, dlq_topic="orders.dlq", state="refused") is None


def test_a_stuck_dead_letter_topic_is_a_readiness_reason() -> None:
    problem = "dead letters: orders.dlq refuses them (TOPIC_AUTHORIZATION_FAILED): grant WRITE"
    ready, body = probes(dead_letters=lambda: problem).ready()
    assert not ready
    assert body["reasons"] == [problem]
    assert probes(dead_letters=lambda: None).ready()[0]


def test_rate_limits_count_tokens_granted_and_seconds_waited_per_route() -> None:
    observer = PrometheusObserver()
    observer.on_rate_limited("orders", 50, 0.0)
    observer.on_rate_limited("orders", 3, 0.25)
    assert value(observer, "ckb_rate_limit_granted_total", route="orders") == 53
    assert value(observer, "ckb_rate_limit_wait_seconds_total", route="orders") == 0.25
