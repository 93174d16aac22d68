"""Fault injection on ``rpc://`` results (issue 14): RabbitMQ, the broker that carries both the
tasks and their replies, killed and restarted mid-run, records flowing.

The bridge's reply queue is durable and the workers publish their replies persistent
(``result_persistent``), so both outlive the restart; the bridge's reply consumer loses its
connection, says so, is unhealthy meanwhile and consumes the same queue again once RabbitMQ is
back. A reply lost all the same (published in the instant of the kill, or given up by a worker
after its retries) costs the route's ``task_timeout`` and a second run. Checked: the usual
invariants I1-I5 (nothing lost, never committed ahead, bounded duplicates, commits resume),
that the reply consumer really saw RabbitMQ go and come back (its own log says so), and that
``/readyz`` names the result backend while it is away and turns green after.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.common import free_port
from bridge.stack import StackInfo
from bridge.stack.rabbitmq import RabbitNode
from tests.chaos.invariants import Bounds
from tests.chaos.kit import (
    PROFILE,
    RESTART_SETTINGS,
    Profile,
    SupervisedWorker,
    logged,
    numbered,
    scenario,
    server_outage,
    supervised_worker,
)
from tests.integration.harness import Executions, Kafka, wait_for

REPLIES_DOWN = "result replies (RabbitMQ) unavailable"
REPLIES_BACK = "result replies (RabbitMQ) available again"

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(PROFILE.timeout)]


def readiness(port: int) -> tuple[int, list[str]]:
    """``/readyz``: its status and reasons."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as answer:
            return answer.status, []
    except urllib.error.HTTPError as refused:
        return refused.code, list(json.loads(refused.read()).get("reasons", []))


@pytest.fixture(scope="module")
def rpc_workers(
    rpc_stack: StackInfo, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SupervisedWorker]:
    """A worker replying with rpc:// (persistent replies: the example worker config), started
    again if it exits."""
    worker = supervised_worker(
        rpc_stack, "q-chaos-rpc", tmp_path_factory.mktemp("rpc-chaos-worker")
    )
    yield worker
    worker.stop()


def test_07d_rabbitmq_restarted_under_rpc_results(
    rpc_stack: StackInfo,
    rabbitmq_node: RabbitNode,
    kafka: Kafka,
    executions: Executions,
    work_dir: Path,
    rpc_workers: SupervisedWorker,
) -> None:
    profile: Profile = PROFILE
    partitions, window = 3, 20
    planned = numbered(profile.records(300), partitions, seed=79, sleep_ms=(5, 30))
    route = {
        "queue": rpc_workers.queue, "max_in_flight": window,
        "task_timeout": 10, "max_redispatch": 5,
    }  # fmt: skip
    port = free_port()  # /readyz (served without metrics too)
    settings = {
        **RESTART_SETTINGS,
        "metrics": {"enabled": False, "host": "127.0.0.1", "port": port},
    }
    with scenario(
        name="07d-rabbitmq-restart-rpc",
        stack=rpc_stack,
        kafka=kafka,
        work_dir=work_dir,
        recorder=executions,
        planned=planned,
        partitions=partitions,
        route=route,
        settings=settings,
    ) as sc:
        sc.start(bridges=1, rate=60)
        bridge = sc.fleet.running()[0]
        for point in [0.3, 0.6][: max(1, profile.rounds)]:
            sc.wait_executed(point)

            def red_while_away() -> None:
                status, reasons = readiness(port)
                assert status == 503 and any("result backend" in r for r in reasons), reasons

            server_outage(
                sc,
                bridge.log_path,
                (REPLIES_DOWN, REPLIES_BACK),
                (lambda: rabbitmq_node.stop(kill=True), rabbitmq_node.start),  # a crash
                "RabbitMQ",
                while_away=red_while_away,
            )
            wait_for(lambda: readiness(port)[0] == 200, 30, "/readyz green again")
        resent = logged(bridge.log_path, "sending it again")
        sc.note(f"tasks sent again after task_timeout (replies lost): {resent}")
        # tasks a worker had taken run again, and those whose reply was lost
        sc.finish(Bounds(duplicates=2 * window * partitions, recovery=90))
    assert not rpc_workers.errors, rpc_workers.errors
