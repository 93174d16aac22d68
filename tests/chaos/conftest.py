"""Fixtures of the chaos suite: the integration session fixtures, shared, plus a recorder Redis.

The stack fixtures (``local_stack``, ``stack``, ``kafka``, ``executions``, ``shared_worker``,
``work_dir``) are the integration suite's own. A conftest's fixtures are visible only below its
directory, and importing them here would create second fixture definitions, so a run of the
whole ``tests`` tree would start a second Kafka and Redis. Instead, when this conftest is
registered first (``pytest`` or ``pytest tests/chaos``: ``chaos`` sorts before
``integration``), the integration conftest module is registered once as a plugin visible to
the whole session, and its path is blocked so it is not registered a second time as a
directory conftest: every test then shares one stack. When the integration conftest was
already loaded (``pytest tests/integration tests/chaos``), its fixtures are made visible here
through an alias module; that order starts a second stack, and still works.
"""

from __future__ import annotations

import subprocess
import sys
import types
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pytest
import redis

import tests.integration.conftest as integration
from bridge.stack import StackInfo, find_redis_server
from tests.chaos.kit import PROFILE, PROTOCOLS, Planned, Profile, RunFactory, Scenario, scenario
from tests.integration.harness import Executions, Kafka, Worker, wait_for

_INTEGRATION_CONFTEST = str(Path(integration.__file__).resolve())
_SHARED_NAME = "ckb-chaos-shared-stack-fixtures"
_FIXTURES = ("local_stack", "stack", "kafka", "executions", "shared_worker", "work_dir")


def pytest_plugin_registered(plugin: object, manager: pytest.PytestPluginManager) -> None:
    """Runs once for this conftest itself: share the integration fixtures session-wide."""
    if plugin is not sys.modules[__name__] or manager.get_plugin(_SHARED_NAME) is not None:
        return
    if manager.get_plugin(_INTEGRATION_CONFTEST) is None:
        manager.register(integration, name=_SHARED_NAME)
        manager.set_blocked(_INTEGRATION_CONFTEST)
        return
    alias = types.ModuleType(_SHARED_NAME)
    for name in _FIXTURES:
        setattr(alias, name, getattr(integration, name))
    manager.register(alias, name=_SHARED_NAME)


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
            route={"queue": integration.SHARED_QUEUE, "max_in_flight": 20, **(route or {})},
            settings=settings,
        )

    return make


@pytest.fixture(scope="session")
def recorder_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A second redis-server for execution records: restarting the stack's Redis keeps them."""
    port = integration.free_port()
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
