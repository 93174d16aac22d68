"""Slow but healthy workers, and a worker pool that stops for a while (issue 12).

A backlog ten times what the workers finish within ``task_timeout``: the bridge must keep
only a few seconds of work queued ahead of them, never take a task still waiting in the queue
for a lost one, dead-letter nothing, run (almost) nothing twice, and commit everything, never
ahead of finished work.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer

from bridge.stack import StackInfo
from tests.figures import figure
from tests.integration.harness import (
    Executions,
    Kafka,
    Worker,
    bridge_config,
    start_bridge,
    start_worker,
    unique,
    wait_for,
)
from tests.integration.test_core_path import CommitProbe

pytestmark = pytest.mark.integration

#: each task sleeps this long; two worker processes: 40 tasks/s at best
SLEEP_MS = 50
CONCURRENCY = 2
TASK_TIMEOUT = 3.0


def dead_letters(kafka: Kafka, topic: str) -> int:
    """Records in ``topic``'s dead-letter topic (0 when the bridge never created it)."""
    probe = Consumer({"bootstrap.servers": kafka.bootstrap, "group.id": unique("dlq-probe")})
    try:
        exists = f"{topic}.dlq" in probe.list_topics(timeout=10).topics
    finally:
        probe.close()
    return sum(kafka.end_offsets(f"{topic}.dlq").values()) if exists else 0


def never_ahead(probe: CommitProbe, runs: list[dict[str, object]]) -> list[tuple[int, int, int]]:
    finished_at: dict[tuple[object, object], float] = {}
    for run in runs:
        key = (run["ckb_partition"], run["ckb_offset"])
        end = float(run["end"])  # type: ignore[arg-type]
        finished_at[key] = min(finished_at.get(key, end), end)
    return [
        (p, offset, committed)
        for read_at, sample in probe.samples
        for p, committed in sample.items()
        for offset in range(max(committed, 0))
        if finished_at.get((p, offset), float("inf")) > read_at
    ]


def per_record(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Runs as one per record: a batch task's line stands for each of its records (its
    records are consecutive: nothing in these tests fails to decode)."""
    records = []
    for run in runs:
        if "payloads" not in run:
            records.append(run)
            continue
        first, last = run["ckb_batch_first_offset"], run["ckb_batch_last_offset"]
        assert last - first + 1 == len(run["payloads"]) == run["ckb_batch_size"], run
        for i, payload in enumerate(run["payloads"]):
            records.append(
                {"payload": payload, "ckb_partition": run["ckb_partition"],
                 "ckb_offset": first + i, "end": run["end"]}
            )  # fmt: skip
    return records


def run_backlog(
    stack: StackInfo,
    kafka: Kafka,
    executions: Executions,
    work_dir: Path,
    total: int,
    pause_workers_for: float = 0.0,
    batch: dict[str, Any] | None = None,
) -> tuple[float, int, int]:
    """Run ``total`` slow records through one bridge and a small worker pool; optionally stop
    the pool once a sixth is done and start it again ``pause_workers_for`` seconds later;
    with ``batch``, as batch tasks. Returns (seconds, duplicate runs, dead letters)."""
    partitions = 3
    topic = kafka.create_topic(partitions)
    group, queue = unique("g-slow"), unique("q-slow")
    values = (json.dumps({"n": n, "sleep_ms": SLEEP_MS}).encode() for n in range(total))
    kafka.produce(topic, values, partition_of=lambda n: n % partitions)
    route = {
        "topic": topic, "task": "it.record", "queue": queue,
        "task_timeout": TASK_TIMEOUT, "max_redispatch": 2,
    }  # fmt: skip
    if batch is not None:
        route.update(task="it.batch", batch=batch)
    worker: Worker | None = start_worker(stack, queue, work_dir, concurrency=CONCURRENCY)
    bridge = start_bridge(bridge_config(stack, group, [route]), work_dir)
    started = time.monotonic()
    try:
        with CommitProbe(kafka, group, topic, partitions) as probe:
            if pause_workers_for:
                wait_for(lambda: executions.count(topic) >= total // 6, 120, "a sixth done")
                assert worker is not None
                worker.stop()
                stopped = time.monotonic()
                worker = None
                wait_for(
                    lambda: time.monotonic() - stopped >= pause_workers_for,
                    pause_workers_for + 5,
                    "the pool to stay down",
                    interval=0.2,
                )
                assert bridge.alive(), bridge.log_tail()
                (work_dir / "again").mkdir()
                worker = start_worker(stack, queue, work_dir / "again", concurrency=CONCURRENCY)
            wait_for(
                lambda: kafka.caught_up(group, topic, partitions),
                total / 10 + 120,
                "every record committed",
                interval=0.5,
            )
        elapsed = time.monotonic() - started
    finally:
        exit_code = bridge.terminate()
        if worker is not None:
            worker.stop()
    assert exit_code == 0, bridge.log_tail()
    runs = per_record(executions.of(topic))
    done = Counter(run["payload"]["n"] for run in runs)
    assert set(done) == set(range(total)), f"{total - len(done)} records never ran"
    ahead = never_ahead(probe, runs)
    assert not ahead, f"committed past unfinished records: {ahead[:5]}"
    return elapsed, sum(done.values()) - total, dead_letters(kafka, topic)


def test_a_backlog_ten_times_what_workers_finish_in_task_timeout_is_not_dead_lettered(
    stack: StackInfo, kafka: Kafka, executions: Executions, work_dir: Path
) -> None:
    rate = CONCURRENCY * 1000 / SLEEP_MS  # tasks/s the pool can finish at best
    total = int(10 * rate * TASK_TIMEOUT)
    elapsed, duplicates, dlq = run_backlog(stack, kafka, executions, work_dir, total)
    figure(
        f"slow workers: {total} records, backlog {total / (rate * TASK_TIMEOUT):.0f}x what "
        f"the pool finishes in task_timeout; {elapsed:.1f}s (ideal {total / rate:.0f}s), "
        f"{dlq} dead letters, {duplicates} duplicate runs"
    )
    assert dlq == 0
    assert duplicates < total / 100


def test_a_worker_pool_stopped_for_twice_task_timeout_loses_and_dead_letters_nothing(
    stack: StackInfo, kafka: Kafka, executions: Executions, work_dir: Path
) -> None:
    rate = CONCURRENCY * 1000 / SLEEP_MS
    total = int(10 * rate * TASK_TIMEOUT)
    elapsed, duplicates, dlq = run_backlog(
        stack, kafka, executions, work_dir, total, pause_workers_for=2 * TASK_TIMEOUT
    )
    figure(
        f"slow workers stopped {2 * TASK_TIMEOUT:.0f}s mid-run: {total} records, "
        f"{elapsed:.1f}s, {dlq} dead letters, {duplicates} duplicate runs"
    )
    assert dlq == 0
    assert duplicates < total / 100


def test_batch_tasks_behind_slow_workers_are_not_dead_lettered(
    stack: StackInfo, kafka: Kafka, executions: Executions, work_dir: Path
) -> None:
    """The same backlog as batch tasks of ten records: one task takes ten times as long,
    so ``task_timeout`` (3 s) is six batch run times; still nothing is declared lost."""
    rate = CONCURRENCY * 1000 / SLEEP_MS  # records/s the pool can finish at best
    total = int(10 * rate * TASK_TIMEOUT)
    elapsed, duplicates, dlq = run_backlog(
        stack, kafka, executions, work_dir, total, batch={"max_records": 10, "max_wait": 0.5}
    )
    figure(
        f"slow workers, batches of 10: {total} records, {elapsed:.1f}s "
        f"(ideal {total / rate:.0f}s), {dlq} dead letters, {duplicates} duplicate runs"
    )
    assert dlq == 0
    assert duplicates < total / 100
