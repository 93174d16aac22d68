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


#: the header a first replay adds
COUNTED = [("ckb.replay.count", b"1")]


def fingerprint(message: Any, strip: list[tuple[str, bytes]] | None = None) -> tuple[Any, ...]:
    """Everything a replay must keep: partition, key, value and headers, byte for byte
    (without the headers in ``strip``)."""
    headers = tuple(h for h in message.headers() or () if h not in (strip or []))
    return (message.partition(), message.key(), message.value(), headers)


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
        first = [m for m in records if m.offset() < TOTAL // PARTITIONS]
        again = [m for m in records if m.offset() >= TOTAL // PARTITIONS]
        assert Counter(fingerprint(m, strip=COUNTED) for m in again) == Counter(
            fingerprint(m) for m in first
        ), "replayed records differ from the originals"
        assert not any(name.startswith("ckb.") for m in first for name in headers_of(m))
        # the only ckb.* header of a replayed record: it was replayed once
        assert all([h for h in m.headers() if h[0].startswith("ckb.")] == COUNTED for m in again)

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
        assert all(m.headers() == OWN_HEADERS + COUNTED for m in copies)
        assert total(kafka.end_offsets(scratch)) == len(bad)
    finally:
        recorder.delete(BROKEN_KEY)
        recorder.close()
        exit_code = bridge.terminate()
    assert exit_code == 0, bridge.log_tail()


TRUST_SUMMARY = re.compile(
    r"^(?:done|dry run): examined (\d+), (?:replayed|would replay) (\d+), filtered out (\d+), "
    r"skipped (\d+)(?:, refused (\d+))?$",
    re.M,
)


def trust_summary(result: subprocess.CompletedProcess[str]) -> dict[str, int]:
    """The summary line's counts, refused included (0 when the line names none)."""
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    match = TRUST_SUMMARY.search(result.stdout)
    assert match is not None, result.stdout
    names = ("examined", "replayed", "filtered", "skipped", "refused")
    return {name: int(n or 0) for name, n in zip(names, match.groups(), strict=True)}


def hand_written_letter(
    group: str, original_topic: str, reason: str = "decode_error"
) -> list[tuple[str, bytes]]:
    """The ``ckb.*`` headers of a letter the bridge did not write (another group's, say)."""
    return [
        ("trace-id", b"hand"),
        ("ckb.reason", reason.encode()),
        ("ckb.original.topic", original_topic.encode()),
        ("ckb.original.partition", b"0"),
        ("ckb.original.offset", b"0"),
        ("ckb.group", group.encode()),
        ("ckb.failed.at", b"2026-01-01T00:00:00.000+00:00"),
    ]


def test_replay_refuses_a_poison_record_past_max_replays_and_letters_it_should_not_trust(
    stack: StackInfo, kafka: Kafka, executions: Executions, shared_worker: Worker, work_dir: Path
) -> None:
    topic = kafka.create_topic(1, prefix="it-replay-trust")
    dlq = f"{topic}.dlq"
    group = unique("g-replay-trust")
    route = {"topic": topic, "task": "it.record", "queue": SHARED_QUEUE}
    bridge = start_bridge(bridge_config(stack, group, [route]), work_dir)

    def dead_letters(count: int) -> None:
        def written() -> bool:
            assert bridge.alive(), bridge.log_tail()
            return total(kafka.end_offsets(dlq)) >= count

        wait_for(written, 60, f"{count} dead letters in {dlq}", interval=0.3)

    try:
        # 1. a record that fails every time: dead-lettered, replayed, dead-lettered again...
        poison = json.dumps({"n": 0, "mode": "always_fail"}).encode()
        kafka.produce(topic, [poison], [b"poison"], None, OWN_HEADERS)
        dead_letters(1)
        for replays in (1, 2, 3):
            done = replay(bridge.config_path, "--from", dlq)
            assert trust_summary(done) == {
                "examined": 1, "replayed": 1, "filtered": 0, "skipped": 0, "refused": 0
            }  # fmt: skip
            dead_letters(1 + replays)
        letters = kafka.read_all(dlq, 4)
        # the bridge kept the replay count when it dead-lettered the replayed record again
        counts = [headers_of(m).get("ckb.replay.count") for m in letters]
        assert counts == [None, b"1", b"2", b"3"]
        assert all(m.value() == poison and m.key() == b"poison" for m in letters)

        # 2. the fourth replay refuses it: nothing produced, the letter stays in the DLQ
        refused = replay(bridge.config_path, "--from", dlq)
        assert trust_summary(refused) == {
            "examined": 1, "replayed": 0, "filtered": 0, "skipped": 0, "refused": 1
        }  # fmt: skip
        assert "refused 1: replayed --max-replays (3) times already" in refused.stdout
        assert f"they stay in {dlq}" in refused.stdout
        assert total(kafka.end_offsets(topic)) == 4, "a refused letter was produced"
        assert kafka.committed(f"ckb-replay.{dlq}", dlq, 1) == {0: 4}
        assert len(kafka.read_all(dlq, 4)) == 4
        # a dry run under another group finds it and says why
        listing = replay(
            bridge.config_path, "--from", dlq, "--group", unique("g-look"), "--dry-run"
        )
        assert trust_summary(listing)["refused"] == 1
        assert "1 dead letters refused" in listing.stdout and "max_replays" in listing.stdout

        # 3. letters the bridge did not write: another group's, and one for a topic no
        #    route consumes; refused by default
        legacy = kafka.create_topic(1, prefix="it-replay-legacy")
        foreign = [json.dumps({"n": 10}).encode(), json.dumps({"n": 11}).encode()]
        kafka.produce(dlq, foreign[:1], [b"k10"], None, hand_written_letter("other", topic))
        kafka.produce(dlq, foreign[1:], [b"k11"], None, hand_written_letter(group, legacy))
        strangers = replay(bridge.config_path, "--from", dlq)
        assert trust_summary(strangers) == {
            "examined": 2, "replayed": 0, "filtered": 0, "skipped": 0, "refused": 2
        }  # fmt: skip
        assert f"refused 1: ckb.group is not {group}" in strangers.stdout
        assert "refused 1: their ckb.original.topic is one no route consumes" in strangers.stdout
        assert total(kafka.end_offsets(topic)) == 4
        assert total(kafka.end_offsets(legacy)) == 0

        # 4. --any-group and --allow-any-topic, under another group, for those two only
        trusting = replay(
            bridge.config_path,
            *("--from", dlq, "--group", unique("g-trusting"), "--reason", "decode_error"),
            *("--any-group", "--allow-any-topic"),
        )
        assert trust_summary(trusting) == {
            "examined": 6, "replayed": 2, "filtered": 4, "skipped": 0, "refused": 0
        }  # fmt: skip
        wait_for(lambda: executions.count(topic) >= 1, 30, "the other group's record to run")
        assert [run["payload"]["n"] for run in executions.of(topic)] == [10]
        (moved,) = kafka.read_all(legacy, 1)
        assert (moved.key(), moved.value()) == (b"k11", foreign[1])
        assert moved.headers() == [("trace-id", b"hand"), ("ckb.replay.count", b"1")]
    finally:
        exit_code = bridge.terminate()
    assert exit_code == 0, bridge.log_tail()
