"""Batch tasks (issue 13) with a real bridge, Kafka, Redis and Celery worker."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bridge.stack import StackInfo
from tests.integration.harness import (
    SHARED_QUEUE,
    Executions,
    Kafka,
    Worker,
    bridge_config,
    start_bridge,
    unique,
    wait_for,
)


def route(topic: str, **batch: Any) -> dict[str, Any]:
    return {
        "topic": topic,
        "task": "it.batch",
        "queue": SHARED_QUEUE,
        "batch": {"max_records": 10, "max_wait": 0.5, **batch},
    }


def values(count: int, **extra: Any) -> list[bytes]:
    return [json.dumps({"n": n, **extra}).encode() for n in range(count)]


def run_until_committed(
    stack: StackInfo, kafka: Kafka, work_dir: Path, routes: list[dict[str, Any]], partitions: int
) -> None:
    config = bridge_config(stack, unique("g-batch"), routes)
    bridge = start_bridge(config, work_dir)
    group = config["kafka"]["group_id"]
    try:
        for r in routes:
            wait_for(
                lambda t=r["topic"]: kafka.caught_up(group, t, partitions),  # type: ignore[misc]
                90,
                f"{r['topic']} committed",
            )
        assert bridge.alive(), bridge.log_tail()
    finally:
        code = bridge.terminate()
    assert code == 0, bridge.log_tail()


def test_batches_carry_their_records_in_order_with_their_coordinates(
    stack: StackInfo, kafka: Kafka, executions: Executions, shared_worker: Worker, work_dir: Path
) -> None:
    topic = kafka.create_topic(2, prefix="batch")
    kafka.produce(topic, values(45), partition_of=lambda i: i % 2)
    run_until_committed(stack, kafka, work_dir, [route(topic)], 2)
    runs = executions.of(topic)
    by_partition: dict[int, list[dict[str, Any]]] = {}
    for run in sorted(runs, key=lambda r: (r["ckb_partition"], r["ckb_batch_first_offset"])):
        by_partition.setdefault(run["ckb_partition"], []).append(run)
        assert 1 <= run["ckb_batch_size"] <= 10
        assert run["ckb_batch_size"] == len(run["payloads"])
        span = run["ckb_batch_last_offset"] - run["ckb_batch_first_offset"] + 1
        assert span == run["ckb_batch_size"], "consecutive records"
    for partition, batches in by_partition.items():
        numbers = [p["n"] for run in batches for p in run["payloads"]]
        assert numbers == [n for n in range(45) if n % 2 == partition], "each record once, in order"
    # a backlog makes full batches: 23 and 22 records -> 3 batches of 10, then the rest
    assert sorted(run["ckb_batch_size"] for run in runs).count(10) == 4


def test_under_light_traffic_a_batch_goes_after_max_wait(
    stack: StackInfo, kafka: Kafka, executions: Executions, shared_worker: Worker, work_dir: Path
) -> None:
    topic = kafka.create_topic(1, prefix="batch-wait")
    config = bridge_config(stack, unique("g-batch"), [route(topic, max_records=100, max_wait=1.0)])
    bridge = start_bridge(config, work_dir)
    try:
        kafka.produce(topic, values(3))
        wait_for(lambda: executions.count(topic) >= 1, 30, "the partial batch to run")
        (run,) = executions.of(topic)
        assert run["ckb_batch_size"] == 3, "three records waited together for max_wait"
    finally:
        assert bridge.terminate() == 0, bridge.log_tail()


def test_a_failed_batch_dead_letters_each_of_its_records_once(
    stack: StackInfo, kafka: Kafka, executions: Executions, shared_worker: Worker, work_dir: Path
) -> None:
    topic = kafka.create_topic(1, prefix="batch-fail")
    records = [*values(4), json.dumps({"n": 4, "mode": "always_fail"}).encode()]
    records.append(b"{not json")  # dead-lettered alone, as decode_error
    kafka.produce(topic, records)
    run_until_committed(stack, kafka, work_dir, [route(topic, max_records=6)], 1)
    letters = kafka.read_all(f"{topic}.dlq", 6, timeout=30)
    assert len(letters) == 6
    by_offset = {m.offset(): dict(m.headers()) for m in letters}
    reasons = sorted(
        (int(h["ckb.original.offset"]), h["ckb.reason"].decode()) for h in by_offset.values()
    )
    assert reasons == [(0, "task_failed"), (1, "task_failed"), (2, "task_failed"),
                       (3, "task_failed"), (4, "task_failed"), (5, "decode_error")]  # fmt: skip
    failed = [h for h in by_offset.values() if h["ckb.reason"] == b"task_failed"]
    assert {h["ckb.batch.task.id"] for h in failed} == {failed[0]["ckb.task.id"]}
    assert {h["ckb.batch.size"] for h in failed} == {b"5"}
    assert executions.count(topic) == 0, "the batch failed: no run recorded"


def test_kill_9_mid_batch_redelivers_and_never_commits_ahead(
    stack: StackInfo, kafka: Kafka, executions: Executions, shared_worker: Worker, work_dir: Path
) -> None:
    topic = kafka.create_topic(1, prefix="batch-kill")
    kafka.produce(topic, values(40, sleep_ms=100))  # 1 s per batch of 10
    routes = [{**route(topic), "ordering": "partition"}]
    # a killed member's partitions move after its session timeout: keep it short
    consumer = {"session.timeout.ms": "6000", "heartbeat.interval.ms": "1000"}
    config = bridge_config(stack, unique("g-batch"), routes, kafka={"consumer": consumer})
    group = config["kafka"]["group_id"]
    first = start_bridge(config, work_dir, "first")
    try:
        wait_for(lambda: executions.count(topic) >= 1, 60, "a first batch to finish")
    finally:
        first.kill()
    done = sum(len(run["payloads"]) for run in executions.of(topic))
    committed = kafka.committed(group, topic, 1)[0]
    assert committed <= done, f"committed {committed} with only {done} records run"
    second = start_bridge(config, work_dir, "second")
    try:
        wait_for(lambda: kafka.caught_up(group, topic, 1), 90, f"{topic} committed")
    finally:
        assert second.terminate() == 0, second.log_tail()
    ran = [p["n"] for run in executions.of(topic) for p in run["payloads"]]
    assert sorted(set(ran)) == list(range(40)), "every record ran"
    assert len(ran) - 40 <= 10, "at most the batch in flight at the kill ran twice"
