"""One real Kafka + Redis per test session, and one shared Celery worker; a RabbitMQ broker
(``rabbitmq_stack``) and a PostgreSQL result backend (``postgres_node``) next to them for the
tests that ask for them.

Here at the top of ``tests/`` so the integration and chaos suites share them in one session:
the stack starts once, on first use (unit tests never ask for it). Tests use unique topic and
group names, so they never see each other's records.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from _pytest.terminal import TerminalReporter

from bridge.stack import LocalStack, StackInfo
from bridge.stack.paths import StatePaths
from bridge.stack.postgres import PostgresNode
from bridge.stack.rabbitmq import RabbitNode
from bridge.stack.redis_server import RedisNode
from bridge.stack.sentinel import SentinelSet
from tests import figures
from tests.integration.harness import (
    SHARED_QUEUE,
    Executions,
    Kafka,
    Worker,
    free_port,
    start_worker,
)


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
def rabbitmq_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitNode]:
    """A real rabbitmq-server (Debian's, installed on demand), started once per session."""
    paths = StatePaths(tmp_path_factory.mktemp("rabbitmq"))
    node = RabbitNode(paths, port=free_port(), dist_port=free_port(), epmd_port=free_port())
    node.start()
    try:
        yield node
    finally:
        node.stop()


@pytest.fixture(scope="session")
def rabbitmq_stack(stack: StackInfo, rabbitmq_node: RabbitNode) -> StackInfo:
    """The session's Kafka and Redis (results) with RabbitMQ as the Celery broker: the harness
    helpers (``bridge_config``, ``start_worker``) take it like ``stack``."""
    return dataclasses.replace(stack, rabbitmq_url=rabbitmq_node.url)


@pytest.fixture(scope="session")
def rpc_stack(rabbitmq_stack: StackInfo) -> StackInfo:
    """RabbitMQ as the broker and ``rpc://`` as the result backend, for the bridge and the
    workers the harness starts (``bridge_config``, ``start_worker``)."""
    return dataclasses.replace(rabbitmq_stack, rpc_results=True)


@pytest.fixture(scope="session")
def postgres_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresNode]:
    """A real PostgreSQL (Debian's, installed on demand), started once per session."""
    node = PostgresNode(StatePaths(tmp_path_factory.mktemp("postgres")), port=free_port())
    node.start()
    try:
        yield node
    finally:
        node.stop()


@pytest.fixture(scope="session")
def postgres_stack(stack: StackInfo, postgres_node: PostgresNode) -> StackInfo:
    """The session's Kafka and Redis (broker) with PostgreSQL as the result backend: the
    harness helpers (``bridge_config``, ``start_worker``) take it like ``stack``."""
    return dataclasses.replace(stack, postgres_url=postgres_node.url)


@pytest.fixture(scope="session")
def sentinel_set(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelSet]:
    """A real Redis Sentinel set (a master, one replica, three sentinels), started once per
    session when a test asks for it."""
    paths = StatePaths(tmp_path_factory.mktemp("sentinel"))
    master = RedisNode(paths, free_port(), "redis-master", label="Redis master")
    sentinels = SentinelSet(paths, master, free_port(), tuple(free_port() for _ in range(3)))
    sentinels.start()
    try:
        yield sentinels
    finally:
        sentinels.stop()


@pytest.fixture(scope="session")
def sentinel_stack(stack: StackInfo, sentinel_set: SentinelSet) -> StackInfo:
    """The session's Kafka (and Redis for the test recorder) with the Sentinel set as broker
    and result backend (``sentinel://``): the harness helpers take it like ``stack``."""
    return dataclasses.replace(stack, sentinel=sentinel_set.clients)


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


def pytest_terminal_summary(terminalreporter: TerminalReporter) -> None:
    if figures.LINES:
        terminalreporter.section("measured figures")
        for line in figures.LINES:
            terminalreporter.write_line(line)
