"""The core path with RabbitMQ as the Celery broker and Redis as the result backend.

A real rabbitmq-server (the session's ``rabbitmq_node``), real Celery workers consuming from
it, the bridge publishing to it with publisher confirms: records run and are committed after
success, never ahead; failures are dead-lettered; kill -9 of the bridge loses nothing; a
publish RabbitMQ refuses (nack) is never counted as sent.
"""

from __future__ import annotations

import json
import os
import random
import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import kombu
import kombu.exceptions
import pytest

from bridge.stack import StackInfo
from bridge.stack.rabbitmq import RabbitNode
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
from tests.integration.test_failure_path import dlq_messages


@pytest.fixture(scope="module")
def queue() -> str:
    return unique("q-rabbit")


@pytest.fixture(scope="module")
def rabbit_worker(
    rabbitmq_stack: StackInfo, queue: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Worker]:
    worker = start_worker(rabbitmq_stack, queue, tmp_path_factory.mktemp("rabbit-worker"), 8)
    yield worker
    worker.stop()


def route(topic: str, queue: str, **extra: object) -> dict[str, object]:
    return {"topic": topic, "task": "it.record", "queue": queue, "call": "arg", **extra}


def depth(url: str, queue: str) -> int:
    """Messages ready in ``queue`` (0 while it does not exist)."""
    with kombu.Connection(url) as connection:
        try:
            return int(connection.default_channel.queue_declare(queue, passive=True).message_count)
        except kombu.exceptions.ChannelError:
            return 0


def runs_of(executions: Executions, topic: str) -> Counter[tuple[int, int]]:
    return Counter((run["ckb_partition"], run["ckb_offset"]) for run in executions.of(topic))


def test_records_run_and_commit_after_success_never_ahead(
    rabbitmq_stack: StackInfo,
    kafka: Kafka,
    executions: Executions,
    rabbit_worker: Worker,
    queue: str,
    work_dir: Path,
) -> None:
    partitions, total = 3, 1500
    topic = kafka.create_topic(partitions, prefix="rmq-core")
    group = unique("g-rmq-core")
    rng = random.Random(3)
    values = (json.dumps({"n": i, "sleep_ms": rng.randint(0, 20)}).encode() for i in range(total))
    kafka.produce(topic, values, partition_of=lambda i: i % partitions)
    config = bridge_config(rabbitmq_stack, group, [route(topic, queue)])
    assert config["celery"]["broker_url"].startswith("amqp://")
    bridge = start_bridge(config, work_dir)
    started = time.monotonic()
    try:
        with CommitProbe(kafka, group, topic, partitions) as probe:
            wait_for(lambda: kafka.caught_up(group, topic, partitions), 120, "all committed")
        elapsed = time.monotonic() - started
    finally:
        exit_code = bridge.terminate()
    assert exit_code == 0, bridge.log_tail()

    runs = executions.of(topic)
    done = runs_of(executions, topic)
    assert len(done) == total, f"{total - len(done)} records never ran"
    finished_at: dict[tuple[int, int], float] = {}
    for run in runs:
        key = (run["ckb_partition"], run["ckb_offset"])
        finished_at[key] = min(finished_at.get(key, run["end"]), run["end"])
    ahead = [
        (p, offset)
        for read_at, sample in probe.samples
        for p, committed in sample.items()
        for offset in range(max(committed, 0))
        if finished_at.get((p, offset), float("inf")) > read_at
    ]
    assert not ahead, f"committed past unfinished records: {ahead[:5]}"
    figure(
        f"RabbitMQ/Redis core path: {total} records, {partitions} partitions, {elapsed:.1f}s, "
        f"{total / elapsed:.0f} records/s, {sum(done.values()) - total} duplicate runs"
    )


def test_a_failing_task_is_dead_lettered(
    rabbitmq_stack: StackInfo,
    kafka: Kafka,
    executions: Executions,
    rabbit_worker: Worker,
    queue: str,
    work_dir: Path,
) -> None:
    total = 60
    topic = kafka.create_topic(2, prefix="rmq-fail")
    group = unique("g-rmq-fail")

    def value(n: int) -> bytes:
        mode = "always_fail" if n % 10 == 3 else "fail_once" if n % 10 == 7 else "ok"
        return json.dumps({"n": n, "mode": mode}).encode()

    kafka.produce(topic, (value(n) for n in range(total)), partition_of=lambda n: n % 2)
    bridge = start_bridge(bridge_config(rabbitmq_stack, group, [route(topic, queue)]), work_dir)
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


def test_kill_9_of_the_bridge_loses_nothing_and_never_commits_ahead(
    rabbitmq_stack: StackInfo,
    kafka: Kafka,
    executions: Executions,
    rabbit_worker: Worker,
    queue: str,
    work_dir: Path,
) -> None:
    partitions, total = 2, 600
    topic = kafka.create_topic(partitions, prefix="rmq-kill")
    values = (json.dumps({"n": n, "sleep_ms": 10}).encode() for n in range(total))
    kafka.produce(topic, values, partition_of=lambda n: n % partitions)
    # a killed member's partitions move after its session timeout: keep it short
    consumer = {"session.timeout.ms": "6000", "heartbeat.interval.ms": "1000"}
    routes = [route(topic, queue, max_in_flight=50)]
    group = unique("g-rmq-kill")
    config = bridge_config(rabbitmq_stack, group, routes, kafka={"consumer": consumer})
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
    figure(f"RabbitMQ/Redis kill -9: {total} records, {sum(runs.values()) - total} duplicate runs")


def test_a_publish_rabbitmq_refuses_is_not_counted_as_sent(
    rabbitmq_stack: StackInfo,
    rabbitmq_node: RabbitNode,
    kafka: Kafka,
    executions: Executions,
    work_dir: Path,
) -> None:
    """A full queue that rejects publishes (overflow reject-publish) nacks them: with publisher
    confirms the bridge keeps those records and sends them again once there is room; without,
    RabbitMQ drops them silently and they would wait for their task_timeout."""
    total, capacity = 40, 5
    queue = unique("q-rmq-full")
    policy = {"max-length": capacity, "overflow": "reject-publish"}
    rabbitmq_node.ctl("set_policy", "--apply-to", "queues", queue, f"^{queue}$", json.dumps(policy))
    topic = kafka.create_topic(1, prefix="rmq-nack")
    kafka.produce(topic, (json.dumps({"n": n}).encode() for n in range(total)))
    routes = [route(topic, queue, task_timeout=300)]
    config = bridge_config(rabbitmq_stack, unique("g-rmq-nack"), routes)
    group = config["kafka"]["group_id"]
    bridge = start_bridge(config, work_dir)
    worker: Worker | None = None
    try:
        wait_for(lambda: depth(rabbitmq_node.url, queue) >= capacity, 30, "the queue full")
        time.sleep(2)  # the bridge meets the full queue: RabbitMQ refuses the rest
        (work_dir / "worker").mkdir()
        worker = start_worker(rabbitmq_stack, queue, work_dir / "worker", concurrency=4)
        wait_for(lambda: kafka.caught_up(group, topic, 1), 60, "all committed")
    finally:
        exit_code = bridge.terminate()
        if worker is not None:
            worker.stop()
        rabbitmq_node.ctl("clear_policy", queue)
    assert exit_code == 0, bridge.log_tail()
    assert "MessageNacked" in bridge.log_tail(20000), "RabbitMQ refused publishes"
    assert {run["payload"]["n"] for run in executions.of(topic)} == set(range(total))
