"""``ckb check-config --probe`` against real Celery workers: it says when the bridge could
never see the outcome of the tasks it sends, and why, before any record runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bridge.stack import StackInfo
from tests.integration.harness import (
    REPO,
    SHARED_QUEUE,
    Worker,
    bridge_config,
    start_worker,
    unique,
)

pytestmark = pytest.mark.integration


def check(stack: StackInfo, work_dir: Path, queue: str) -> subprocess.CompletedProcess[str]:
    route = {"topic": unique("t"), "task": "it.record", "queue": queue}
    config = work_dir / f"{queue}.yaml"
    config.write_text(yaml.safe_dump(bridge_config(stack, unique("g"), [route])))
    return subprocess.run(
        [sys.executable, "-m", "bridge", "check-config", "-c", str(config), "--probe"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_a_worker_that_ignores_results_is_named_with_the_fix(
    stack: StackInfo, shared_worker: Worker, work_dir: Path
) -> None:
    healthy = check(stack, work_dir, SHARED_QUEUE)
    assert healthy.returncode == 0, healthy.stderr
    assert "error:" not in healthy.stderr

    queue = unique("q-ignore")
    worker = start_worker(stack, queue, work_dir, env={"CKB_IT_IGNORE_RESULT": "1"})
    try:
        broken = check(stack, work_dir, queue)
    finally:
        worker.stop()
    assert broken.returncode == 1, broken.stderr
    assert f"worker {queue}@" in broken.stderr
    assert "task_ignore_result=True" in broken.stderr
    assert "Traceback" not in broken.stderr
