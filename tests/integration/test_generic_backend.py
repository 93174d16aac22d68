"""A result backend the bridge reads through Celery's own API (the slow path): Celery's
filesystem backend (``file://``), a key-value backend any machine can run, with the Redis
broker. The core path as for every combination: commit after success, never ahead; failures
dead-lettered once; kill -9 of the bridge loses nothing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge.stack import StackInfo
from tests.integration import core_scenarios as core
from tests.integration.harness import Executions, Kafka, Worker, start_worker, unique

NAME = "Redis/file"


@dataclasses.dataclass(frozen=True)
class FileResults(StackInfo):
    """The session's stack with Celery's filesystem result backend in ``results_dir``."""

    results_dir: str = ""

    @property
    def result_backend(self) -> str:
        return f"file://{self.results_dir}"


@pytest.fixture(scope="module")
def file_stack(stack: StackInfo, tmp_path_factory: pytest.TempPathFactory) -> StackInfo:
    results = tmp_path_factory.mktemp("file-results")
    fields = {field.name: getattr(stack, field.name) for field in dataclasses.fields(stack)}
    return FileResults(**fields, results_dir=str(results))


@pytest.fixture(scope="module")
def queue() -> str:
    return unique("q-file")


@pytest.fixture(scope="module")
def file_worker(
    file_stack: StackInfo, queue: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Worker]:
    worker = start_worker(file_stack, queue, tmp_path_factory.mktemp("file-worker"), 8)
    yield worker
    worker.stop()


def test_records_run_and_commit_after_success_never_ahead(
    file_stack: StackInfo,
    kafka: Kafka,
    executions: Executions,
    file_worker: Worker,
    queue: str,
    work_dir: Path,
) -> None:
    assert file_stack.result_backend.startswith("file://")
    core.commit_after_success_never_ahead(
        file_stack, kafka, executions, queue, work_dir, NAME, total=600, seed=5
    )


def test_a_failing_task_is_dead_lettered(
    file_stack: StackInfo,
    kafka: Kafka,
    executions: Executions,
    file_worker: Worker,
    queue: str,
    work_dir: Path,
) -> None:
    dead = core.failing_tasks_dead_lettered(file_stack, kafka, executions, queue, work_dir, NAME)
    # the exception came from the stored result, read through Celery's backend
    assert {d["headers"]["ckb.error.class"] for d in dead} == {b"PlannedFailure"}


def test_kill_9_of_the_bridge_loses_nothing_and_never_commits_ahead(
    file_stack: StackInfo,
    kafka: Kafka,
    executions: Executions,
    file_worker: Worker,
    queue: str,
    work_dir: Path,
) -> None:
    core.kill_9_loses_nothing(file_stack, kafka, executions, queue, work_dir, NAME, 400)
