"""Flower, started against the test Redis, lists the tasks the bridge dispatched."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bridge.stack import StackInfo
from bridge.task_ids import task_id_for
from tests.integration.harness import (
    REPO,
    Kafka,
    free_port,
    run_bridge_to_end,
    start_worker,
    unique,
    wait_for,
)

RECORDS = 20


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


@pytest.fixture
def flower(stack: StackInfo, work_dir: Path) -> Iterator[str]:
    """A real ``celery flower`` on a free port, its API open (127.0.0.1 only)."""
    port = free_port()
    log_path = work_dir / "flower.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "celery", "--broker", f"{stack.redis_url}/0",
             "--result-backend", f"{stack.redis_url}/1",
             "flower", "--address=127.0.0.1", f"--port={port}"],
            cwd=REPO,
            env={**os.environ, "FLOWER_UNAUTHENTICATED_API": "true"},
            stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: answers(f"{url}/healthcheck"), 60, f"Flower ({log_path})")
        yield url
    finally:
        process.terminate()
        process.wait(20)


def test_flower_lists_the_tasks_the_bridge_dispatched(
    stack: StackInfo, kafka: Kafka, work_dir: Path, flower: str
) -> None:
    queue = unique("it-flower")
    # -E: the worker sends task events, which is what Flower shows
    worker = start_worker(stack, queue, work_dir, concurrency=2, extra_args=("-E",))
    topic = kafka.create_topic(2, "flower")
    kafka.produce(
        topic, [json.dumps({"n": n}).encode() for n in range(RECORDS)], partition_of=lambda i: i % 2
    )
    route = {"topic": topic, "task": "it.record", "queue": queue}
    try:
        bridge = run_bridge_to_end(stack, kafka, work_dir, [route], partitions=2)
    finally:
        worker.stop()
    group = bridge.config["kafka"]["group_id"]

    expected = {
        task_id_for(group, topic, m.partition(), m.offset(), m.timestamp()[1], 0)
        for m in kafka.read_all(topic, RECORDS)
    }
    assert len(expected) == RECORDS

    def listed() -> dict[str, Any]:
        tasks: dict[str, Any] = get_json(f"{flower}/api/tasks?limit=10000")
        return {task_id: task for task_id, task in tasks.items() if task_id in expected}

    wait_for(lambda: len(listed()) == RECORDS, 30, "Flower to list every dispatched task")
    tasks = listed()
    assert {task["name"] for task in tasks.values()} == {"it.record"}
    assert {task["state"] for task in tasks.values()} == {"SUCCESS"}
