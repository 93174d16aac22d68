"""tasks.base.KafkaTask on a real Celery worker, Redis broker and Redis result backend.

The worker runs ``tests.integration.base_worker_app``; its tasks record every body run and every
delivery in Redis db 2, so the tests can tell a skipped duplicate from a second run.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery

from bridge.stack import StackInfo
from tests.integration.harness import Worker, start_worker, unique, wait_for

RESULT_TIMEOUT = 60


# the keys tests.integration.base_worker_app writes (it cannot be imported here: it reads the
# worker's environment at import)
def runs_key(label: str) -> str:
    return f"ckb-it:base-runs:{label}"


def deliveries_key(task_id: str) -> str:
    return f"ckb-it:base-deliveries:{task_id}"


@pytest.fixture
def queue(stack: StackInfo, work_dir: Path) -> Iterator[str]:
    name = unique("it-base")
    worker: Worker | None = None
    try:
        worker = start_worker(
            stack, name, work_dir, concurrency=2, app="tests.integration.base_worker_app"
        )
        yield name
    finally:
        if worker is not None:
            worker.stop()


@pytest.fixture
def client(stack: StackInfo) -> Iterator[Celery]:
    app = Celery(
        "ckb-it-base-client",
        broker=f"{stack.redis_url}/0",
        backend=f"{stack.redis_url}/1",
        set_as_current=False,
    )
    app.conf.update(task_serializer="json", result_serializer="json", accept_content=["json"])
    try:
        yield app
    finally:
        app.close()


@pytest.fixture
def recorder(stack: StackInfo) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(f"{stack.redis_url}/2")
    try:
        yield client
    finally:
        client.close()


def runs(recorder: redis.Redis, label: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in recorder.lrange(runs_key(label), 0, -1)]


def deliveries(recorder: redis.Redis, task_id: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in recorder.lrange(deliveries_key(task_id), 0, -1)]


def test_a_redelivered_succeeded_task_id_does_not_run_again(
    client: Celery, queue: str, recorder: redis.Redis
) -> None:
    label, task_id = unique("once"), str(uuid.uuid4())
    origin = {"topic": "orders", "partition": 2, "offset": 41, "key": "k", "timestamp": 1700}
    headers = {f"ckb_{name}": value for name, value in origin.items()}

    first = client.send_task(
        "it.base.once", args=[label], task_id=task_id, queue=queue, headers=headers
    )
    assert first.get(timeout=RESULT_TIMEOUT) == {"runs": 1}

    second = client.send_task(
        "it.base.once", args=[label], task_id=task_id, queue=queue, headers=headers
    )
    wait_for(
        lambda: len(deliveries(recorder, task_id)) == 2,
        RESULT_TIMEOUT,
        "the worker to handle the second delivery",
    )
    assert [d["state"] for d in deliveries(recorder, task_id)] == ["SUCCESS", "SUCCESS"]
    assert deliveries(recorder, task_id)[1]["retval"] == {"runs": 1}, "the stored result"
    assert second.get(timeout=RESULT_TIMEOUT) == {"runs": 1}
    assert second.state == "SUCCESS"
    body_runs = runs(recorder, label)
    assert len(body_runs) == 1, "the body ran again for a task id that had succeeded"
    assert body_runs[0]["origin"] == origin, "kafka_origin() reads the ckb_* message headers"


def test_a_transient_error_is_retried_until_success(
    client: Celery, queue: str, recorder: redis.Redis
) -> None:
    label, task_id = unique("flaky"), str(uuid.uuid4())
    result = client.send_task("it.base.flaky", args=[label, 2], task_id=task_id, queue=queue)
    assert result.get(timeout=RESULT_TIMEOUT) == "ok"
    assert result.state == "SUCCESS"
    assert [run["retries"] for run in runs(recorder, label)] == [0, 1, 2]
    wait_for(lambda: len(deliveries(recorder, task_id)) >= 3, 10, "the last delivery's record")
    # recorded as each delivery ends, and a retry can end before the delivery that sent it
    attempts = sorted(deliveries(recorder, task_id), key=lambda d: int(d["retries"]))
    assert [(d["retries"], d["state"]) for d in attempts] == [
        (0, "RETRY"),
        (1, "RETRY"),
        (2, "SUCCESS"),
    ]


def test_a_non_retryable_error_fails_after_one_run(
    client: Celery, queue: str, recorder: redis.Redis
) -> None:
    label, task_id = unique("broken"), str(uuid.uuid4())
    result = client.send_task("it.base.broken", args=[label], task_id=task_id, queue=queue)
    with pytest.raises(Exception, match="planned permanent failure") as raised:
        result.get(timeout=RESULT_TIMEOUT)
    assert type(raised.value).__name__ == "PermanentFailure"
    assert result.state == "FAILURE"
    assert len(runs(recorder, label)) == 1
    wait_for(lambda: len(deliveries(recorder, task_id)) >= 1, 10, "the delivery's record")
    assert [d["state"] for d in deliveries(recorder, task_id)] == ["FAILURE"]
