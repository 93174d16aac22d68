"""One real Kafka + Redis per test session, and one shared Celery worker.

Tests use unique topic and group names, so they never see each other's records.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from bridge.stack import LocalStack, StackInfo
from tests.integration.harness import Executions, Kafka, Worker, start_worker

SHARED_QUEUE = "it-shared"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def local_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    state = tmp_path_factory.mktemp("stack")
    stack = LocalStack(state, kafka_port=free_port(), redis_port=free_port())
    stack.up()
    try:
        yield stack
    finally:
        stack.down()


@pytest.fixture(scope="session")
def stack(local_stack: LocalStack) -> StackInfo:
    return local_stack.up()  # idempotent: returns the running stack's addresses


@pytest.fixture(scope="session")
def kafka(stack: StackInfo) -> Kafka:
    return Kafka(stack.kafka_bootstrap)


@pytest.fixture(scope="session")
def executions(stack: StackInfo) -> Iterator[Executions]:
    client = redis.Redis.from_url(f"{stack.redis_url}/2")
    yield Executions(client)
    client.close()


@pytest.fixture(scope="session")
def shared_worker(stack: StackInfo, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    worker = start_worker(stack, SHARED_QUEUE, tmp_path_factory.mktemp("worker"), concurrency=8)
    yield worker
    worker.stop()


@pytest.fixture
def work_dir(tmp_path: Path) -> Path:
    return tmp_path
