"""Metrics, probes and status of a running bridge on the real Kafka, Redis and Celery worker."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from bridge.stack import LocalStack, StackInfo
from tests.figures import figure
from tests.integration.harness import (
    REPO,
    SHARED_QUEUE,
    BridgeProcess,
    Executions,
    Kafka,
    Worker,
    bridge_config,
    free_port,
    start_bridge,
    unique,
    wait_for,
)


def get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError:
        return 0, b""


@dataclass
class Scrape:
    """One /metrics scrape, as {(sample name, sorted label items): value}."""

    at: float
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float]

    def total(self, name: str, **labels: str) -> float:
        wanted = set(labels.items())
        return sum(v for (n, ls), v in self.samples.items() if n == name and wanted <= set(ls))

    def by_partition(self, name: str, topic: str) -> dict[int, float]:
        return {
            int(dict(ls)["partition"]): v
            for (n, ls), v in self.samples.items()
            if n == name and dict(ls).get("topic") == topic
        }

    def accounting(self, topic: str) -> tuple[float, float, float]:
        """(dispatched, finished, in flight) of ``topic``."""
        return (
            self.total("ckb_tasks_dispatched_total", topic=topic),
            self.total("ckb_tasks_finished_total", topic=topic),
            self.total("ckb_inflight_records", topic=topic),
        )


def scrape(base: str) -> Scrape:
    code, body = get(f"{base}/metrics")
    assert code == 200, f"/metrics answered {code}"
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }
    return Scrape(time.monotonic(), samples)


class Scraper:
    """Scrapes /metrics in a loop while the bridge works."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.scrapes: list[Scrape] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.scrapes.append(scrape(self.base))

    def __enter__(self) -> Scraper:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(15)


def payload(n: int, malformed: set[int], failing: set[int]) -> bytes:
    if n in malformed:
        return b"\xff not json"
    mode = "always_fail" if n in failing else "ok"
    return json.dumps({"n": n, "sleep_ms": n % 40, "mode": mode}).encode()


def ckb_status(config_path: Path) -> list[dict[str, Any]]:
    result = subprocess.run(
        [sys.executable, "-m", "bridge", "status", "-c", str(config_path), "--json"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    rows: list[dict[str, Any]] = json.loads(result.stdout)
    return rows


def consumed(base: str, topic: str) -> float:
    return scrape(base).total("ckb_records_consumed_total", topic=topic)


def lag_is_zero(base: str, topic: str, partitions: int) -> bool:
    lags = scrape(base).by_partition("ckb_consumer_lag_records", topic)
    return len(lags) == partitions and not any(lags.values())


def readyz(base: str) -> int:
    return get(f"{base}/readyz", timeout=2)[0]


def test_metrics_probes_and_status_during_and_after_a_run(
    stack: StackInfo,
    local_stack: LocalStack,
    kafka: Kafka,
    executions: Executions,
    shared_worker: Worker,
    work_dir: Path,
) -> None:
    partitions, total = 3, 1000
    malformed = set(range(50, total, 100))  # 10 undecodable records: DLQ decode_error
    failing = {13, 413, 813}  # tasks that fail: DLQ task_failed
    topic = kafka.create_topic(partitions)
    group = unique("g-obs")
    port = free_port()
    route = {"topic": topic, "task": "it.record", "queue": SHARED_QUEUE}
    metrics = {"enabled": True, "host": "127.0.0.1", "port": port}
    bridge = start_bridge(bridge_config(stack, group, [route], metrics=metrics), work_dir)
    base = f"http://127.0.0.1:{port}"
    started = time.monotonic()
    try:
        wait_for(lambda: readyz(base) == 200, 60, "/readyz to answer 200")
        with Scraper(base) as scraper:
            for wave in range(4):  # traffic arrives while the bridge works
                numbers = range(wave * total // 4, (wave + 1) * total // 4)
                values = (payload(n, malformed, failing) for n in numbers)
                kafka.produce(topic, values, partition_of=lambda i: i % partitions)
                # the next wave comes once the bridge is at work on this one
                wait_for(
                    lambda first=numbers.start: consumed(base, topic) > first,
                    60,
                    f"the bridge to consume from wave {wave + 1}",
                )
            wait_for(
                lambda: kafka.committed(group, topic, partitions) == kafka.end_offsets(topic),
                120,
                "commits to reach the end",
                interval=0.5,
            )
        wait_for(lambda: lag_is_zero(base, topic, partitions), 30, "ckb_consumer_lag_records 0")
        check_scrapes_during_run(scraper.scrapes, topic, total - len(malformed))
        check_final_metrics(kafka, base, topic, partitions, total, malformed, failing)
        ran = {r["payload"]["n"] for r in executions.of(topic)}  # before Redis loses them
        assert ran == set(range(total)) - malformed - failing
        check_status(bridge, base, kafka, topic, partitions)
        redis_down = (local_stack.stop_redis, local_stack.start_redis)
        # Redis is the result backend here: the reason names what is not read (results:)
        check_readiness_follows("results", *redis_down, base, unready_within=30, ready_within=60)
        # Kafka: the lag monitor's answers age out after 3 intervals + its timeout (20 s)
        kafka_down = (local_stack.stop_kafka, local_stack.start_kafka)
        check_readiness_follows("kafka", *kafka_down, base, unready_within=60, ready_within=90)
        check_recovery(kafka, base, topic, partitions, group)
        assert bridge.alive(), bridge.log_tail()
    finally:
        exit_code = bridge.terminate()
    assert exit_code == 0, bridge.log_tail()
    figure(f"observability: {time.monotonic() - started:.1f}s, {len(scraper.scrapes)} scrapes")


def check_scrapes_during_run(scrapes: list[Scrape], topic: str, dispatchable: int) -> None:
    during = [s for s in scrapes if s.accounting(topic)[0] > 0 and s.accounting(topic)[2] > 0]
    assert len(during) >= 5, f"only {len(during)} of {len(scrapes)} scrapes saw tasks in flight"
    for s in scrapes:  # exact at every scrape: the observer applies each event atomically
        dispatched, finished, in_flight = s.accounting(topic)
        assert dispatched == finished + in_flight, (dispatched, finished, in_flight)
        assert dispatched <= dispatchable
    finished_counts = [s.accounting(topic)[1] for s in scrapes]
    assert finished_counts == sorted(finished_counts), "a counter went backwards"


def check_final_metrics(
    kafka: Kafka,
    base: str,
    topic: str,
    partitions: int,
    total: int,
    malformed: set[int],
    failing: set[int],
) -> None:
    final = scrape(base)
    dispatched = total - len(malformed)
    assert final.accounting(topic) == (dispatched, dispatched, 0)
    outcome = "ckb_tasks_finished_total"
    assert final.total(outcome, topic=topic, outcome="success") == dispatched - len(failing)
    assert final.total(outcome, topic=topic, outcome="failure") == len(failing)
    assert final.total("ckb_records_consumed_total", topic=topic) == total
    ends = kafka.end_offsets(topic)
    assert final.by_partition("ckb_committed_offset", topic) == ends
    assert final.by_partition("ckb_inflight_records", topic) == dict.fromkeys(ends, 0)
    # every DLQ record the metrics counted is on the DLQ topic, and nothing more
    dead = kafka.read_all(f"{topic}.dlq", len(malformed) + len(failing))
    reasons = Counter(dict(m.headers())["ckb.reason"].decode() for m in dead)
    assert reasons == {"decode_error": len(malformed), "task_failed": len(failing)}
    for reason, count in reasons.items():
        assert final.total("ckb_dlq_records_total", topic=topic, reason=reason) == count
    assert final.total("ckb_dlq_records_total", topic=topic) == len(dead)
    # each finished task's duration and record latency were observed
    durations = final.total("ckb_task_duration_seconds_count", topic=topic)
    assert durations == dispatched
    assert final.total("ckb_record_latency_seconds_count", topic=topic) == dispatched
    assert final.total("ckb_rebalances_total", event="assign") >= 1
    assert final.total("ckb_paused_partitions") == 0
    assert set(final.by_partition("ckb_oldest_inflight_age_seconds", topic).values()) == {0}


def check_status(
    bridge: BridgeProcess, base: str, kafka: Kafka, topic: str, partitions: int
) -> None:
    assert get(f"{base}/healthz")[0] == 200
    assert readyz(base) == 200
    code, body = get(f"{base}/status")
    assert code == 200
    report = json.loads(body)
    ends = kafka.end_offsets(topic)
    assert report["group"] == bridge.config["kafka"]["group_id"]
    states = {p["partition"]: p for p in report["partitions"] if p["topic"] == topic}
    assert set(states) == set(range(partitions))
    for p, state in states.items():
        assert (state["in_flight"], state["open"], state["paused"]) == (0, 0, False)
        assert state["committed"] == ends[p]
    rows = [row for row in ckb_status(bridge.config_path) if row["topic"] == topic]
    assert len(rows) == partitions
    for row in rows:
        assert row["committed"] == row["end"] == ends[row["partition"]]
        assert row["lag"] == 0
        assert (row["in_flight"], row["paused"]) == (0, False)  # from the bridge's /status


def check_readiness_follows(
    service: str,
    stop: Callable[[], None],
    start: Callable[[], None],
    base: str,
    unready_within: float,
    ready_within: float,
) -> None:
    """/readyz is 503 naming ``service`` while it is stopped, 200 again once it is back."""
    stop()
    try:
        wait_for(
            lambda: readyz(base) == 503, unready_within, f"/readyz 503 while {service} is down"
        )
        code, body = get(f"{base}/readyz")
        assert code == 503
        assert any(reason.startswith(service) for reason in json.loads(body)["reasons"])
        assert get(f"{base}/healthz")[0] == 200  # the loop still turns: alive, not ready
    finally:
        start()  # ALWAYS: the whole session shares this Redis and broker
    wait_for(lambda: readyz(base) == 200, ready_within, f"/readyz 200 after {service} is back")


def check_recovery(kafka: Kafka, base: str, topic: str, partitions: int, group: str) -> None:
    before = scrape(base).accounting(topic)[0]
    kafka.produce(topic, (json.dumps({"n": 10_000 + i}).encode() for i in range(30)))
    wait_for(
        lambda: kafka.committed(group, topic, partitions) == kafka.end_offsets(topic),
        90,
        "commits after Redis and Kafka came back",
        interval=0.5,
    )
    dispatched, finished, in_flight = scrape(base).accounting(topic)
    assert dispatched == finished == before + 30 and in_flight == 0
