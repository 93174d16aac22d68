"""The core path, run the same way on every broker/backend combination (issue 14).

Each scenario takes the session's ``StackInfo`` for the combination (``stack``,
``rabbitmq_stack``, ``postgres_stack``, …), a worker's queue on it and the combination's
``name`` (``"RabbitMQ/Redis"``: in the figures, and made into topic and group names):
records run and are committed after success, never ahead; failing tasks are dead-lettered
once; kill -9 of the bridge loses nothing.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bridge.stack import StackInfo
from tests.figures import figure
from tests.integration.harness import (
    Executions,
    Kafka,
    bridge_config,
    start_bridge,
    unique,
    wait_for,
)
from tests.integration.test_core_path import CommitProbe
from tests.integration.test_failure_path import dlq_messages


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def route(topic: str, queue: str, **extra: object) -> dict[str, object]:
    return {"topic": topic, "task": "it.record", "queue": queue, "call": "arg", **extra}


def runs_of(executions: Executions, topic: str) -> Counter[tuple[int, int]]:
    return Counter((run["ckb_partition"], run["ckb_offset"]) for run in executions.of(topic))


def committed_ahead(
    probe: CommitProbe, executions: Executions, topic: str
) -> list[tuple[int, int]]:
    """Offsets a sampled commit covered before their record's first run had finished."""
    finished_at: dict[tuple[int, int], float] = {}
    for run in executions.of(topic):
        key = (run["ckb_partition"], run["ckb_offset"])
        finished_at[key] = min(finished_at.get(key, run["end"]), run["end"])
    return [
        (p, offset)
        for read_at, sample in probe.samples
        for p, committed in sample.items()
        for offset in range(max(committed, 0))
        if finished_at.get((p, offset), float("inf")) > read_at
    ]


def commit_after_success_never_ahead(
    stack: StackInfo,
    kafka: Kafka,
    executions: Executions,
    queue: str,
    work_dir: Path,
    name: str,
    total: int,
    seed: int,
) -> None:
    partitions = 3
    topic = kafka.create_topic(partitions, prefix=f"{slug(name)}-core")
    group = unique(f"g-{slug(name)}-core")
    rng = random.Random(seed)
    values = (json.dumps({"n": i, "sleep_ms": rng.randint(0, 20)}).encode() for i in range(total))
    kafka.produce(topic, values, partition_of=lambda i: i % partitions)
    bridge = start_bridge(bridge_config(stack, group, [route(topic, queue)]), work_dir)
    started = time.monotonic()
    try:
        with CommitProbe(kafka, group, topic, partitions) as probe:
            wait_for(lambda: kafka.caught_up(group, topic, partitions), 120, "all committed")
        elapsed = time.monotonic() - started
    finally:
        exit_code = bridge.terminate()
    assert exit_code == 0, bridge.log_tail()

    done = runs_of(executions, topic)
    assert len(done) == total, f"{total - len(done)} records never ran"
    ahead = committed_ahead(probe, executions, topic)
    assert not ahead, f"committed past unfinished records: {ahead[:5]}"
    figure(
        f"{name} core path: {total} records, {partitions} partitions, {elapsed:.1f}s, "
        f"{total / elapsed:.0f} records/s, {sum(done.values()) - total} duplicate runs"
    )


def failing_tasks_dead_lettered(
    stack: StackInfo,
    kafka: Kafka,
    executions: Executions,
    queue: str,
    work_dir: Path,
    name: str,
) -> list[dict[str, Any]]:
    """60 records: every tenth fails for good (dead-lettered once), others fail once and then
    succeed; returns the dead letters for the caller's own checks."""
    total = 60
    topic = kafka.create_topic(2, prefix=f"{slug(name)}-fail")
    group = unique(f"g-{slug(name)}-fail")

    def value(n: int) -> bytes:
        mode = "always_fail" if n % 10 == 3 else "fail_once" if n % 10 == 7 else "ok"
        return json.dumps({"n": n, "mode": mode}).encode()

    kafka.produce(topic, (value(n) for n in range(total)), partition_of=lambda n: n % 2)
    bridge = start_bridge(bridge_config(stack, group, [route(topic, queue)]), work_dir)
    try:
        wait_for(lambda: kafka.caught_up(group, topic, 2), 90, "all committed")
    finally:
        exit_code = bridge.terminate()
    assert exit_code == 0, bridge.log_tail()

    always = {n for n in range(total) if n % 10 == 3}
    dead = dlq_messages(kafka, f"{topic}.dlq")
    failed = sorted(json.loads(d["value"])["n"] for d in dead)  # type: ignore[arg-type]
    assert failed == sorted(always), "each failing record dead-lettered exactly once"
    assert {d["headers"]["ckb.reason"] for d in dead} == {b"task_failed"}  # type: ignore[index]
    ran = {run["payload"]["n"] for run in executions.of(topic)}
    assert ran == set(range(total)) - always, "the others (fail-once too) succeeded"
    return dead


def kill_9_loses_nothing(
    stack: StackInfo,
    kafka: Kafka,
    executions: Executions,
    queue: str,
    work_dir: Path,
    name: str,
    total: int,
) -> int:
    """kill -9 of the bridge a third of the way through, then a second bridge: nothing
    committed ahead at the kill, nothing lost in the end; returns the duplicate runs."""
    partitions = 2
    topic = kafka.create_topic(partitions, prefix=f"{slug(name)}-kill")
    values = (json.dumps({"n": n, "sleep_ms": 10}).encode() for n in range(total))
    kafka.produce(topic, values, partition_of=lambda n: n % partitions)
    # a killed member's partitions move after its session timeout: keep it short
    consumer = {"session.timeout.ms": "6000", "heartbeat.interval.ms": "1000"}
    routes = [route(topic, queue, max_in_flight=50)]
    group = unique(f"g-{slug(name)}-kill")
    config = bridge_config(stack, group, routes, kafka={"consumer": consumer})
    first = start_bridge(config, work_dir, "first")
    try:
        wait_for(lambda: executions.count(topic) >= total // 3, 60, "a third of the records")
        os.kill(first.process.pid, signal.SIGKILL)
        first.process.wait(10)
    finally:
        first.kill()
    committed = kafka.committed(group, topic, partitions)
    finished = runs_of(executions, topic)  # read after the commits: only more can finish
    for p, offset in committed.items():
        unfinished = [o for o in range(max(offset, 0)) if (p, o) not in finished]
        assert not unfinished, f"partition {p} committed {offset} ahead of {unfinished[:5]}"
    assert sum(max(o, 0) for o in committed.values()) < total, "killed before the end"

    second = start_bridge(config, work_dir, "second")
    try:
        wait_for(lambda: kafka.caught_up(group, topic, partitions), 90, "all committed")
    finally:
        assert second.terminate() == 0, second.log_tail()
    runs = runs_of(executions, topic)
    assert len(runs) == total, f"{total - len(runs)} records lost"
    duplicates = sum(runs.values()) - total
    figure(f"{name} kill -9: {total} records, {duplicates} duplicate runs")
    return duplicates
