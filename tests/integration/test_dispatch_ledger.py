"""DispatchLedger against the session's real redis-server: markers, results, ACL fallback."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterator

import pytest
import redis

from bridge.dispatch_ledger import MARKER_PREFIX, DispatchLedger
from bridge.results import json_decoder
from bridge.stack import StackInfo

RESULT_PREFIX = "celery-task-meta-"


@pytest.fixture
def client(stack: StackInfo) -> Iterator[redis.Redis]:
    with redis.Redis.from_url(f"{stack.redis_url}/1") as connection:
        yield connection


@pytest.fixture
def no_scripting_client(stack: StackInfo, client: redis.Redis) -> Iterator[redis.Redis]:
    """A client whose ACL user may do anything but run scripts."""
    user, password = f"ckb-noscript-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    client.acl_setuser(
        user,
        enabled=True,
        passwords=[f"+{password}"],
        keys=["*"],
        channels=["*"],
        commands=["+@all", "-@scripting"],
    )
    host_port = stack.redis_url.split("://", 1)[1]
    try:
        with redis.Redis.from_url(f"redis://{user}:{password}@{host_port}/1") as connection:
            yield connection
    finally:
        client.acl_deluser(user)


def task_ids(n: int) -> list[str]:
    return [str(uuid.uuid4()) for _ in range(n)]


def test_markers_are_written_with_their_ttl_and_read_back(client: redis.Redis) -> None:
    ledger = DispatchLedger(client, RESULT_PREFIX, json_decoder)
    sent, unsent = task_ids(300), task_ids(5)
    ledger.mark(sent, ttl=120)
    assert all(0 < client.ttl(MARKER_PREFIX + task_id) <= 120 for task_id in sent)
    known = ledger.lookup(sent + unsent)
    assert known.in_progress == set(sent)
    assert known.finals == {}


def test_a_stored_final_result_wins_over_a_marker(client: redis.Redis) -> None:
    ledger = DispatchLedger(client, RESULT_PREFIX, json_decoder)
    done, failed, running = task_ids(3)
    ledger.mark([done, failed, running], ttl=60)
    client.set(RESULT_PREFIX + done, json.dumps({"status": "SUCCESS", "result": 1}))
    client.set(
        RESULT_PREFIX + failed,
        json.dumps({"status": "FAILURE", "result": {"exc_type": "ValueError"}}),
    )
    known = ledger.lookup([done, failed, running])
    assert {task_id: event.state for task_id, event in known.finals.items()} == {
        done: "SUCCESS",
        failed: "FAILURE",
    }
    assert known.in_progress == {running}


def test_without_scripting_rights_markers_fall_back_to_set(
    no_scripting_client: redis.Redis, client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    ledger = DispatchLedger(no_scripting_client, RESULT_PREFIX, json_decoder)
    first, second = task_ids(4), task_ids(4)
    with caplog.at_level(logging.INFO, logger="bridge.dispatch_ledger"):
        ledger.mark(first, ttl=60)
        ledger.mark(second, ttl=60)
    assert caplog.text.count("scripting not allowed") == 1, "said once, then SET for good"
    assert all(0 < client.ttl(MARKER_PREFIX + task_id) <= 60 for task_id in first + second)
    assert ledger.lookup(first + second).in_progress == set(first + second)


def test_markers_switched_off_write_nothing(client: redis.Redis) -> None:
    ledger = DispatchLedger(client, RESULT_PREFIX, json_decoder, markers=False)
    ids = task_ids(3)
    ledger.mark(ids, ttl=60)
    assert client.exists(*(MARKER_PREFIX + task_id for task_id in ids)) == 0
    assert ledger.lookup(ids).in_progress == set()
