"""The core path with RabbitMQ as the Celery broker and Redis as the result backend.

A real rabbitmq-server (the session's ``rabbitmq_node``), real Celery workers consuming from
it, the bridge publishing to it with publisher confirms: records run and are committed after
success, never ahead; failures are dead-lettered; kill -9 of the bridge loses nothing; a
publish RabbitMQ refuses (nack) is never counted as sent.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import kombu
import kombu.exceptions
import pytest

from bridge.stack import StackInfo
from bridge.stack.rabbitmq import RabbitNode
from tests.integration import core_scenarios as core
from tests.integration.core_scenarios import route

# test_rpc_backend and test_sentinel import it from here
from tests.integration.core_scenarios import runs_of as runs_of
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

NAME = "RabbitMQ/Redis"


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


def depth(url: str, queue: str) -> int:
    """Messages ready in ``queue`` (0 while it does not exist)."""
    with kombu.Connection(url) as connection:
        try:
            return int(connection.default_channel.queue_declare(queue, passive=True).message_count)
        except kombu.exceptions.ChannelError:
            return 0


def test_records_run_and_commit_after_success_never_ahead(
    rabbitmq_stack: StackInfo,
    kafka: Kafka,
    executions: Executions,
    rabbit_worker: Worker,
    queue: str,
    work_dir: Path,
) -> None:
    assert bridge_config(rabbitmq_stack, "g", [])["celery"]["broker_url"].startswith("amqp://")
    core.commit_after_success_never_ahead(
        rabbitmq_stack, kafka, executions, queue, work_dir, NAME, total=1500, seed=3
    )


def test_a_failing_task_is_dead_lettered(
    rabbitmq_stack: StackInfo,
    kafka: Kafka,
    executions: Executions,
    rabbit_worker: Worker,
    queue: str,
    work_dir: Path,
) -> None:
    core.failing_tasks_dead_lettered(rabbitmq_stack, kafka, executions, queue, work_dir, NAME)


def test_kill_9_of_the_bridge_loses_nothing_and_never_commits_ahead(
    rabbitmq_stack: StackInfo,
    kafka: Kafka,
    executions: Executions,
    rabbit_worker: Worker,
    queue: str,
    work_dir: Path,
) -> None:
    core.kill_9_loses_nothing(rabbitmq_stack, kafka, executions, queue, work_dir, NAME, 600)


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


def test_a_task_message_over_rabbitmq_s_max_message_size_is_dead_lettered_alone(
    rabbitmq_stack: StackInfo,
    rabbitmq_node: RabbitNode,
    kafka: Kafka,
    executions: Executions,
    rabbit_worker: Worker,
    queue: str,
    work_dir: Path,
) -> None:
    """RabbitMQ closes the channel on a message over its ``max_message_size`` (16 MiB by
    default from RabbitMQ 4, 128 MiB before): that record is dead-lettered with the limit named,
    the records around it run, and the partition goes on (it used to be retried forever)."""
    limit = 256 * 1024
    rabbitmq_node.ctl("eval", f"application:set_env(rabbit, max_message_size, {limit}).")
    try:
        topic = kafka.create_topic(1, prefix="rmq-big")
        big = json.dumps({"n": 5, "blob": "x" * (2 * limit)}).encode()
        values = [json.dumps({"n": n}).encode() if n != 5 else big for n in range(11)]
        kafka.produce(topic, values)
        config = bridge_config(rabbitmq_stack, unique("g-rmq-big"), [route(topic, queue)])
        config["routes"][0]["max_payload_bytes"] = 4 * limit
        group = config["kafka"]["group_id"]
        bridge = start_bridge(config, work_dir)
        try:
            wait_for(lambda: kafka.caught_up(group, topic, 1), 60, "all committed")
        except AssertionError as stuck:
            raise AssertionError(f"{stuck}; the bridge's log:\n{bridge.log_tail()}") from None
        finally:
            exit_code = bridge.terminate()
    finally:
        rabbitmq_node.ctl("eval", "application:set_env(rabbit, max_message_size, 134217728).")
    assert exit_code == 0, bridge.log_tail()
    ran = Counter(run["payload"]["n"] for run in executions.of(topic))
    assert set(ran) == set(range(11)) - {5}, bridge.log_tail()
    # the refused publish may have delivered the messages before the big one: those ran twice
    assert max(ran.values()) <= 2, (ran, bridge.log_tail())
    letters = kafka.read_all(f"{topic}.dlq", 1)
    headers = dict(letters[0].headers() or [])
    assert headers["ckb.reason"] == b"decode_error"
    assert b"max_message_size" in headers["ckb.error.message"], headers
