"""Fault injection on the result backend when it is PostgreSQL (issue 14): the database killed
(SIGKILL to the server and its backends, a crash) and restarted mid-run, records flowing.

While PostgreSQL is away the bridge's sweeps fail (it says so once, and /readyz turns red),
its pre-send reads of stored results fail (records are sent: at-least-once wins), and the
workers cannot store results: Celery retries a few times, then gives the result up, so those
tasks look lost to the bridge and are sent again after ``task_timeout`` (they run twice), or
Celery stores FAILURE for a task whose body ran once it can write again (a spurious dead
letter, counted like test 07a's). Checked: the invariants I1-I5 (nothing lost, never committed
ahead, bounded duplicates, commits resume) and that the bridge saw the database go.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge.stack import StackInfo
from bridge.stack.postgres import PostgresNode
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

BACKEND_DOWN = "result backend (database) unavailable"
BACKEND_BACK = "result backend (database) available again"

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(PROFILE.timeout)]


@pytest.fixture(scope="module")
def pg_workers(
    postgres_stack: StackInfo, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SupervisedWorker]:
    """A worker storing results in PostgreSQL, started again if it exits."""
    worker = supervised_worker(
        postgres_stack, "q-chaos-pg", tmp_path_factory.mktemp("pg-chaos-worker")
    )
    yield worker
    worker.stop()


def test_07e_postgres_backend_killed_and_restarted_mid_run(
    postgres_stack: StackInfo,
    postgres_node: PostgresNode,
    kafka: Kafka,
    executions: Executions,
    work_dir: Path,
    pg_workers: SupervisedWorker,
) -> None:
    profile: Profile = PROFILE
    partitions, window = 3, 20
    planned = numbered(profile.records(450), partitions, seed=79, sleep_ms=(5, 30))
    route = {
        "queue": pg_workers.queue, "max_in_flight": window,
        "task_timeout": 8, "max_redispatch": 5,
    }  # fmt: skip
    with scenario(
        name="07e-postgres-restart",
        stack=postgres_stack,
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
                    (BACKEND_DOWN, BACKEND_BACK),
                    (lambda: postgres_node.stop(kill=True), postgres_node.start),
                    "PostgreSQL",
                )
            )
        sc.note(f"outages the bridge logged per round: {away}")
        in_flight = window * partitions * len(away)
        sc.finish(Bounds(duplicates=in_flight, spurious_dead_letters=in_flight, recovery=90))
    assert not pg_workers.errors, pg_workers.errors
