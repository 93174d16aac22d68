"""Fixtures of the chaos suite; the stack fixtures (``local_stack``, ``stack``, ``kafka``,
``executions``, ``shared_worker``, ``work_dir``) are the session's, in ``tests/conftest.py``,
so a run of the whole ``tests`` tree starts one Kafka and one Redis."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pytest
import redis

from bridge.stack import StackInfo, find_redis_server
from tests.chaos.kit import PROFILE, PROTOCOLS, Planned, Profile, RunFactory, Scenario, scenario
from tests.integration.harness import (
    SHARED_QUEUE,
    Executions,
    Kafka,
    Worker,
    free_port,
    wait_for,
)


@pytest.fixture(scope="session")
def profile() -> Profile:
    return PROFILE


@pytest.fixture
def run(
    stack: StackInfo, kafka: Kafka, work_dir: Path, executions: Executions, shared_worker: Worker
) -> RunFactory:
    """Scenarios on the session's stack: the shared worker's queue, classic protocol, and
    ``max_in_flight`` 20 unless the test says otherwise; commits every 0.5 s."""

    def make(
        name: str,
        planned: list[Planned],
        partitions: int,
        route: dict[str, Any] | None = None,
        recorder: Executions | None = None,
        protocol: str = "cooperative-sticky",
        consumer: dict[str, Any] | None = None,
        limits: dict[str, Any] | None = None,
    ) -> AbstractContextManager[Scenario]:
        assert shared_worker.process.poll() is None, f"shared worker died: {shared_worker.log_path}"
        settings = {
            "kafka": {
                "consumer": {**PROTOCOLS[protocol], **(consumer or {})},
                "commit_interval": 0.5,
            },
            "limits": {"revoke_grace": 10, "shutdown_grace": 20, **(limits or {})},
        }
        return scenario(
            name=name,
            stack=stack,
            kafka=kafka,
            work_dir=work_dir,
            recorder=recorder or executions,
            planned=planned,
            partitions=partitions,
            route={"queue": SHARED_QUEUE, "max_in_flight": 20, **(route or {})},
            settings=settings,
        )

    return make


@pytest.fixture(scope="session")
def recorder_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A second redis-server for execution records: restarting the stack's Redis keeps them."""
    port = free_port()
    directory = tmp_path_factory.mktemp("recorder")
    process = subprocess.Popen(
        [str(find_redis_server()), "--port", str(port), "--bind", "127.0.0.1",
         "--save", "", "--appendonly", "no", "--dir", str(directory)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"redis://127.0.0.1:{port}/0"
    wait_for(lambda: _pings(url), 20, "the recorder Redis")
    try:
        yield url
    finally:
        process.terminate()
        process.wait(10)


def _pings(url: str) -> bool:
    try:
        with redis.Redis.from_url(url) as client:
            return bool(client.ping())
    except redis.ConnectionError:
        return False
