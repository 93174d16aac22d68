"""Marks every test here as ``integration``; the stack fixtures are in ``tests/conftest.py``,
but for the secured stack's, here (only integration tests use it)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from bridge.stack import LocalStack, StackInfo
from tests.figures import figure
from tests.integration.harness import free_port


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def secure_local_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """``ckb stack up --secure`` on free ports in its own state dir, started once per session
    on first use: Kafka on SASL_SSL with ACLs, Redis on TLS with ACL users."""
    state = tmp_path_factory.mktemp("secure-stack")
    stack = LocalStack(state, kafka_port=free_port(), redis_port=free_port(), secure=True)
    started = time.monotonic()
    stack.up()
    figure(f"secured stack (SASL_SSL Kafka, TLS Redis) up in {time.monotonic() - started:.1f}s")
    try:
        yield stack
    finally:
        stack.down()


@pytest.fixture(scope="session")
def secure_stack(secure_local_stack: LocalStack) -> StackInfo:
    """The secured stack's addresses; ``.secure`` has its users, passwords and CA."""
    info = secure_local_stack.up()  # idempotent: the running stack's addresses
    assert info.secure is not None
    return info
