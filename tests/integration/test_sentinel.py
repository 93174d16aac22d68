"""The core path with Redis Sentinel as the Celery broker *and* the result backend.

A real Sentinel set (the session's ``sentinel_set``: a master, one replica, three sentinels,
started only when these tests run), a real Celery worker given the same ``sentinel://`` URLs
and options as the bridge (``CKB_CELERY__OPTIONS``): the core scenarios (commit after success
never ahead, failures dead-lettered, kill -9 of the bridge loses nothing); the dispatcher's
pipelined batch and queue-depth read on kombu's Sentinel channel; and a failover mid-run
(``SENTINEL FAILOVER``, then the old master killed) that loses nothing, commits nothing ahead,
and that the bridge follows to the new master.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
import redis

from bridge.celery_app import make_celery_app
from bridge.dispatcher import Dispatcher, TaskRequest
from bridge.settings import CelerySettings
from bridge.stack import StackInfo
from bridge.stack.sentinel import SentinelSet
from tests.figures import figure
from tests.integration import core_scenarios as core
from tests.integration.core_scenarios import committed_ahead, route, runs_of
from tests.integration.harness import (
    REDIS_BACK,
    REDIS_DOWN,
    Executions,
    Kafka,
    Worker,
    bridge_config,
    start_bridge,
    start_worker,
    unique,
    wait_for,
)
from tests.integration.test_core_path import CommitProbe

NAME = "Sentinel/Sentinel"


@pytest.fixture(scope="module")
def queue() -> str:
    return unique("q-sentinel")


@pytest.fixture(scope="module")
def sentinel_worker(
    sentinel_stack: StackInfo, queue: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Worker]:
    work = tmp_path_factory.mktemp("sentinel-worker")
    worker = start_worker(sentinel_stack, queue, work, 8, env=worker_options(sentinel_stack))
    yield worker
    worker.stop()


def worker_options(stack: StackInfo) -> dict[str, str]:
    """The worker's Celery options: the stack's, and what a worker behind Sentinel wants: a
    result write that meets a failover retried (on the new master) instead of failing."""
    options = {**stack.celery_options, "result_backend_always_retry": True}
    return {"CKB_CELERY__OPTIONS": json.dumps(options)}


def master(sentinel_set: SentinelSet, db: int) -> redis.Redis:
    address = sentinel_set.master_address()
    assert address is not None, "a sentinel names the master"
    return redis.Redis(host=address[0], port=address[1], db=db)


def test_records_run_through_sentinel_and_commit_after_success_never_ahead(
    sentinel_stack: StackInfo,
    sentinel_set: SentinelSet,
    kafka: Kafka,
    executions: Executions,
    sentinel_worker: Worker,
    queue: str,
    work_dir: Path,
) -> None:
    assert bridge_config(sentinel_stack, "g", [])["celery"]["broker_url"].startswith("sentinel:")
    core.commit_after_success_never_ahead(
        sentinel_stack, kafka, executions, queue, work_dir, NAME, total=600, seed=5
    )
    # the results are in the Sentinel master's database 1, not in the session's Redis
    with master(sentinel_set, 1) as results:
        assert any(key.startswith(b"celery-task-meta-") for key in results.scan_iter(count=500))


def test_a_failing_task_is_dead_lettered_through_sentinel(
    sentinel_stack: StackInfo,
    kafka: Kafka,
    executions: Executions,
    sentinel_worker: Worker,
    queue: str,
    work_dir: Path,
) -> None:
    core.failing_tasks_dead_lettered(sentinel_stack, kafka, executions, queue, work_dir, NAME)


def test_kill_9_of_the_bridge_on_sentinel_loses_nothing(
    sentinel_stack: StackInfo,
    kafka: Kafka,
    executions: Executions,
    sentinel_worker: Worker,
    queue: str,
    work_dir: Path,
) -> None:
    core.kill_9_loses_nothing(sentinel_stack, kafka, executions, queue, work_dir, NAME, total=400)


def test_a_master_name_no_sentinel_knows_stops_the_bridge_naming_the_setting(
    sentinel_stack: StackInfo, sentinel_set: SentinelSet, work_dir: Path
) -> None:
    config = bridge_config(sentinel_stack, unique("g-sentinel-typo"), [route("t", "q")])
    config["celery"]["options"] = {
        **sentinel_stack.celery_options,
        "result_backend_transport_options": {"master_name": "ckb-mastr"},
    }
    bridge = start_bridge(config, work_dir)
    try:
        assert bridge.process.wait(60) == 2, bridge.log_tail()
    finally:
        bridge.kill()
    log = bridge.log_tail()
    assert "celery.options.result_backend_transport_options.master_name" in log, log
    assert "'ckb-mastr'" in log and sentinel_set.master_name in log, "the name and the known ones"


def test_the_dispatcher_pipelines_and_reads_queue_depth_through_sentinel(
    sentinel_stack: StackInfo, sentinel_set: SentinelSet
) -> None:
    """The Redis fast path (one pipelined batch) and the queue-depth read work on kombu's
    Sentinel channel, and the messages are on the master the sentinels name. (That they follow
    a new master is the failover test's: the bridge goes on committing after it.)"""
    queue = unique("q-sentinel-idle")  # nobody consumes it: the depth is what was sent
    celery = bridge_config(sentinel_stack, "g", [])["celery"]
    dispatcher = Dispatcher(make_celery_app(CelerySettings(**celery)), batch_size=50)
    requests = [
        TaskRequest(unique("t"), "it.record", [{"n": n}], {}, queue, {}, f"n={n}")
        for n in range(120)
    ]
    try:
        dispatcher.publish([dispatcher.encode(request) for request in requests])
        assert dispatcher.queue_depth(queue) == 120
        with master(sentinel_set, 0) as broker:
            assert broker.llen(queue) == 120
            broker.delete(queue)
        assert dispatcher.queue_depth(queue) == 0
    finally:
        dispatcher.close()


@pytest.mark.parametrize("how", ["SENTINEL FAILOVER", "master killed"])
def test_a_failover_mid_run_loses_nothing_and_the_bridge_follows_the_new_master(
    how: str,
    sentinel_stack: StackInfo,
    kafka: Kafka,
    executions: Executions,
    sentinel_set: SentinelSet,
    sentinel_worker: Worker,
    queue: str,
    work_dir: Path,
) -> None:
    partitions, total = 3, 600
    topic = kafka.create_topic(partitions, prefix="sentinel-failover")
    # SENTINEL FAILOVER: a switch on command, the old master then killed (a bridge still on it
    # could not go on); master killed: a crash, found down by the sentinels (2 s), then their
    # election and the switch
    values = (json.dumps({"n": n, "sleep_ms": 15}).encode() for n in range(total))
    kafka.produce(topic, values, partition_of=lambda n: n % partitions)
    # Redis replicates asynchronously: what the old master took in the moment of the switch
    # (task messages, results) is lost with it; the bridge sends those tasks again after
    # task_timeout
    routes = [route(topic, queue, max_in_flight=60, task_timeout=5)]
    settings = bridge_config(sentinel_stack, unique("g-sentinel-failover"), routes)
    group = settings["kafka"]["group_id"]
    before = sentinel_set.master_address()
    wait_for(lambda: replica_in_sync(sentinel_set, before), 30, "a replica in sync to promote")
    old_master = next(n for n in sentinel_set.data_nodes if before == ("127.0.0.1", n.port))
    workers = Supervisor(sentinel_worker, sentinel_stack, queue, work_dir)
    bridge = start_bridge(settings, work_dir)
    try:
        with CommitProbe(kafka, group, topic, partitions) as probe:
            wait_for(lambda: executions.count(topic) >= total // 4, 60, "a quarter of the records")
            at_failover = sum(max(o, 0) for o in kafka.committed(group, topic, partitions).values())
            failover_at = time.monotonic()
            if how == "SENTINEL FAILOVER":
                sentinel_set.failover()
            else:
                old_master.stop(kill=True)
            wait_for(lambda: sentinel_set.master_address() != before, 30, "a new master")
            promoted = time.monotonic() - failover_at
            old_master.stop(kill=True)

            def committed_more() -> bool:
                workers.check()
                offsets = kafka.committed(group, topic, partitions).values()
                return (
                    sum(max(o, 0) for o in offsets) > at_failover + 3 * 60
                )  # max_in_flight per partition

            wait_for(committed_more, 60, "commits past what was in flight at the failover")
            resumed = time.monotonic() - failover_at
            wait_for(
                lambda: workers.check() and kafka.caught_up(group, topic, partitions),
                120,
                "all committed",
            )
            recovered = time.monotonic() - failover_at
    finally:
        exit_code = bridge.terminate()
        workers.stop()
        # back as a replica of the new master at once (the sentinels would convert it later)
        now = sentinel_set.master_address()
        assert now is not None
        dataclasses.replace(old_master, args=("--replicaof", now[0], str(now[1]))).start()
    assert exit_code == 0, bridge.log_tail()
    runs = runs_of(executions, topic)
    assert len(runs) == total, f"{total - len(runs)} records lost"
    assert not committed_ahead(probe, executions, topic), "committed past unfinished records"
    outage = watcher_outage(bridge.log_path.read_text(errors="replace"))
    assert outage is not None, "the result watcher lost the demoted master and came back"
    figure(
        f"Sentinel failover mid-run ({how}): new master named {promoted:.1f}s after it; "
        f"the result watcher was back on the new master {outage:.2f}s after losing the old one; "
        f"commits past the in-flight records {resumed:.1f}s after the failover, all {total} "
        f"{recovered:.1f}s after it; {sum(runs.values()) - total} duplicate runs (a message "
        "the old master handed out in the switch is still queued on the new one; a task whose "
        "message or result was lost goes again after task_timeout 5s); Celery workers that died: "
        f"{workers.restarts}"
    )


class Supervisor:
    """Restarts the Celery worker if it dies, as a process supervisor would: kombu 5.7's
    Sentinel channel can end a worker ("Unrecoverable error: AttributeError: 'NoneType' object
    has no attribute 'hostname'") when it reconnects while the sentinels name no master yet."""

    def __init__(self, worker: Worker, stack: StackInfo, queue: str, work_dir: Path) -> None:
        self._first = worker
        self._args = (stack, queue)
        self._work_dir = work_dir
        self._spares: list[Worker] = []
        self.restarts = 0

    def check(self) -> bool:
        current = self._spares[-1] if self._spares else self._first
        if current.process.poll() is not None:
            self.restarts += 1
            log_dir = self._work_dir / f"worker-{self.restarts}"
            log_dir.mkdir()
            env = worker_options(self._args[0])
            self._spares.append(start_worker(*self._args, log_dir, 8, env=env))
        return True

    def stop(self) -> None:
        for worker in self._spares:
            worker.stop()


def replica_in_sync(sentinel_set: SentinelSet, master_address: tuple[str, int] | None) -> bool:
    """Whether a data node other than the master follows it with its link up."""
    for node in sentinel_set.data_nodes:
        if master_address == ("127.0.0.1", node.port):
            continue
        try:
            with redis.Redis(port=node.port, socket_timeout=1) as client:
                info = client.info("replication")
        except redis.RedisError:
            continue
        if info.get("role") == "slave" and info.get("master_link_status") == "up":
            return True
    return False


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
