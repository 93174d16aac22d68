"""The lag monitor: fed by the loop's snapshots, one lag rule, and ``/status``; and the ops
endpoint served whether or not metrics are enabled."""

from __future__ import annotations

import gc
import json
import urllib.error
import urllib.request
from typing import Any

from prometheus_client import CollectorRegistry

from bridge.core.vocabulary import TP
from bridge.events import Observers, PartitionState
from bridge.http_server import OpsServer
from bridge.lag import LagMonitor, partition_lag
from bridge.metrics import PrometheusObserver
from bridge.service import build_bridge
from bridge.settings import Settings


class Watermarks:
    """Answers like a non-subscribed confluent-kafka Consumer (no network)."""

    def __init__(self, ends: dict[TP, tuple[int, int]], group: dict[TP, int]) -> None:
        self.ends, self.group, self.down = ends, group, False
        self.asked: list[TP] = []
        self.metadata_requests = 0

    def get_watermark_offsets(self, tp: Any, timeout: float, cached: bool) -> tuple[int, int]:
        from confluent_kafka import KafkaException

        if self.down:
            raise KafkaException("broker down")
        self.asked.append((tp.topic, tp.partition))
        return self.ends[(tp.topic, tp.partition)]

    def committed(self, tps: list[Any], timeout: float) -> list[Any]:
        for tp in tps:
            tp.offset = self.group.get((tp.topic, tp.partition), -1001)
        return tps

    def list_topics(self, timeout: float) -> None:
        self.metadata_requests += 1


def state(partition: int, committed: int | None, paused: bool = False) -> PartitionState:
    return PartitionState("t", partition, 3, 2, committed, 1.25, paused)


def test_the_lag_rule() -> None:
    assert partition_lag(end=100, committed=95, first=0) == 5
    assert partition_lag(end=30, committed=None, first=20) == 10  # from the first offset
    assert partition_lag(end=7, committed=None, first=7) == 0  # empty (or expired): caught up
    assert partition_lag(end=7, committed=9, first=0) == 0  # never negative


def test_the_assignment_comes_from_the_loop_snapshots() -> None:
    kafka = Watermarks({("t", 0): (0, 100), ("t", 1): (0, 50), ("t", 2): (20, 30)}, {("t", 1): 45})
    published: list[dict[TP, int]] = []
    clock = [1000.0]
    monitor = LagMonitor(
        lambda: kafka,
        lambda lags: published.append(dict(lags)),
        interval=5,
        timeout=1,
        clock=lambda: clock[0],
    )
    assert not monitor.reachable()
    monitor.check_once(kafka)  # nothing assigned yet: a metadata request stands in
    assert (kafka.metadata_requests, kafka.asked, published) == (1, [], [])
    assert monitor.reachable()

    # handed to the loop's observers: the bridge's commit wins, then the group's, then first
    Observers([monitor]).on_snapshot([state(0, 95), state(1, None), state(2, None)])
    monitor.check_once(kafka)
    assert published == [{("t", 0): 5, ("t", 1): 5, ("t", 2): 10}]

    Observers([monitor]).on_snapshot([state(1, 48)])  # partitions 0 and 2 revoked
    kafka.asked.clear()
    monitor.check_once(kafka)
    assert kafka.asked == [("t", 1)]
    assert published[-1] == {("t", 1): 2}

    kafka.down = True
    clock[0] += 60
    monitor.check_once(kafka)
    assert not monitor.reachable()
    assert len(published) == 2


def test_the_lags_reach_the_metrics_of_partitions_still_assigned() -> None:
    metrics = PrometheusObserver(CollectorRegistry())
    metrics.on_rebalance("assign", [("t", 0), ("t", 1)])
    kafka = Watermarks({("t", 0): (0, 10), ("t", 1): (0, 4)}, {})
    monitor = LagMonitor(lambda: kafka, metrics.set_lag)
    monitor.on_snapshot([state(0, 7), state(1, None)])
    metrics.on_rebalance("revoke", [("t", 1)])  # before the next snapshot tells the monitor
    monitor.check_once(kafka)

    def lag(partition: int) -> float | None:
        labels = {"topic": "t", "partition": str(partition)}
        return metrics.registry.get_sample_value("ckb_consumer_lag_records", labels)

    assert (lag(0), lag(1)) == (3, None)


def test_status_is_the_latest_snapshot_with_end_and_lag() -> None:
    kafka = Watermarks({("t", 0): (0, 13)}, {})
    clock = [50.0]
    monitor = LagMonitor(lambda: kafka, clock=lambda: clock[0])
    assert monitor.status() == {
        "snapshot_age_seconds": None,
        "paused_partitions": 0,
        "partitions": [],
    }
    monitor.on_snapshot([state(0, 10), state(1, None, paused=True)])
    kafka.ends[("t", 1)] = (0, 0)
    monitor.check_once(kafka)
    clock[0] += 0.5
    status = monitor.status()
    assert (status["snapshot_age_seconds"], status["paused_partitions"]) == (0.5, 1)
    assert status["partitions"][0] == {
        "topic": "t",
        "partition": 0,
        "open": 3,
        "in_flight": 2,
        "committed": 10,
        "oldest_open_age_seconds": 1.25,
        "paused": False,
        "end": 13,
        "lag": 3,
    }
    assert (status["partitions"][1]["end"], status["partitions"][1]["lag"]) == (0, 0)
    monitor.on_snapshot([state(0, 10), state(1, None), state(2, None)])  # newly assigned
    assert status_of(monitor, 2) == (None, None)  # not asked yet


def status_of(monitor: LagMonitor, partition: int) -> tuple[int | None, int | None]:
    row = next(p for p in monitor.status()["partitions"] if p["partition"] == partition)
    return row["end"], row["lag"]


# == ops endpoint with metrics disabled ===================================================
def get(url: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_a_bridge_without_metrics_serves_probes_and_status() -> None:
    """The Dockerfile health check and the Kubernetes probes call /healthz and /readyz."""
    settings = Settings.model_validate(
        {
            "routes": [{"topic": "orders", "task": "tasks.x"}],
            "kafka": {"bootstrap_servers": "127.0.0.1:1", "group_id": "g-ops"},  # nobody there
            "metrics": {"enabled": False, "host": "127.0.0.1", "port": 0},
        }
    )
    bridge = build_bridge(settings)
    try:
        monitors = [s for s in bridge.services if isinstance(s, LagMonitor)]
        servers = [s for s in bridge.services if isinstance(s, OpsServer)]
        assert len(monitors) == len(servers) == 1
        server = servers[0]
        server.start()
        try:
            base = f"http://127.0.0.1:{server.port}"
            assert get(f"{base}/healthz")[0] == 200  # the loop was just built
            code, body = get(f"{base}/readyz")  # served: not ready, neither Redis nor Kafka
            assert code == 503 and "kafka: no answer to the lag monitor recently" in body["reasons"]
            assert get(f"{base}/status") == (
                200,
                {"group": "g-ops", **monitors[0].status()},
            )
            assert get(f"{base}/metrics")[0] == 404
        finally:
            server.stop()
    finally:
        bridge.dispatcher.close()
        for close in bridge.closers:
            close()
        del bridge
        gc.collect()
