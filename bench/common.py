"""Helpers the benchmark shares with the test suite (``tests/`` imports them from here).

``bench`` is not in the wheel (pyproject ships ``bridge`` and ``tasks`` only), and both
``python -m bench`` and pytest run from the repository root, so one copy here serves both:
a free port, polling with a deadline, producing through a full local queue, creating a topic.
The ``ckb run`` process helper is :class:`bench.bridgeproc.BridgeProcess`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from bridge.stack.processes import free_port

__all__ = ["create_topic", "free_port", "produce_retrying", "wait_for"]


def wait_for(
    condition: Callable[[], bool],
    timeout: float,
    what: str,
    interval: float = 0.2,
    error: type[Exception] = AssertionError,
) -> None:
    """Poll ``condition`` every ``interval`` seconds until it holds; after ``timeout``
    seconds raise ``error`` naming ``what`` (AssertionError: a failed test, for pytest)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(interval)
    raise error(f"timed out after {timeout:.0f}s waiting for {what}")


def produce_retrying(
    producer: Producer,
    topic: str,
    backoff: float = 0.1,
    attempts: int | None = None,
    **kwargs: Any,
) -> bool:
    """``producer.produce(topic, **kwargs)``; while librdkafka's local queue is full
    (BufferError), serve delivery reports for ``backoff`` seconds and try again.

    Gives up after ``attempts`` tries (None: never) and returns whether the record was queued.
    """
    tried = 0
    while attempts is None or tried < attempts:
        tried += 1
        try:
            producer.produce(topic, **kwargs)
            return True
        except BufferError:  # the local queue is full: let deliveries drain it
            producer.poll(backoff)
    return False


def create_topic(
    bootstrap: str,
    name: str,
    partitions: int,
    error: type[Exception] = AssertionError,
    settings: dict[str, Any] | None = None,
) -> None:
    """Create ``name`` (replication 1) and wait until the cluster's metadata lists it;
    ``settings``: how to connect (SASL, TLS)."""
    admin = AdminClient({"bootstrap.servers": bootstrap, **(settings or {})})
    admin.create_topics([NewTopic(name, partitions, 1)])[name].result(30)

    def listed() -> bool:
        return name in admin.list_topics(timeout=5).topics

    wait_for(listed, 30, f"topic {name}", error=error)
