"""Fault injection on the Celery broker when it is RabbitMQ (issue 14): the broker killed and
restarted mid-run, records flowing.

The bridge publishes with publisher confirms, so a task counts as dispatched only once
RabbitMQ has it; Celery's queues are durable and its messages persistent, so a confirmed task
survives even a SIGKILL of the broker. What a restart may cost: tasks a worker had taken but
not acknowledged (``acks_late``) are delivered again and run twice (Celery's at-least-once,
bounded by what was in flight), and publishes refused while RabbitMQ is away are sent again.
Checked: the usual invariants I1-I5 (nothing lost, never committed ahead, bounded duplicates,
commits resume), and that the bridge really saw the broker go (its own log says so).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge.stack import StackInfo
from bridge.stack.rabbitmq import RabbitNode
from tests.chaos.invariants import Bounds
from tests.chaos.kit import (
    PROFILE,
    RESTART_SETTINGS,
    Profile,
    SupervisedWorker,
    numbered,
    scenario,
    server_outage,
    supervised_worker,
)
from tests.integration.harness import Executions, Kafka

BROKER_DOWN = "Celery broker unavailable"
BROKER_BACK = "Celery broker available again"

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(PROFILE.timeout)]


@pytest.fixture(scope="module")
def rabbit_workers(
    rabbitmq_stack: StackInfo, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SupervisedWorker]:
    """A worker on RabbitMQ, started again if it exits (as systemd or Kubernetes would)."""
    worker = supervised_worker(
        rabbitmq_stack, "q-chaos-rabbit", tmp_path_factory.mktemp("rabbit-chaos-worker")
    )
    yield worker
    worker.stop()


def test_07c_rabbitmq_killed_and_restarted_mid_run(
    rabbitmq_stack: StackInfo,
    rabbitmq_node: RabbitNode,
    kafka: Kafka,
    executions: Executions,
    work_dir: Path,
    rabbit_workers: SupervisedWorker,
) -> None:
    profile: Profile = PROFILE
    partitions, window = 3, 20
    planned = numbered(profile.records(450), partitions, seed=73, sleep_ms=(5, 30))
    route = {
        "queue": rabbit_workers.queue, "max_in_flight": window,
        "task_timeout": 20, "max_redispatch": 5,
    }  # fmt: skip
    restarts = rabbit_workers.restarts
    with scenario(
        name="07c-rabbitmq-restart",
        stack=rabbitmq_stack,
        kafka=kafka,
        work_dir=work_dir,
        recorder=executions,
        planned=planned,
        partitions=partitions,
        route=route,
        settings=RESTART_SETTINGS,
    ) as sc:
        sc.start(bridges=1, rate=60)
        bridge = sc.fleet.running()[0]
        away = []
        for point in [0.3, 0.6][: max(1, profile.rounds)]:
            sc.wait_executed(point)
            away.append(
                server_outage(
                    sc,
                    bridge.log_path,
                    (BROKER_DOWN, BROKER_BACK),
                    (lambda: rabbitmq_node.stop(kill=True), rabbitmq_node.start),  # a crash
                    "RabbitMQ",
                )
            )
        sc.note(f"outages the bridge logged per round: {away}")
        sc.note(f"worker restarts by its supervisor: {rabbit_workers.restarts - restarts}")
        # prefetched and running tasks of the killed broker's connections are delivered again
        in_flight = window * partitions * len(away)
        sc.finish(Bounds(duplicates=in_flight, recovery=90))
    assert not rabbit_workers.errors, rabbit_workers.errors
