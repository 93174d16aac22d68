"""The failure path on real services: task failures, retries, bad input, lost tasks, outages."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewTopic,
)

from bridge.stack import LocalStack, StackInfo, find_redis_server
from tests.figures import figure
from tests.integration.harness import (
    REDIS_DOWN,
    SHARED_QUEUE,
    Executions,
    Kafka,
    Worker,
    bridge_config,
    free_port,
    start_bridge,
    start_worker,
    unique,
    wait_for,
)

CONTRACT_HEADERS = {
    "ckb.reason", "ckb.original.topic", "ckb.original.partition", "ckb.original.offset",
    "ckb.original.timestamp", "ckb.group", "ckb.task.name", "ckb.task.id", "ckb.attempts",
    "ckb.error.class", "ckb.error.message", "ckb.error.traceback", "ckb.failed.at",
}  # fmt: skip


def dlq_messages(kafka: Kafka, topic: str) -> list[dict[str, object]]:
    """Every record on a DLQ topic, with its headers decoded (values stay bytes)."""
    expected = sum(kafka.end_offsets(topic).values())
    messages = kafka.read_all(topic, expected)
    assert len(messages) == expected
    return [
        {"key": m.key(), "value": m.value(), "headers": dict(m.headers() or [])} for m in messages
    ]


def test_failures_retries_and_malformed_records(
    stack: StackInfo, kafka: Kafka, executions: Executions, shared_worker: Worker, work_dir: Path
) -> None:
    partitions, total = 4, 2000
    topic = kafka.create_topic(partitions)
    group = unique("g-fail")
    malformed = {137, 555, 1020, 1503, 1999}

    def value(n: int) -> bytes:
        if n in malformed:
            return b"\xff not json \x00"
        mode = "always_fail" if n % 10 == 3 else "fail_once" if n % 10 == 7 else "ok"
        return json.dumps({"n": n, "mode": mode, "sleep_ms": n % 5}).encode()

    kafka.produce(
        topic,
        (value(n) for n in range(total)),
        keys=[f"k{n}".encode() for n in range(total)],
        partition_of=lambda n: n % partitions,
        headers=[("trace", b"\x01\x02 original")],
    )
    route = {"topic": topic, "task": "it.record", "queue": SHARED_QUEUE}
    bridge = start_bridge(bridge_config(stack, group, [route]), work_dir)
    started = time.monotonic()
    try:
        wait_for(lambda: kafka.caught_up(group, topic, partitions), 240, "commits")
        elapsed = time.monotonic() - started
    finally:
        exit_code = bridge.terminate()
    assert exit_code == 0, bridge.log_tail()

    always = {n for n in range(total) if n % 10 == 3 and n not in malformed}
    once = {n for n in range(total) if n % 10 == 7 and n not in malformed}
    dead = dlq_messages(kafka, f"{topic}.dlq")
    reasons = Counter(d["headers"]["ckb.reason"] for d in dead)  # type: ignore[index]
    assert reasons == {b"task_failed": len(always), b"decode_error": len(malformed)}

    failed_ns = []
    for d in dead:
        headers = d["headers"]
        assert isinstance(headers, dict)
        assert set(headers) >= CONTRACT_HEADERS, CONTRACT_HEADERS - set(headers)
        assert headers["trace"] == b"\x01\x02 original"  # original headers byte for byte
        assert headers["ckb.original.topic"] == topic.encode()
        assert headers["ckb.group"] == group.encode()
        if headers["ckb.reason"] == b"task_failed":
            n = json.loads(d["value"])["n"]  # type: ignore[arg-type]
            failed_ns.append(n)
            assert d["key"] == f"k{n}".encode()
            assert headers["ckb.attempts"] == b"1"
            assert headers["ckb.error.class"] == b"PlannedFailure"
            assert b"always fails" in headers["ckb.error.message"]
            assert b"PlannedFailure" in headers["ckb.error.traceback"]
            assert headers["ckb.task.name"] == b"it.record"
            assert int(headers["ckb.original.offset"]) == n // partitions
        else:
            assert d["value"] == b"\xff not json \x00"
            assert b"not valid UTF-8" in headers["ckb.error.message"]
    assert sorted(failed_ns) == sorted(always), "each failing record dead-lettered exactly once"

    ran = {run["payload"]["n"] for run in executions.of(topic)}
    assert once <= ran, "records that failed once then retried must succeed"
    assert not (always & ran), "always-failing records never record a success"
    ok = set(range(total)) - always - once - malformed
    assert ok <= ran
    figure(
        f"failure path: {total} records in {elapsed:.1f}s; DLQ task_failed={len(always)}, "
        f"decode_error={len(malformed)}; fail-once succeeded={len(once & ran)}"
    )


def test_worker_killed_mid_task_is_redispatched_after_task_timeout(
    stack: StackInfo, kafka: Kafka, executions: Executions, work_dir: Path
) -> None:
    topic = kafka.create_topic(1)
    group, queue = unique("g-kill"), unique("q-kill")
    records = [{"n": n, "sleep_ms": 3000, "mark_start": True} for n in range(2)]
    kafka.produce(topic, [json.dumps(r).encode() for r in records])
    route = {
        "topic": topic, "task": "it.record", "queue": queue,
        "task_timeout": 6, "max_redispatch": 3,
    }  # fmt: skip
    victim = start_worker(stack, queue, work_dir, concurrency=1, pool="solo")
    bridge = start_bridge(bridge_config(stack, group, [route]), work_dir)
    rescuer: Worker | None = None
    try:
        # the task recorded that it started: the kill lands inside its 3 s
        wait_for(lambda: executions.started(topic) > 0, 60, "the worker to start a task")
        os.kill(victim.process.pid, signal.SIGKILL)
        victim.process.wait(10)
        assert executions.count(topic) == 0
        assert kafka.committed(group, topic, 1)[0] <= 0, "committed past the running task"
        (work_dir / "rescuer").mkdir()
        rescuer = start_worker(stack, queue, work_dir / "rescuer", concurrency=2)
        wait_for(lambda: kafka.caught_up(group, topic, 1), 90, "commits after the kill")
        assert "sending it again" in bridge.log_tail(20000)
    finally:
        exit_code = bridge.terminate()
        if rescuer is not None:
            rescuer.stop()
    assert exit_code == 0, bridge.log_tail()
    assert {run["payload"]["n"] for run in executions.of(topic)} == {0, 1}


def test_unwritable_dlq_holds_the_commit_until_writes_succeed(
    stack: StackInfo, kafka: Kafka, shared_worker: Worker, work_dir: Path
) -> None:
    topic = kafka.create_topic(1)
    dlq = f"{topic}.dlq"
    admin = AdminClient({"bootstrap.servers": stack.kafka_bootstrap})
    # a DLQ topic that refuses every dead letter: they are bigger than 200 bytes
    admin.create_topics([NewTopic(dlq, 1, 1, config={"max.message.bytes": "200"})])[dlq].result(30)
    group, total = unique("g-dlqdown"), 20
    kafka.produce(
        topic, [json.dumps({"n": n, "mode": "always_fail"}).encode() for n in range(total)]
    )
    # a second topic of the same bridge: its record committed shows a commit turn took place
    canary = kafka.create_topic(1)
    routes = [
        {"topic": topic, "task": "it.record", "queue": SHARED_QUEUE},
        {"topic": canary, "task": "it.record", "queue": SHARED_QUEUE},
    ]
    metrics = {"enabled": True, "host": "127.0.0.1", "port": free_port()}
    bridge = start_bridge(bridge_config(stack, group, routes, metrics=metrics), work_dir)
    try:
        # every task failed and the bridge knows it: only the dead letters hold the commit
        wait_for(
            lambda: bridge.metrics()["ckb_tasks_finished_total"] >= total,
            60,
            f"the bridge to see {total} tasks fail",
        )
        # each letter is tried alone, then without its value (still over 200 bytes): refused,
        # it waits for an operator with its value kept, so it lands whole after the fix
        wait_for(
            lambda: _refused(bridge.config["metrics"]["port"], dlq) == total,
            60,
            f"all {total} dead letters refused (too large even without their values)",
        )
        # a commit turn after both: the canary's record is committed, the failed ones are not
        kafka.produce(canary, [json.dumps({"n": "canary"}).encode()])
        wait_for(lambda: kafka.caught_up(group, canary, 1), 60, "the canary record's commit")
        assert bridge.alive(), bridge.log_tail()
        assert kafka.committed(group, topic, 1)[0] <= 0, "committed although the DLQ refused"
        assert sum(kafka.end_offsets(dlq).values()) == 0
        resource = ConfigResource(
            ConfigResource.Type.TOPIC,
            dlq,
            incremental_configs=[
                ConfigEntry(
                    "max.message.bytes",
                    "1048576",
                    incremental_operation=AlterConfigOpType.SET,
                )
            ],
        )
        for future in admin.incremental_alter_configs([resource]).values():
            future.result(30)
        wait_for(lambda: kafka.caught_up(group, topic, 1), 90, "commit after recovery")
    finally:
        exit_code = bridge.terminate()
    assert exit_code == 0, bridge.log_tail()
    dead = dlq_messages(kafka, dlq)
    numbers = sorted(json.loads(d["value"])["n"] for d in dead)  # type: ignore[arg-type]
    assert numbers == list(range(total)), "every record dead-lettered exactly once"


def _refused(port: int, dlq: str) -> float:
    """``ckb_dlq_pending_records{dlq_topic=dlq, state="refused"}`` from the bridge's /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    pattern = rf'ckb_dlq_pending_records{{dlq_topic="{re.escape(dlq)}",state="refused"}} (\S+)'
    found = re.search(pattern, text)
    return float(found.group(1)) if found else 0.0


@pytest.fixture
def recorder(tmp_path: Path) -> Iterator[str]:
    """A second redis-server for execution records, so restarting the stack's Redis keeps them."""
    port = free_port()
    process = subprocess.Popen(
        [
            str(find_redis_server()),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(tmp_path),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    wait_for(lambda: _pings(url), 20, "the recorder Redis")
    yield url
    process.terminate()
    process.wait(10)


def _pings(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url).ping())
    except redis.ConnectionError:
        return False


def test_redis_restart_mid_run_loses_no_record(
    local_stack: LocalStack, stack: StackInfo, kafka: Kafka, recorder: str, work_dir: Path
) -> None:
    partitions, total = 3, 600
    topic = kafka.create_topic(partitions)
    group, queue = unique("g-redis"), unique("q-redis")
    kafka.produce(
        topic,
        (json.dumps({"n": n, "sleep_ms": 20}).encode() for n in range(total)),
        partition_of=lambda n: n % partitions,
    )
    worker = start_worker(
        stack, queue, work_dir, concurrency=4, env={"CKB_IT_RECORDER_URL": recorder}
    )
    route = {"topic": topic, "task": "it.record", "queue": queue, "task_timeout": 10}
    bridge = start_bridge(bridge_config(stack, group, [route]), work_dir)
    runs = Executions(redis.Redis.from_url(recorder))
    try:
        wait_for(lambda: runs.count(topic) >= 100, 60, "the first hundred records")
        local_stack.stop_redis()  # queued tasks and stored results are gone with it
        # Redis stays away until the bridge noticed (its result watcher lost the connection)
        wait_for(
            lambda: REDIS_DOWN in bridge.log_tail(200_000), 30, "the bridge to notice Redis left"
        )
        local_stack.start_redis()
        wait_for(lambda: kafka.caught_up(group, topic, partitions), 180, "recovery")
        assert bridge.alive(), "the bridge must recover without a restart"
        # the queued tasks vanished with Redis: only re-sending after task_timeout finds them
        assert "sending it again" in bridge.log_tail(50000)
    finally:
        local_stack.start_redis()  # idempotent; other tests share this Redis
        exit_code = bridge.terminate()
        worker.stop()
    assert exit_code == 0, bridge.log_tail()
    done = Counter(run["payload"]["n"] for run in runs.of(topic))
    assert set(done) == set(range(total)), f"lost: {sorted(set(range(total)) - set(done))[:10]}"
    figure(
        f"redis restart: {total} records, {sum(done.values()) - total} duplicate runs "
        "(a task that ran but whose result was lost with Redis runs again)"
    )
