"""Flower as the local stack runs it (``ckb stack up --flower``) lists the bridge's tasks.

Two views of one bridge run: Flower's HTTP API, and its task list page rendered by a real
headless Chromium (Debian's ``chromium`` package). The page's rows come from JavaScript
(DataTables fetching ``/tasks/datatable``), so finding a task id in the rendered DOM means a
browser really drew it.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bridge.stack import LocalStack, StackInfo
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

RECORDS = 10  # fewer than the task list's first page (15 rows)
CHROMIUM_HINT = (
    "Chromium not found (no chromium on PATH); this test needs a real browser. `make test` "
    "(which CI runs) installs Debian's chromium package with apt-get when it is missing and "
    "you are root; otherwise: sudo apt-get install chromium"
)


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


@dataclass(frozen=True)
class Dispatched:
    flower: str  # Flower's base URL
    worker: str  # the worker's node name
    task_ids: frozenset[str]


@pytest.fixture(scope="module")
def flower(local_stack: LocalStack, stack: StackInfo) -> Iterator[str]:
    """``ckb stack up --flower`` on the session's stack: Flower becomes one of its processes."""
    port = free_port()
    argv = [sys.executable, "-m", "bridge", "stack", "up", "--flower", "--flower-port", str(port),
            "--state-dir", str(local_stack.state_dir),
            "--kafka-port", str(local_stack.kafka_port),
            "--redis-port", str(local_stack.redis_port)]  # fmt: skip
    # the API test reads /api/tasks, closed without this (Flower listens on 127.0.0.1 only)
    env = {**os.environ, "FLOWER_UNAUTHENTICATED_API": "true", "PYTHONPATH": str(REPO)}
    started = time.monotonic()
    done = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    url = f"http://127.0.0.1:{port}"
    assert f"flower: {url}" in done.stdout, done.stdout
    assert answers(f"{url}/healthcheck")
    print(f"ckb stack up --flower: {time.monotonic() - started:.1f}s")
    try:
        yield url
    finally:
        local_stack.stop_flower()
        assert not answers(f"{url}/healthcheck")


@pytest.fixture(scope="module")
def dispatched(
    stack: StackInfo, kafka: Kafka, flower: str, tmp_path_factory: pytest.TempPathFactory
) -> Dispatched:
    work_dir = tmp_path_factory.mktemp("flower")
    queue = unique("it-flower")
    # -E: the worker sends task events from its first task (Flower also turns them on itself)
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
    ids = frozenset(
        task_id_for(group, topic, m.partition(), m.offset(), m.timestamp()[1], 0)
        for m in kafka.read_all(topic, RECORDS)
    )
    assert len(ids) == RECORDS
    return Dispatched(flower, f"{queue}@{socket.gethostname()}", ids)


def test_flower_api_lists_the_tasks_the_bridge_dispatched(dispatched: Dispatched) -> None:
    def listed() -> dict[str, Any]:
        tasks: dict[str, Any] = get_json(f"{dispatched.flower}/api/tasks?limit=10000")
        return {task_id: task for task_id, task in tasks.items() if task_id in dispatched.task_ids}

    wait_for(lambda: len(listed()) == RECORDS, 30, "Flower to list every dispatched task")
    tasks = listed()
    assert {task["name"] for task in tasks.values()} == {"it.record"}
    assert {task["state"] for task in tasks.values()} == {"SUCCESS"}
    assert {task["worker"] for task in tasks.values()} == {dispatched.worker}


def find_chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.fail(CHROMIUM_HINT)
    return found


def render_dom(chromium: str, url: str, profile: Path) -> str:
    """The page's DOM after its scripts ran (virtual time waits for their requests)."""
    argv = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
            "--disable-dev-shm-usage", f"--user-data-dir={profile}",
            "--virtual-time-budget=15000", "--dump-dom", url]  # fmt: skip
    # its own session: a timeout ends the browser's helper processes too, not only the first
    browser = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        out, err = browser.communicate(timeout=60)
    finally:
        if browser.poll() is None:
            os.killpg(browser.pid, signal.SIGKILL)
            browser.communicate()
    assert browser.returncode == 0, f"chromium failed ({browser.returncode}): {err[-2000:]}"
    return out


def test_flower_task_list_in_a_headless_browser_shows_a_dispatched_task(
    dispatched: Dispatched, tmp_path: Path
) -> None:
    chromium = find_chromium()
    # the task list, filtered to this test's worker the way Flower's own links do it
    url = f"{dispatched.flower}/tasks?worker={urllib.parse.quote(dispatched.worker)}"
    rendered: dict[str, str] = {}
    attempts = itertools.count()

    def rows_drawn() -> bool:
        rendered["dom"] = render_dom(chromium, url, tmp_path / f"profile-{next(attempts)}")
        return all(f'id="{task_id}"' in rendered["dom"] for task_id in dispatched.task_ids)

    started = time.monotonic()
    wait_for(rows_drawn, 45, "Chromium to show every dispatched task in Flower's task list")
    print(f"rendered the task list in {time.monotonic() - started:.1f}s")
    dom = rendered["dom"]
    assert "it.record" in dom and "SUCCESS" in dom
    assert "No tasks to show" not in dom
