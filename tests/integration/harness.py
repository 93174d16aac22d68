"""Helpers that drive real processes: Kafka topics, `ckb run` bridges, Celery workers.

What the benchmark needs too (a free port, polling with a deadline, producing through a full
queue, the ``ckb run`` process) lives in ``bench`` (:mod:`bench.common`,
:mod:`bench.bridgeproc`) and is re-exported here.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kombu.exceptions
import redis
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

from bench.bridgeproc import BridgeProcess
from bench.common import create_topic, free_port, produce_retrying, wait_for
from bridge.stack import StackInfo

__all__ = [
    "REDIS_BACK",
    "REDIS_DOWN",
    "REPO",
    "SHARED_QUEUE",
    "BridgeProcess",
    "Executions",
    "Kafka",
    "Worker",
    "bridge_config",
    "free_port",
    "run_bridge_to_end",
    "start_bridge",
    "start_worker",
    "unique",
    "wait_for",
    "worker_env",
]

REPO = Path(__file__).resolve().parents[2]

#: the queue of the session's shared worker (the ``shared_worker`` fixture)
SHARED_QUEUE = "it-shared"

#: what a bridge logs when its result watcher loses Redis, and once it is back
#: (bridge.io_retry.OutageLog)
REDIS_DOWN = "result backend (Redis) unavailable"
REDIS_BACK = "result backend (Redis) available again"


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@dataclass
class Kafka:
    bootstrap: str
    #: how every client connects (SASL, TLS: the secured stack's admin user)
    settings: dict[str, Any] = field(default_factory=dict)

    def config(self, extra: dict[str, Any]) -> dict[str, Any]:
        return {"bootstrap.servers": self.bootstrap, **self.settings, **extra}

    def create_topic(self, partitions: int, prefix: str = "it") -> str:
        name = unique(prefix)
        create_topic(self.bootstrap, name, partitions, settings=self.settings)
        return name

    def produce(
        self,
        topic: str,
        values: Iterable[bytes | None],
        keys: Iterable[bytes | None] | None = None,
        partition_of: Callable[[int], int] | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> int:
        # idempotent: a retried batch must not reorder records within a partition
        producer = Producer(self.config({"linger.ms": 5, "enable.idempotence": True}))
        count = 0
        key_list = list(keys) if keys is not None else None
        for i, value in enumerate(values):
            extra: dict[str, Any] = {}
            if partition_of is not None:
                extra["partition"] = partition_of(i)
            if headers is not None:
                extra["headers"] = headers
            key = key_list[i] if key_list is not None else None
            produce_retrying(producer, topic, value=value, key=key, **extra)
            count += 1
        assert producer.flush(30) == 0, "produce did not complete"
        return count

    def end_offsets(self, topic: str) -> dict[int, int]:
        consumer = Consumer(self.config({"group.id": unique("probe")}))
        try:
            partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
            return {
                p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                for p in partitions
            }
        finally:
            consumer.close()

    def committed(self, group: str, topic: str, partitions: int) -> dict[int, int]:
        """Committed offsets of ``group`` (-1001 where nothing is committed)."""
        consumer = Consumer(self.config({"group.id": group}))
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        try:
            for attempt in range(30):  # the coordinator may still be loading after start
                try:
                    return {tp.partition: tp.offset for tp in consumer.committed(tps, timeout=10)}
                except KafkaException:  # NOT_COORDINATOR, COORDINATOR_LOAD_IN_PROGRESS, …
                    if attempt == 29:
                        raise
                    time.sleep(0.5)
            raise AssertionError("unreachable")
        finally:
            consumer.close()

    def caught_up(self, group: str, topic: str, partitions: int) -> bool:
        """Whether ``group`` committed the end offset of every partition of ``topic``.

        A partition that never held a record has nothing to commit: its "no commit" (-1001)
        counts as caught up with its end offset 0.
        """
        committed = self.committed(group, topic, partitions)
        ends = self.end_offsets(topic)
        return committed.keys() == ends.keys() and all(
            committed[p] == end or (end == 0 and committed[p] < 0) for p, end in ends.items()
        )

    def read_all(self, topic: str, expected: int, timeout: float = 30) -> list[Any]:
        consumer = Consumer(
            self.config(
                {
                    "group.id": unique("reader"),
                    "auto.offset.reset": "earliest",
                    "enable.auto.commit": False,
                }
            )
        )
        consumer.subscribe([topic])
        messages: list[Any] = []
        deadline = time.monotonic() + timeout
        try:
            while len(messages) < expected and time.monotonic() < deadline:
                for message in consumer.consume(500, 0.5):
                    if message.error() is None:
                        messages.append(message)
            return messages
        finally:
            consumer.close()


@dataclass
class Executions:
    """What the test worker's ``it.record`` task wrote to Redis."""

    client: redis.Redis

    def of(self, topic: str) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.client.lrange(f"ckb-it:exec:{topic}", 0, -1)]

    def count(self, topic: str) -> int:
        return int(self.client.llen(f"ckb-it:exec:{topic}"))

    def started(self, topic: str) -> int:
        """Runs of ``topic``'s records that began (recorded for payloads with ``mark_start``)."""
        return int(self.client.llen(f"ckb-it:start:{topic}"))


def worker_env(stack: StackInfo, recorder_db: int = 2) -> dict[str, str]:
    return {
        **os.environ,
        "CKB_CELERY__BROKER_URL": stack.broker_url,
        "CKB_CELERY__RESULT_BACKEND": stack.result_backend,
        "CKB_CELERY__OPTIONS": json.dumps(stack.celery_options),
        "CKB_IT_RECORDER_URL": f"{stack.redis_url}/{recorder_db}",
        "PYTHONPATH": str(REPO),
    }


@dataclass
class Worker:
    process: subprocess.Popen[bytes]
    log_path: Path

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


def start_worker(
    stack: StackInfo,
    queue: str,
    log_dir: Path,
    concurrency: int = 4,
    app: str = "tests.integration.worker_app",
    pool: str = "prefork",
    env: dict[str, str] | None = None,
    extra_args: tuple[str, ...] = (),
) -> Worker:
    """A real ``celery worker`` process; ``env`` adds to (or overrides) :func:`worker_env`."""
    log_path = log_dir / f"worker-{queue}.log"
    environment = {**worker_env(stack), **(env or {})}
    command = [
        sys.executable, "-m", "celery", "-A", app, "worker", "-Q", queue, "-P", pool,
        "-c", str(concurrency), "--loglevel", "WARNING", "-n", f"{queue}@%h",
        "--without-gossip", "--without-mingle", "--without-heartbeat", *extra_args,
    ]  # fmt: skip
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command,
            cwd=REPO,
            env=environment,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    worker = Worker(process, log_path)
    from celery import Celery

    # the worker's broker and options (a sentinel:// broker needs its master_name)
    pinger = Celery(broker=environment["CKB_CELERY__BROKER_URL"])
    pinger.conf.update(json.loads(environment.get("CKB_CELERY__OPTIONS") or "{}"))
    name = f"{queue}@{socket.gethostname()}"

    def ready() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"worker exited: {log_path.read_text()[-3000:]}")
        try:
            return bool(pinger.control.ping(destination=[name], timeout=0.5))
        except (OSError, redis.RedisError, kombu.exceptions.KombuError):
            return False  # the control connection dropped: ask again on a new one

    try:
        wait_for(ready, 60, "the Celery worker to answer ping")
    except BaseException:
        worker.stop()  # never leave a stray worker behind a failed start
        raise
    finally:
        pinger.close()
    return worker


def bridge_config(
    stack: StackInfo, group: str, routes: list[dict[str, Any]], **overrides: Any
) -> dict[str, Any]:
    config: dict[str, Any] = {
        "kafka": {"bootstrap_servers": stack.kafka_bootstrap, "group_id": group},
        "celery": {
            "broker_url": stack.broker_url,  # Redis database 0, or the session's RabbitMQ
            "result_backend": stack.result_backend,  # Redis database 1, or PostgreSQL
            "options": stack.celery_options,  # a sentinel:// URL's master_name
        },
        "routes": routes,
        "results": {"reconcile_interval": 1.0},
        # /healthz, /readyz, /status are served even without metrics: port 0 lets each of
        # several bridges (and of concurrent test sessions) pick a free port
        "metrics": {"enabled": False, "host": "127.0.0.1", "port": 0},
        "logging": {"level": "INFO"},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    return config


def start_bridge(config: dict[str, Any], work_dir: Path, name: str = "bridge") -> BridgeProcess:
    """``ckb run -c <work_dir>/<name>.yaml``, its output in ``<work_dir>/<name>.log``."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return BridgeProcess.start(config, work_dir, name, env=env)


def run_bridge_to_end(
    stack: StackInfo,
    kafka: Kafka,
    work_dir: Path,
    routes: list[dict[str, Any]],
    partitions: int,
    timeout: float = 60,
    settings: dict[str, Any] | None = None,
) -> BridgeProcess:
    """Run ``ckb run`` on the first route's topic until every end offset is committed, then
    stop it with SIGTERM (it must exit 0). ``settings`` override :func:`bridge_config`'s
    sections. Returns the stopped bridge (log, settings)."""
    topic = routes[0]["topic"]
    config = bridge_config(stack, unique("g"), routes, **(settings or {}))
    bridge = start_bridge(config, work_dir)
    group = bridge.config["kafka"]["group_id"]
    try:
        wait_for(lambda: kafka.caught_up(group, topic, partitions), timeout, f"{topic} committed")
    finally:
        exit_code = bridge.terminate()
    assert exit_code == 0, bridge.log_tail()
    return bridge
