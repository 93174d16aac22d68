"""Scale-out and rebalances on real services: several `ckb run` processes in one group."""

from __future__ import annotations

import itertools
import json
import os
import random
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from bridge.stack import StackInfo
from tests.figures import figure
from tests.integration.harness import (
    SHARED_QUEUE,
    BridgeProcess,
    Executions,
    Kafka,
    Worker,
    bridge_config,
    start_bridge,
    start_worker,
    unique,
    wait_for,
)

PROTOCOLS = {
    # classic protocol, incremental cooperative rebalancing
    "cooperative-sticky": {"session.timeout.ms": 6000, "heartbeat.interval.ms": 1000},
    # KIP-848: the broker assigns; session timeouts are broker-side
    "consumer": {"group.protocol": "consumer"},
}


def produce_numbered(kafka: Kafka, topic: str, total: int, partitions: int, seed: int) -> None:
    rng = random.Random(seed)
    values = (json.dumps({"n": n, "sleep_ms": rng.randint(0, 30)}).encode() for n in range(total))
    kafka.produce(topic, values, partition_of=lambda n: n % partitions)


def run_counts(executions: Executions, topic: str) -> Counter[tuple[int, int]]:
    return Counter((r["ckb_partition"], r["ckb_offset"]) for r in executions.of(topic))


def group_config(stack: StackInfo, group: str, topic: str, protocol: str) -> dict[str, Any]:
    route = {"topic": topic, "task": "it.record", "queue": SHARED_QUEUE, "max_in_flight": 50}
    return bridge_config(
        stack,
        group,
        [route],
        kafka={"consumer": PROTOCOLS[protocol], "commit_interval": 0.5},
        limits={"revoke_grace": 20, "shutdown_grace": 30},
    )


@pytest.mark.parametrize("protocol", list(PROTOCOLS))
def test_instances_join_and_leave_with_zero_duplicates(
    protocol: str,
    stack: StackInfo,
    kafka: Kafka,
    executions: Executions,
    shared_worker: Worker,
    work_dir: Path,
) -> None:
    partitions, total = 12, 20_000
    topic = kafka.create_topic(partitions)
    group = unique(f"g-scale-{protocol}")
    produce_numbered(kafka, topic, total, partitions, seed=3)
    config = group_config(stack, group, topic, protocol)
    started = time.monotonic()
    running: list[BridgeProcess] = [start_bridge(config, work_dir, "b1")]
    exit_codes: list[int] = []

    def progress(fraction: float) -> None:
        wait_for(lambda: executions.count(topic) >= total * fraction, 240, f"{fraction:.0%}")

    try:
        progress(0.05)
        running.append(start_bridge(config, work_dir, "b2"))
        progress(0.15)
        running.append(start_bridge(config, work_dir, "b3"))
        progress(0.35)
        exit_codes.append(running.pop(0).terminate())  # b1 leaves cleanly
        progress(0.5)
        running.append(start_bridge(config, work_dir, "b4"))
        progress(0.7)
        exit_codes.append(running.pop(0).terminate())  # b2 leaves cleanly
        wait_for(lambda: kafka.caught_up(group, topic, partitions), 300, "all commits")
    finally:
        exit_codes.extend(bridge.terminate() for bridge in running)
    elapsed = time.monotonic() - started
    assert exit_codes == [0, 0, 0, 0]

    runs = run_counts(executions, topic)
    missing = total - len(runs)
    duplicates = sum(n - 1 for n in runs.values())
    figure(
        f"scale-out ({protocol}): {total} records, 12 partitions, 4 instances joined/left, "
        f"{elapsed:.1f}s, {total / elapsed:.0f} records/s, {duplicates} duplicate runs"
    )
    assert missing == 0, f"{missing} records never ran"
    assert duplicates == 0, f"duplicate executions after clean stops: {duplicates}"


def test_kill_9_of_an_instance_loses_nothing(
    stack: StackInfo, kafka: Kafka, executions: Executions, shared_worker: Worker, work_dir: Path
) -> None:
    partitions, total, window = 6, 6000, 50
    topic = kafka.create_topic(partitions)
    group = unique("g-kill9")
    produce_numbered(kafka, topic, total, partitions, seed=5)
    config = group_config(stack, group, topic, "cooperative-sticky")
    survivor = start_bridge(config, work_dir, "survivor")
    victim = start_bridge(config, work_dir, "victim")
    try:
        wait_for(lambda: executions.count(topic) >= total // 3, 180, "a third of the records")
        os.kill(victim.process.pid, signal.SIGKILL)
        victim.process.wait(10)
        wait_for(lambda: kafka.caught_up(group, topic, partitions), 240, "all commits")
    finally:
        victim.kill()
        exit_code = survivor.terminate()
    assert exit_code == 0, survivor.log_tail()
    runs = run_counts(executions, topic)
    duplicates = sum(n - 1 for n in runs.values())
    figure(f"kill -9: {total} records, {duplicates} duplicate runs (window {window}/partition)")
    assert len(runs) == total, f"{total - len(runs)} records lost"
    # at most the killed instance's in-flight window (it owned at most all partitions)
    assert duplicates <= window * partitions


def ordering_worker(stack: StackInfo, work_dir: Path) -> tuple[Worker, str]:
    queue = unique("q-order")
    worker = start_worker(stack, queue, work_dir, concurrency=24, pool="threads")
    return worker, queue


def run_mode(
    stack: StackInfo, kafka: Kafka, executions: Executions, work_dir: Path, queue: str, mode: str
) -> tuple[float, list[dict[str, Any]]]:
    partitions, total, keys = 4, 1200, 40
    topic = kafka.create_topic(partitions)
    group = unique(f"g-{mode}")
    kafka.produce(
        topic,
        (json.dumps({"n": n, "sleep_ms": 25}).encode() for n in range(total)),
        keys=[f"key-{n % keys}".encode() for n in range(total)],
        partition_of=lambda n: (n % keys) % partitions,
    )
    route = {"topic": topic, "task": "it.record", "queue": queue, "ordering": mode}
    bridge = start_bridge(bridge_config(stack, group, [route]), work_dir, mode)
    try:
        wait_for(lambda: executions.count(topic) >= 1, 60, "the first run")
        started = time.monotonic()
        wait_for(lambda: kafka.caught_up(group, topic, partitions), 240, f"{mode} commits")
        elapsed = time.monotonic() - started
    finally:
        exit_code = bridge.terminate()
    assert exit_code == 0, bridge.log_tail()
    runs = executions.of(topic)
    assert len({(r["ckb_partition"], r["ckb_offset"]) for r in runs}) == total
    return total / elapsed, runs


def max_overlap(runs: list[dict[str, Any]]) -> int:
    """The most executions that were running at the same moment."""
    edges = sorted([(r["start"], 1) for r in runs] + [(r["end"], -1) for r in runs])
    running = peak = 0
    for _, step in edges:
        running += step
        peak = max(peak, running)
    return peak


def test_key_mode_orders_per_key_and_runs_more_at_once_than_partition_mode(
    stack: StackInfo, kafka: Kafka, executions: Executions, work_dir: Path
) -> None:
    worker, queue = ordering_worker(stack, work_dir)
    try:
        key_rate, runs = run_mode(stack, kafka, executions, work_dir, queue, "key")
        partition_rate, partition_runs = run_mode(
            stack, kafka, executions, work_dir, queue, "partition"
        )
    finally:
        worker.stop()

    by_key: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        by_key.setdefault(run["ckb_key"], []).append(run)
    for key, key_runs in by_key.items():
        key_runs.sort(key=lambda r: r["start"])
        offsets = [r["ckb_offset"] for r in key_runs]
        assert offsets == sorted(offsets), f"{key}: ran out of offset order"
        for before, after in itertools.pairwise(key_runs):
            assert before["end"] <= after["start"], f"{key}: two records overlapped"
    per_partition: dict[int, list[dict[str, Any]]] = {}
    for run in partition_runs:
        per_partition.setdefault(run["ckb_partition"], []).append(run)
    for p_runs in per_partition.values():
        p_runs.sort(key=lambda r: r["start"])
        for before, after in itertools.pairwise(p_runs):
            assert before["end"] <= after["start"], "partition mode ran two at once"
    key_overlap, partition_overlap = max_overlap(runs), max_overlap(partition_runs)
    figure(
        f"ordering: key mode {key_rate:.0f} records/s (up to {key_overlap} at once), "
        f"partition mode {partition_rate:.0f}/s (up to {partition_overlap} at once)"
    )
    # the structural reason key mode is faster, not a timing: more records run at once
    assert partition_overlap <= 4  # one per partition
    assert key_overlap > 4


def test_tasks_longer_than_max_poll_interval_cause_no_rebalance(
    stack: StackInfo, kafka: Kafka, executions: Executions, shared_worker: Worker, work_dir: Path
) -> None:
    topic = kafka.create_topic(1)
    group = unique("g-long")
    kafka.produce(topic, [json.dumps({"n": n, "sleep_ms": 21_000}).encode() for n in range(2)])
    route = {"topic": topic, "task": "it.record", "queue": SHARED_QUEUE, "task_timeout": 120}
    consumer = {"max.poll.interval.ms": 7000, **PROTOCOLS["cooperative-sticky"]}
    config = bridge_config(stack, group, [route], kafka={"consumer": consumer})
    bridge = start_bridge(config, work_dir)
    try:
        wait_for(lambda: kafka.caught_up(group, topic, 1), 90, "the long tasks to commit")
    finally:
        exit_code = bridge.terminate()
    assert exit_code == 0, bridge.log_tail()
    log = bridge.log_tail(100_000)
    assert log.count("assigned") == 1, log
    assert "lost" not in log and log.count("revoked") == 1  # the one revoke is the shutdown
    assert executions.count(topic) == 2
