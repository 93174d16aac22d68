"""The core path on real services: Kafka record → Celery task → result → contiguous commit."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

from bridge.stack import StackInfo
from tests.figures import figure
from tests.integration.harness import (
    REPO,
    SHARED_QUEUE,
    Executions,
    Kafka,
    Worker,
    bridge_config,
    start_bridge,
    unique,
    wait_for,
    worker_env,
)


def record_route(topic: str) -> dict[str, object]:
    return {"topic": topic, "task": "it.record", "queue": SHARED_QUEUE, "call": "arg"}


class CommitProbe:
    """Samples a group's committed offsets while a bridge runs: (time read, offsets)."""

    def __init__(self, kafka: Kafka, group: str, topic: str, partitions: int) -> None:
        self.samples: list[tuple[float, dict[int, int]]] = []
        self._args = (group, topic, partitions)
        self._kafka = kafka
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.25):
            committed = self._kafka.committed(*self._args)
            self.samples.append((time.time(), committed))

    def __enter__(self) -> CommitProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(15)


def test_5000_records_out_of_order_never_commit_ahead(
    stack: StackInfo, kafka: Kafka, executions: Executions, shared_worker: Worker, work_dir: Path
) -> None:
    partitions, total = 6, 5000
    topic = kafka.create_topic(partitions)
    group = unique("g-core")
    rng = random.Random(7)
    payloads = [{"n": i, "sleep_ms": rng.randint(0, 50)} for i in range(total)]
    kafka.produce(
        topic, (json.dumps(p).encode() for p in payloads), partition_of=lambda i: i % partitions
    )

    bridge = start_bridge(bridge_config(stack, group, [record_route(topic)]), work_dir)
    started = time.monotonic()
    try:
        with CommitProbe(kafka, group, topic, partitions) as probe:
            wait_for(
                lambda: kafka.caught_up(group, topic, partitions),
                240,
                "committed offsets to reach the end of every partition",
                interval=0.5,
            )
        elapsed = time.monotonic() - started
        assert bridge.alive(), bridge.log_tail()
    finally:
        exit_code = bridge.terminate()
    assert exit_code == 0, bridge.log_tail()

    runs = executions.of(topic)
    done = Counter((run["ckb_partition"], run["ckb_offset"]) for run in runs)
    assert len(done) == total, f"{total - len(done)} records never ran"
    for run in runs:  # the Kafka coordinates arrived as Celery headers
        n = run["payload"]["n"]
        assert run["ckb_topic"] == topic
        assert run["ckb_partition"] == n % partitions
        assert run["ckb_offset"] == n // partitions
        assert isinstance(run["ckb_timestamp"], int) and run["ckb_timestamp"] > 0

    finished_at = {}
    for run in runs:
        key = (run["ckb_partition"], run["ckb_offset"])
        finished_at[key] = min(finished_at.get(key, run["end"]), run["end"])
    ahead = [
        (p, offset, committed)
        for read_at, sample in probe.samples
        for p, committed in sample.items()
        for offset in range(max(committed, 0))
        if finished_at.get((p, offset), float("inf")) > read_at
    ]
    assert len(probe.samples) > 10, "the probe should have sampled during the run"
    assert not ahead, f"committed past unfinished records: {ahead[:5]}"
    figure(
        f"core path: {total} records, {partitions} partitions, {elapsed:.1f}s, "
        f"{total / elapsed:.0f} records/s, {sum(done.values()) - total} duplicate runs, "
        f"{len(probe.samples)} commit samples"
    )


def test_restart_after_sigterm_redispatches_nothing_finished(
    stack: StackInfo, kafka: Kafka, executions: Executions, shared_worker: Worker, work_dir: Path
) -> None:
    partitions, total = 3, 900
    topic = kafka.create_topic(partitions)
    group = unique("g-restart")
    rng = random.Random(11)
    values = (json.dumps({"n": i, "sleep_ms": rng.randint(0, 30)}).encode() for i in range(total))
    kafka.produce(topic, values, partition_of=lambda i: i % partitions)
    # a small window, so the first bridge is stopped with most records not yet dispatched
    route = {**record_route(topic), "max_in_flight": 20}
    config = bridge_config(stack, group, [route])

    first = start_bridge(config, work_dir, "first")
    try:
        wait_for(lambda: executions.count(topic) >= total // 3, 120, "a third of the records")
    finally:
        first_exit = first.terminate()
    assert first_exit == 0, first.log_tail()
    ran_before_restart = executions.count(topic)
    assert ran_before_restart < total, "the first bridge should stop mid-stream"

    second = start_bridge(config, work_dir, "second")
    try:
        wait_for(
            lambda: kafka.caught_up(group, topic, partitions),
            180,
            "the restarted bridge to commit everything",
            interval=0.5,
        )
    finally:
        second_exit = second.terminate()
    assert second_exit == 0, second.log_tail()

    runs = Counter((r["ckb_partition"], r["ckb_offset"]) for r in executions.of(topic))
    assert len(runs) == total
    duplicates = {key: n for key, n in runs.items() if n > 1}
    assert not duplicates, f"records ran twice after a clean restart: {list(duplicates)[:5]}"


def test_worker_module_does_not_import_bridge(stack: StackInfo) -> None:
    code = (
        "import sys, tests.integration.worker_app as w; "
        "assert 'it.record' in w.app.tasks; "
        "assert not any(m == 'bridge' or m.startswith('bridge.') for m in sys.modules), "
        "'worker imported bridge'"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env={**worker_env(stack), "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
