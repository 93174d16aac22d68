"""``ckb dlq replay`` on real services: dead-letter, fix, replay; nothing lost or doubled."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import redis

from bridge.stack import StackInfo
from tests.integration.harness import (
    REPO,
    SHARED_QUEUE,
    BridgeProcess,
    Executions,
    Kafka,
    Worker,
    bridge_config,
    start_bridge,
    unique,
    wait_for,
)

BROKEN_KEY = "ckb-it:broken"  # while it exists, ``mode: broken_until_fixed`` records fail
PARTITIONS = 2
TOTAL = 50
OWN_HEADERS = [("trace-id", b"\x00\x01\xfe"), ("empty", b"")]
SUMMARY = re.compile(
    r"^(done|dry run): examined (\d+), (?:replayed|would replay) (\d+), "
    r"filtered out (\d+), skipped (\d+)$",
    re.M,
)


def replay(config_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bridge", "dlq", "replay", "-c", str(config_path), *args],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )


def summary(result: subprocess.CompletedProcess[str]) -> dict[str, int]:
    """The summary line's counts; fails with the whole output when the run did not succeed."""
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    match = SUMMARY.search(result.stdout)
    assert match is not None, result.stdout
    names = ("examined", "replayed", "filtered", "skipped")
    return dict(zip(names, (int(n) for n in match.groups()[1:]), strict=True))


def headers_of(message: Any) -> dict[str, bytes | None]:
    return dict(message.headers() or [])


def fingerprint(message: Any) -> tuple[Any, ...]:
    """Everything a replay must keep: partition, key, value and headers, byte for byte."""
    return (message.partition(), message.key(), message.value(), tuple(message.headers() or ()))


def wait_bridge_caught_up(kafka: Kafka, bridge: BridgeProcess, group: str, topic: str) -> None:
    def caught_up() -> bool:
        assert bridge.alive(), bridge.log_tail()
        return kafka.caught_up(group, topic, PARTITIONS)

    wait_for(caught_up, 60, f"the bridge to commit the end of {topic}", interval=0.3)


def total(offsets: dict[int, int]) -> int:
    return sum(offsets.values())


def test_dead_letters_replay_after_the_fix_exactly_once(
    stack: StackInfo, kafka: Kafka, executions: Executions, shared_worker: Worker, work_dir: Path
) -> None:
    recorder = redis.Redis.from_url(f"{stack.redis_url}/2")
    topic = kafka.create_topic(PARTITIONS, prefix="it-replay")
    dlq = f"{topic}.dlq"
    group = unique("g-replay")
    recorder.set(BROKEN_KEY, "1")
    values = [json.dumps({"n": i, "mode": "broken_until_fixed"}).encode() for i in range(TOTAL)]
    keys = [f"k{i}".encode() for i in range(TOTAL)]
    kafka.produce(topic, values, keys, lambda i: i % PARTITIONS, OWN_HEADERS)
    route = {"topic": topic, "task": "it.record", "queue": SHARED_QUEUE}
    bridge = start_bridge(bridge_config(stack, group, [route]), work_dir)
    try:
        # 1. every record fails and is dead-lettered, with the original record inside
        wait_bridge_caught_up(kafka, bridge, group, topic)
        assert total(kafka.end_offsets(dlq)) == TOTAL
        letters = kafka.read_all(dlq, TOTAL)
        assert len(letters) == TOTAL
        for letter in letters:
            headers = headers_of(letter)
            assert headers["ckb.reason"] == b"task_failed"
            assert headers["ckb.original.topic"] == topic.encode()
            assert headers["trace-id"] == b"\x00\x01\xfe"
        assert sorted(json.loads(m.value())["n"] for m in letters) == list(range(TOTAL))
        assert executions.count(topic) == 0
        replay_group = f"ckb-replay.{dlq}"

        # 2. a dry run lists them and changes nothing
        dry = replay(bridge.config_path, "--from", dlq, "--dry-run")
        assert summary(dry) == {"examined": TOTAL, "replayed": TOTAL, "filtered": 0, "skipped": 0}
        assert f"{TOTAL} dead letters selected" in dry.stdout
        assert dry.stdout.count("task_failed") >= TOTAL
        assert "PlannedFailure" in dry.stdout
        assert "broken_until_fixed" not in dry.stdout + dry.stderr, "payload in the output"
        assert total(kafka.end_offsets(topic)) == TOTAL, "a dry run produced records"
        assert kafka.committed(replay_group, dlq, 1) == {0: -1001}, "a dry run committed"

        # 3. fix the task, replay: all 50 run once, back on their original partitions
        recorder.delete(BROKEN_KEY)
        done = replay(bridge.config_path, "--from", dlq)
        assert summary(done) == {"examined": TOTAL, "replayed": TOTAL, "filtered": 0, "skipped": 0}
        assert "task_failed" in done.stdout  # the per-reason table
        assert kafka.committed(replay_group, dlq, 1) == kafka.end_offsets(dlq)
        assert total(kafka.end_offsets(topic)) == 2 * TOTAL
        wait_bridge_caught_up(kafka, bridge, group, topic)
        wait_for(lambda: executions.count(topic) >= TOTAL, 30, "the replayed tasks")
        runs = [run["payload"]["n"] for run in executions.of(topic)]
        assert sorted(runs) == list(range(TOTAL)), Counter(runs).most_common(3)
        records = kafka.read_all(topic, 2 * TOTAL)
        first = [fingerprint(m) for m in records if m.offset() < TOTAL // PARTITIONS]
        again = [fingerprint(m) for m in records if m.offset() >= TOTAL // PARTITIONS]
        assert Counter(again) == Counter(first), "replayed records differ from the originals"
        assert not any(name.startswith("ckb.") for m in records for name in headers_of(m))

        # 4. progress was committed: a second replay finds nothing to do
        nothing = replay(bridge.config_path, "--from", dlq)
        assert summary(nothing) == {"examined": 0, "replayed": 0, "filtered": 0, "skipped": 0}
        assert total(kafka.end_offsets(topic)) == 2 * TOTAL

        # 5. --reason: two undecodable records join the DLQ; replay only those, elsewhere
        bad = [b"\xff\xfe not json", b'{"n": 1']
        kafka.produce(topic, bad, [b"bad-0", b"bad-1"], lambda i: i, OWN_HEADERS)
        wait_bridge_caught_up(kafka, bridge, group, topic)
        assert total(kafka.end_offsets(dlq)) == TOTAL + len(bad)
        scratch = kafka.create_topic(1, prefix="it-replay-to")
        other_group = unique("g-replay-reason")
        chosen = replay(
            bridge.config_path,
            *("--from", dlq, "--reason", "decode_error", "--group", other_group, "--to", scratch),
        )
        assert summary(chosen) == {"examined": 52, "replayed": 2, "filtered": 50, "skipped": 0}
        assert kafka.committed(other_group, dlq, 1) == kafka.end_offsets(dlq)
        copies = kafka.read_all(scratch, len(bad))
        assert sorted((m.key(), m.value()) for m in copies) == [
            (b"bad-0", bad[0]),
            (b"bad-1", bad[1]),
        ]
        assert all(m.headers() == OWN_HEADERS for m in copies)
        assert total(kafka.end_offsets(scratch)) == len(bad)
    finally:
        recorder.delete(BROKEN_KEY)
        recorder.close()
        exit_code = bridge.terminate()
    assert exit_code == 0, bridge.log_tail()
