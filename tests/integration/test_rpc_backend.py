"""The core path with RabbitMQ as the Celery broker and ``rpc://`` as the result backend.

A real rabbitmq-server (the session's ``rabbitmq_node``), real Celery workers configured with
``result_backend = "rpc://"`` replying to the queue each task message names in ``reply_to``,
the bridge consuming its reply queue: records run and are committed after success, never
ahead; failures are dead-lettered; kill -9 of the bridge loses nothing, and a bridge restarted
with the same ``group.instance.id`` reads the replies its predecessor's tasks sent meanwhile
and those it had not acked yet, so the records finished before the kill do not run again.
"""

from __future__ import annotations

import json
import os
import re
import signal
from collections.abc import Iterator
from pathlib import Path

import amqp.exceptions
import kombu
import pytest

from bridge.stack import StackInfo
from bridge.stack.rabbitmq import RabbitNode
from tests.figures import figure
from tests.integration import core_scenarios as core
from tests.integration.core_scenarios import route, runs_of
from tests.integration.harness import (
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

NAME = "RabbitMQ/rpc"


@pytest.fixture(scope="module")
def queue() -> str:
    return unique("q-rpc")


@pytest.fixture(scope="module")
def rpc_worker(
    rpc_stack: StackInfo, queue: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Worker]:
    # the example worker config sends the replies persistent (result_persistent)
    worker = start_worker(rpc_stack, queue, tmp_path_factory.mktemp("rpc-worker"), 8)
    yield worker
    worker.stop()


def reply_queue(bridge: BridgeProcess) -> str:
    found = re.search(r"rpc:// replies to queue (\S+)", bridge.log_tail(200_000))
    assert found, bridge.log_tail()
    return found[1]


def queue_exists(url: str, name: str) -> bool:
    with kombu.Connection(url) as connection:
        try:
            connection.channel().queue_declare(name, passive=True)
        except amqp.exceptions.NotFound:
            return False
    return True


def test_records_run_and_commit_after_success_never_ahead(
    rpc_stack: StackInfo,
    kafka: Kafka,
    executions: Executions,
    rpc_worker: Worker,
    queue: str,
    work_dir: Path,
) -> None:
    assert rpc_stack.result_backend == "rpc://"
    core.commit_after_success_never_ahead(
        rpc_stack, kafka, executions, queue, work_dir, NAME, total=1200, seed=5
    )


def test_a_failing_task_is_dead_lettered(
    rpc_stack: StackInfo,
    kafka: Kafka,
    executions: Executions,
    rpc_worker: Worker,
    queue: str,
    work_dir: Path,
) -> None:
    dead = core.failing_tasks_dead_lettered(rpc_stack, kafka, executions, queue, work_dir, NAME)
    # the exception travelled in the reply: its class is in the dead letter
    assert {d["headers"]["ckb.error.class"] for d in dead} == {b"PlannedFailure"}


def test_kill_9_of_the_bridge_loses_nothing(
    rpc_stack: StackInfo,
    kafka: Kafka,
    executions: Executions,
    rpc_worker: Worker,
    queue: str,
    work_dir: Path,
) -> None:
    """A per-process reply queue: the second bridge cannot read the first one's replies and
    sends every uncommitted record again (README: what rpc:// gives up)."""
    core.kill_9_loses_nothing(rpc_stack, kafka, executions, queue, work_dir, NAME, total=600)


def test_a_rebalance_waits_for_the_tasks_in_flight_so_none_runs_twice(
    rpc_stack: StackInfo,
    kafka: Kafka,
    executions: Executions,
    rpc_worker: Worker,
    queue: str,
    work_dir: Path,
) -> None:
    """The new owner of a partition cannot see the replies sent to the old owner's queue, and
    there are no dispatch markers: so a revoke waits for every task in flight, queued ones
    too (within revoke_grace), and nothing runs twice. Each bridge has its own queue, deleted
    when it stops cleanly."""
    partitions, total = 4, 2000
    topic = kafka.create_topic(partitions, prefix="rpc-scale")
    values = (json.dumps({"n": n, "sleep_ms": 5 + n % 11}).encode() for n in range(total))
    kafka.produce(topic, values, partition_of=lambda n: n % partitions)
    group = unique("g-rpc-scale")
    consumer = {"session.timeout.ms": "6000", "heartbeat.interval.ms": "1000"}
    routes = [route(topic, queue, max_in_flight=100)]
    config = bridge_config(
        rpc_stack, group, routes, kafka={"consumer": consumer, "commit_interval": 0.5}
    )
    first = start_bridge(config, work_dir, "b1")
    second: BridgeProcess | None = None
    exit_codes = []
    try:
        wait_for(lambda: executions.count(topic) >= total // 10, 60, "a tenth of the records")
        second = start_bridge(config, work_dir, "b2")
        joined = second
        wait_for(lambda: f"assigned {topic}" in joined.log_tail(100_000), 60, "b2 assigned")
        assert executions.count(topic) < total, "the partitions moved with work left"
        first_queue = reply_queue(first)
        assert queue_exists(rpc_stack.broker_url, first_queue)
        exit_codes.append(first.terminate())  # leaves cleanly: its partitions move again
        assert not queue_exists(rpc_stack.broker_url, first_queue), "a clean stop deletes it"
        wait_for(lambda: kafka.caught_up(group, topic, partitions), 60, "all committed")
    finally:
        exit_codes.append(first.terminate())
        if second is not None:
            exit_codes.append(second.terminate())
            assert reply_queue(first) != reply_queue(second), "each its own queue"
    assert exit_codes == [0, 0, 0], (first.log_tail(), second and second.log_tail())
    revokes = [line for line in first.log_tail(200_000).splitlines() if "revoked " in line]
    assert revokes and all("; 0 tasks in flight handed on" in line for line in revokes), revokes
    runs = runs_of(executions, topic)
    assert len(runs) == total, f"{total - len(runs)} records lost"
    duplicates = sum(runs.values()) - total
    figure(f"RabbitMQ/rpc two rebalances: {total} records, {duplicates} duplicate runs")
    assert duplicates == 0, f"{duplicates} tasks ran twice"


def test_kill_9_loses_nothing_and_the_same_member_reads_its_predecessors_replies(
    rpc_stack: StackInfo,
    rabbitmq_node: RabbitNode,
    kafka: Kafka,
    executions: Executions,
    rpc_worker: Worker,
    queue: str,
    work_dir: Path,
) -> None:
    partitions, total = 2, 600
    topic = kafka.create_topic(partitions, prefix="rpc-kill")
    values = (json.dumps({"n": n, "sleep_ms": 20}).encode() for n in range(total))
    kafka.produce(topic, values, partition_of=lambda n: n % partitions)
    group = unique("g-rpc-kill")
    # static membership: the restarted member gets its partitions back at once, and its queue
    consumer = {"group.instance.id": f"{group}-a", "session.timeout.ms": "6000"}
    routes = [route(topic, queue, max_in_flight=100)]
    config = bridge_config(rpc_stack, group, routes, kafka={"consumer": consumer})
    first = start_bridge(config, work_dir, "first")
    try:
        wait_for(lambda: executions.count(topic) >= total // 3, 60, "a third of the records")
        wait_for(
            lambda: any(o > 0 for o in kafka.committed(group, topic, partitions).values()),
            30,
            "a commit",
        )
        name = reply_queue(first)
        os.kill(first.process.pid, signal.SIGKILL)
        first.process.wait(10)
    finally:
        first.kill()
    assert name == f"ckb.replies.{group}.{group}-a"
    committed = kafka.committed(group, topic, partitions)
    finished = runs_of(executions, topic)  # read after the commits: only more can finish
    for p, offset in committed.items():
        unfinished = [o for o in range(max(offset, 0)) if (p, o) not in finished]
        assert not unfinished, f"partition {p} committed {offset} ahead of {unfinished[:5]}"
    assert sum(max(o, 0) for o in committed.values()) < total, "killed before the end"
    # the queue outlived its consumer: the replies of the tasks still running land there;
    # durable, never auto-deleted, gone after Celery's result_expires unused (1 day)
    listing = rabbitmq_node.ctl("list_queues", "-q", "name", "durable", "auto_delete", "arguments")
    (line,) = [row for row in listing.splitlines() if row.startswith(name)]
    assert line.split("\t")[1:3] == ["true", "false"], line
    assert '"x-expires",86400000' in line.replace(" ", ""), line

    second = start_bridge(config, work_dir, "second")
    try:
        wait_for(lambda: kafka.caught_up(group, topic, partitions), 60, "all committed")
    finally:
        assert second.terminate() == 0, second.log_tail()
    assert queue_exists(rpc_stack.broker_url, name), "kept for the next of this member"
    runs = runs_of(executions, topic)
    assert len(runs) == total, f"{total - len(runs)} records lost"
    uncommitted = total - sum(max(o, 0) for o in committed.values())
    # finished but uncommitted records conclude from the replies RabbitMQ delivered again
    # (acks held): at most the tasks still queued or running at the kill run twice
    assert sum(runs.values()) - total <= 100, f"{sum(runs.values()) - total} ran twice"
    figure(
        f"RabbitMQ/rpc kill -9 (static member): {total} records, {uncommitted} uncommitted at "
        f"the kill, {sum(runs.values()) - total} duplicate runs"
    )
    with kombu.Connection(rpc_stack.broker_url) as connection:
        connection.channel().queue_delete(name)
