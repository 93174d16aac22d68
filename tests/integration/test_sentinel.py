"""The core path with Redis Sentinel as the Celery broker *and* the result backend.

A real Sentinel set (a master, one replica, three sentinels; started once per session, only
when these tests run), a real Celery worker given the same ``sentinel://`` URLs and options as
the bridge (``CKB_CELERY__OPTIONS``): records run and are committed after success, never ahead;
failures are dead-lettered; kill -9 of the bridge loses nothing; and a failover mid-run
(``SENTINEL FAILOVER``) loses nothing, commits nothing ahead, and the bridge follows the new
master.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import redis

from bridge.stack import StackInfo
from bridge.stack.paths import StatePaths
from bridge.stack.redis_server import RedisNode
from bridge.stack.sentinel import SentinelSet
from tests.figures import figure
from tests.integration.harness import (
    REDIS_BACK,
    REDIS_DOWN,
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
from tests.integration.test_core_path import CommitProbe
from tests.integration.test_failure_path import dlq_messages
from tests.integration.test_rabbitmq import route, runs_of


@pytest.fixture(scope="session")
def sentinel_set(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelSet]:
    paths = StatePaths(tmp_path_factory.mktemp("sentinel"))
    master = RedisNode(paths, free_port(), "redis-master", label="Redis master")
    sentinels = SentinelSet(paths, master, free_port(), tuple(free_port() for _ in range(3)))
    sentinels.start()
    try:
        yield sentinels
    finally:
        sentinels.stop()


@pytest.fixture(scope="module")
def celery_settings(sentinel_set: SentinelSet) -> dict[str, Any]:
    """The bridge's ``celery`` section; the worker gets the same URLs and options."""
    transport = {"master_name": sentinel_set.master_name}
    return {
        "broker_url": sentinel_set.url(0),
        "result_backend": sentinel_set.url(1),
        "options": {
            "broker_transport_options": transport,
            "result_backend_transport_options": transport,
            # what a worker behind Sentinel wants: a result write that meets a failover is
            # retried on the new master instead of being lost
            "result_backend_always_retry": True,
        },
    }


@pytest.fixture(scope="module")
def queue() -> str:
    return unique("q-sentinel")


@pytest.fixture(scope="module")
def sentinel_worker(
    stack: StackInfo,
    celery_settings: dict[str, Any],
    queue: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Worker]:
    env = {
        "CKB_CELERY__BROKER_URL": celery_settings["broker_url"],
        "CKB_CELERY__RESULT_BACKEND": celery_settings["result_backend"],
        "CKB_CELERY__OPTIONS": json.dumps(celery_settings["options"]),
    }
    worker = start_worker(stack, queue, tmp_path_factory.mktemp("sentinel-worker"), 8, env=env)
    yield worker
    worker.stop()


def config(
    stack: StackInfo, celery: dict[str, Any], group: str, routes: list[Any], **extra: Any
) -> dict[str, Any]:
    return bridge_config(stack, group, routes, celery=celery, **extra)


def master(sentinel_set: SentinelSet, db: int) -> redis.Redis:
    address = sentinel_set.master_address()
    assert address is not None, "a sentinel names the master"
    return redis.Redis(host=address[0], port=address[1], db=db)


def committed_ahead(
    probe: CommitProbe, executions: Executions, topic: str
) -> list[tuple[int, int]]:
    """Offsets a commit covered before their record's first run had finished."""
    finished_at: dict[tuple[int, int], float] = {}
    for run in executions.of(topic):
        key = (run["ckb_partition"], run["ckb_offset"])
        finished_at[key] = min(finished_at.get(key, run["end"]), run["end"])
    return [
        (p, offset)
        for read_at, sample in probe.samples
        for p, committed in sample.items()
        for offset in range(max(committed, 0))
        if finished_at.get((p, offset), float("inf")) > read_at
    ]


def test_records_run_through_sentinel_and_commit_after_success_never_ahead(
    stack: StackInfo,
    kafka: Kafka,
    executions: Executions,
    sentinel_set: SentinelSet,
    celery_settings: dict[str, Any],
    sentinel_worker: Worker,
    queue: str,
    work_dir: Path,
) -> None:
    partitions, total = 3, 600
    topic = kafka.create_topic(partitions, prefix="sentinel-core")
    group = unique("g-sentinel-core")
    values = (json.dumps({"n": n, "sleep_ms": n % 7}).encode() for n in range(total))
    kafka.produce(topic, values, partition_of=lambda n: n % partitions)
    bridge = start_bridge(config(stack, celery_settings, group, [route(topic, queue)]), work_dir)
    started = time.monotonic()
    try:
        with CommitProbe(kafka, group, topic, partitions) as probe:
            wait_for(lambda: kafka.caught_up(group, topic, partitions), 90, "all committed")
        elapsed = time.monotonic() - started
    finally:
        exit_code = bridge.terminate()
    assert exit_code == 0, bridge.log_tail()
    done = runs_of(executions, topic)
    assert len(done) == total, f"{total - len(done)} records never ran"
    assert not committed_ahead(probe, executions, topic), "committed past unfinished records"
    # the results are in the Sentinel master's database 1, not in the session's Redis
    with master(sentinel_set, 1) as results:
        assert results.exists(f"celery-task-meta-{executions.of(topic)[0]['task_id']}")
    figure(
        f"Sentinel/Sentinel core path: {total} records, {partitions} partitions, "
        f"{elapsed:.1f}s, {total / elapsed:.0f} records/s, {sum(done.values()) - total} "
        "duplicate runs"
    )


def test_a_failing_task_is_dead_lettered_through_sentinel(
    stack: StackInfo,
    kafka: Kafka,
    executions: Executions,
    celery_settings: dict[str, Any],
    sentinel_worker: Worker,
    queue: str,
    work_dir: Path,
) -> None:
    total = 40
    topic = kafka.create_topic(2, prefix="sentinel-fail")
    group = unique("g-sentinel-fail")
    modes = {3: "always_fail", 7: "fail_once"}
    values = (json.dumps({"n": n, "mode": modes.get(n % 10, "ok")}).encode() for n in range(total))
    kafka.produce(topic, values, partition_of=lambda n: n % 2)
    bridge = start_bridge(config(stack, celery_settings, group, [route(topic, queue)]), work_dir)
    try:
        wait_for(lambda: kafka.caught_up(group, topic, 2), 60, "all committed")
    finally:
        exit_code = bridge.terminate()
    assert exit_code == 0, bridge.log_tail()
    always = {n for n in range(total) if n % 10 == 3}
    dead = dlq_messages(kafka, f"{topic}.dlq")
    assert sorted(json.loads(d["value"])["n"] for d in dead) == sorted(always)  # type: ignore[arg-type]
    assert {d["headers"]["ckb.reason"] for d in dead} == {b"task_failed"}  # type: ignore[index]
    assert {run["payload"]["n"] for run in executions.of(topic)} == set(range(total)) - always


def test_kill_9_of_the_bridge_on_sentinel_loses_nothing(
    stack: StackInfo,
    kafka: Kafka,
    executions: Executions,
    celery_settings: dict[str, Any],
    sentinel_worker: Worker,
    queue: str,
    work_dir: Path,
) -> None:
    partitions, total = 2, 400
    topic = kafka.create_topic(partitions, prefix="sentinel-kill")
    values = (json.dumps({"n": n, "sleep_ms": 10}).encode() for n in range(total))
    kafka.produce(topic, values, partition_of=lambda n: n % partitions)
    consumer = {"session.timeout.ms": "6000", "heartbeat.interval.ms": "1000"}
    routes = [route(topic, queue, max_in_flight=40)]
    settings = config(
        stack, celery_settings, unique("g-sentinel-kill"), routes, kafka={"consumer": consumer}
    )
    group = settings["kafka"]["group_id"]
    first = start_bridge(settings, work_dir, "first")
    try:
        wait_for(lambda: executions.count(topic) >= total // 3, 60, "a third of the records")
        os.kill(first.process.pid, signal.SIGKILL)
        first.process.wait(10)
    finally:
        first.kill()
    committed = kafka.committed(group, topic, partitions)
    finished = runs_of(executions, topic)
    for p, offset in committed.items():
        unfinished = [o for o in range(max(offset, 0)) if (p, o) not in finished]
        assert not unfinished, f"partition {p} committed {offset} ahead of {unfinished[:5]}"
    assert sum(max(o, 0) for o in committed.values()) < total, "killed before the end"
    second = start_bridge(settings, work_dir, "second")
    try:
        wait_for(lambda: kafka.caught_up(group, topic, partitions), 90, "all committed")
    finally:
        assert second.terminate() == 0, second.log_tail()
    runs = runs_of(executions, topic)
    assert len(runs) == total, f"{total - len(runs)} records lost"
    figure(f"Sentinel/Sentinel kill -9: {total} records, {sum(runs.values()) - total} duplicates")


def test_a_failover_mid_run_loses_nothing_and_the_bridge_follows_the_new_master(
    stack: StackInfo,
    kafka: Kafka,
    executions: Executions,
    sentinel_set: SentinelSet,
    celery_settings: dict[str, Any],
    sentinel_worker: Worker,
    queue: str,
    work_dir: Path,
) -> None:
    partitions, total = 3, 600
    topic = kafka.create_topic(partitions, prefix="sentinel-failover")
    values = (json.dumps({"n": n, "sleep_ms": 15}).encode() for n in range(total))
    kafka.produce(topic, values, partition_of=lambda n: n % partitions)
    # Redis replicates asynchronously: what the old master took in the moment of the switch
    # (task messages, results) is lost with it; the bridge sends those tasks again after
    # task_timeout
    routes = [route(topic, queue, max_in_flight=60, task_timeout=5)]
    settings = config(stack, celery_settings, unique("g-sentinel-failover"), routes)
    group = settings["kafka"]["group_id"]
    before = sentinel_set.master_address()
    old_master = next(n for n in sentinel_set.data_nodes if before == ("127.0.0.1", n.port))
    bridge = start_bridge(settings, work_dir)
    try:
        with CommitProbe(kafka, group, topic, partitions) as probe:
            wait_for(lambda: executions.count(topic) >= total // 4, 60, "a quarter of the records")
            at_failover = sum(max(o, 0) for o in kafka.committed(group, topic, partitions).values())
            failover_at = time.monotonic()
            sentinel_set.failover()
            wait_for(lambda: sentinel_set.master_address() != before, 20, "a new master")
            promoted = time.monotonic() - failover_at
            # the demoted master goes away: a bridge still talking to it could not go on
            old_master.stop(kill=True)

            def committed_more() -> bool:
                offsets = kafka.committed(group, topic, partitions).values()
                return (
                    sum(max(o, 0) for o in offsets) > at_failover + 3 * 60
                )  # max_in_flight per partition

            wait_for(committed_more, 60, "commits past what was in flight at the failover")
            resumed = time.monotonic() - failover_at
            wait_for(lambda: kafka.caught_up(group, topic, partitions), 120, "all committed")
            recovered = time.monotonic() - failover_at
    finally:
        exit_code = bridge.terminate()
        old_master.start()  # back, as a replica of the new master once the sentinels see it
    assert exit_code == 0, bridge.log_tail()
    runs = runs_of(executions, topic)
    assert len(runs) == total, f"{total - len(runs)} records lost"
    assert not committed_ahead(probe, executions, topic), "committed past unfinished records"
    outage = watcher_outage(bridge.log_path.read_text(errors="replace"))
    assert outage is not None, "the result watcher lost the demoted master and came back"
    figure(
        f"Sentinel failover mid-run: new master named {promoted:.1f}s after SENTINEL FAILOVER; "
        f"the result watcher was back on the new master {outage:.2f}s after losing the old one; "
        f"commits past the in-flight records {resumed:.1f}s after the failover, all {total} "
        f"{recovered:.1f}s after it (tasks whose message or result the switch lost go again "
        "after task_timeout 5s); "
        f"{sum(runs.values()) - total} duplicate runs"
    )


def watcher_outage(log: str) -> float | None:
    """Seconds between the watcher's first 'unavailable' line and the next 'available again'."""
    stamps = {}
    for line in log.splitlines():
        for key, marker in (("down", REDIS_DOWN), ("back", REDIS_BACK)):
            if marker in line and (key == "down" or "down" in stamps) and key not in stamps:
                stamps[key] = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
    if len(stamps) < 2:
        return None
    return (stamps["back"] - stamps["down"]).total_seconds()
