"""The result watcher against the real Redis: it survives what it reads and restarts itself
after an unexpected error, unhealthy (``/readyz`` red) while it is down."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
import redis

from bench.common import wait_for
from bridge.results import ResultWatcher, TaskEvent, json_decoder
from bridge.stack import StackInfo

pytestmark = pytest.mark.integration


def _result(state: str, **extra: Any) -> bytes:
    return json.dumps({"status": state, "result": None, "traceback": None, **extra}).encode()


def _events(watcher: ResultWatcher) -> list[TaskEvent]:
    out = []
    while not watcher.completions.empty():
        out.append(watcher.completions.get_nowait())
    return out


def test_a_bug_restarts_the_watcher_unhealthy_meanwhile_and_it_reports_afterwards(
    stack: StackInfo,
) -> None:
    url = f"{stack.redis_url}/1"
    prefix = f"ckb-test-{uuid.uuid4().hex[:8]}-"
    client = redis.Redis.from_url(url)
    decoded = {"n": 0}
    broken = {"on": False}

    def decoder(data: bytes) -> dict[str, Any]:
        decoded["n"] += 1
        if b"BOOM" in data:
            raise RuntimeError("a bug in decoding one result")
        return json_decoder(data)

    def connect() -> redis.Redis:
        if broken["on"]:
            raise RuntimeError("a bug while reconnecting")
        return redis.Redis.from_url(url)

    watcher = ResultWatcher(connect, prefix, 60.0, decoder)
    original = watcher._on_message

    def on_message(message: dict[str, Any]) -> None:
        if b"CRASH" in (message.get("data") or b""):
            raise RuntimeError("a bug in the listen loop")
        original(message)

    watcher._on_message = on_message  # type: ignore[method-assign]
    watcher.watch(["bad", "crash", "good"])
    watcher.start()
    try:
        assert watcher.healthy
        # one result the decoder chokes on: skipped, the watcher keeps listening
        client.publish(prefix + "bad", _result("SUCCESS", BOOM=1))
        wait_for(lambda: decoded["n"] >= 1, 10, "the bad result was read")
        assert watcher.crashes == 0 and watcher.healthy
        # a bug that ends the listen loop, and the restart failing too: unhealthy meanwhile
        broken["on"] = True
        client.publish(prefix + "crash", b"CRASH")
        wait_for(lambda: watcher.crashes >= 2, 10, "the crash and a failed restart")
        assert not watcher.healthy
        broken["on"] = False
        wait_for(lambda: watcher.healthy, 15, "the watcher listens again")
        client.publish(prefix + "good", _result("SUCCESS"))
        seen: list[TaskEvent] = []
        wait_for(
            lambda: any(e.task_id == "good" for e in seen.extend(_events(watcher)) or seen),
            10,
            "the next result reported",
        )
        assert [e.task_id for e in seen] == ["good"]
    finally:
        watcher.stop()
        client.close()
