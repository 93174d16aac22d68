"""The benchmark's own world: a local stack on free ports, topics, records and workers."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from celery import Celery
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

from bench import common
from bench.common import free_port, produce_retrying
from bridge.stack import LocalStack, StackInfo

REPO = Path(__file__).resolve().parents[1]
BROKER_DB = 0
RESULT_DB = 1


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def payload(n: int) -> dict[str, Any]:
    """The record value / task argument every phase sends (about 100 bytes of JSON)."""
    return {"n": n, "order": f"order-{n:08d}", "amount": 1234, "note": "x" * 48}


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    common.wait_for(condition, timeout, what, interval=0.1, error=TimeoutError)


@dataclass
class Stack:
    """A LocalStack in a temporary state directory, on ports the OS says are free."""

    work_dir: Path
    local: LocalStack
    info: StackInfo

    @classmethod
    def start(cls, work_dir: Path | None = None, progress: Callable[[str], None] = print) -> Stack:
        root = Path(tempfile.mkdtemp(prefix="ckb-bench-")) if work_dir is None else work_dir
        root.mkdir(parents=True, exist_ok=True)
        local = LocalStack(root / "stack", kafka_port=free_port(), redis_port=free_port())
        try:
            info = local.up(progress=progress)
        except BaseException:
            local.down()
            raise
        return cls(root, local, info)

    def stop(self) -> None:
        self.local.down()

    @property
    def broker_url(self) -> str:
        return f"{self.info.redis_url}/{BROKER_DB}"

    @property
    def result_url(self) -> str:
        return f"{self.info.redis_url}/{RESULT_DB}"

    @property
    def bootstrap(self) -> str:
        return self.info.kafka_bootstrap

    @property
    def celery_options(self) -> dict[str, Any]:
        """The Celery settings the URLs need: a ``sentinel://`` URL's ``master_name``."""
        sentinel = self.info.sentinel
        urls = (self.broker_url, self.result_url)
        if sentinel is None or not any(url.startswith("sentinel:") for url in urls):
            return {}
        return sentinel.options


# == Kafka ==================================================================================
def create_topic(
    bootstrap: str, name: str, partitions: int, settings: dict[str, Any] | None = None
) -> None:
    """``settings``: how to connect (SASL, TLS) besides the bootstrap servers."""
    common.create_topic(bootstrap, name, partitions, error=TimeoutError, settings=settings)


@dataclass
class Produced:
    """Coordinates of produced records: (partition, offset, timestamp ms) each."""

    records: list[tuple[int, int, int]] = field(default_factory=list)

    def ends(self) -> dict[int, int]:
        ends: dict[int, int] = {}
        for partition, offset, _ in self.records:
            ends[partition] = max(ends.get(partition, 0), offset + 1)
        return ends


def produce(
    bootstrap: str,
    topic: str,
    count: int,
    rate: float | None = None,
    track: bool = True,
    settings: dict[str, Any] | None = None,
) -> Produced:
    """Produce ``count`` JSON records spread over the partitions (``rate`` per second, or all
    at once); with ``track``, every record's coordinates from the delivery reports."""
    producer = Producer(
        {"bootstrap.servers": bootstrap, "linger.ms": 0 if rate else 20, "acks": "all"}
        | (settings or {})
    )
    produced = Produced()
    acknowledged = 0

    def delivered(error: Any, message: Any) -> None:
        nonlocal acknowledged
        if error is None:
            acknowledged += 1
            if track:
                produced.records.append(
                    (message.partition(), message.offset(), message.timestamp()[1])
                )

    began = time.monotonic()
    for i in range(count):
        if rate:
            producer.poll(max(began + i / rate - time.monotonic(), 0))
        value = json.dumps(payload(i)).encode()
        produce_retrying(producer, topic, backoff=0.05, value=value, on_delivery=delivered)
        producer.poll(0)
    if producer.flush(60):
        raise RuntimeError(f"producing to {topic} did not complete")
    if acknowledged != count:
        raise RuntimeError(f"{count - acknowledged} records to {topic} failed")
    return produced


def committed_total(consumer: Consumer, topic: str, partitions: int) -> int:
    """The sum of ``consumer``'s group's committed offsets on ``topic`` (0 where none)."""
    tps = [TopicPartition(topic, p) for p in range(partitions)]
    try:
        return sum(max(tp.offset, 0) for tp in consumer.committed(tps, timeout=10))
    except KafkaException:  # coordinator loading or moving: not committed yet, as far as we know
        return 0


def group_probe(bootstrap: str, group: str, settings: dict[str, Any] | None = None) -> Consumer:
    """A consumer of ``group`` that never joins it: only asks for committed offsets."""
    return Consumer({"bootstrap.servers": bootstrap, "group.id": group} | (settings or {}))


# == workers ================================================================================
@dataclass
class Workers:
    """Real ``celery worker`` processes running :mod:`bench.noop_app`."""

    stack: Stack
    processes: list[subprocess.Popen[bytes]]
    names: list[str]
    control: Celery

    @classmethod
    def start(
        cls,
        stack: Stack,
        count: int,
        concurrency: int,
        pool: str,
        queues: list[str],
        prefetch: int = 4,
    ) -> Workers:
        env = {
            **os.environ,
            "CKB_WORKER_PREFETCH": str(prefetch),
            "CKB_CELERY__BROKER_URL": stack.broker_url,
            "CKB_CELERY__RESULT_BACKEND": stack.result_url,
            "CKB_CELERY__OPTIONS": json.dumps(stack.celery_options),
            "PYTHONPATH": str(REPO),
        }
        host = socket.gethostname()
        names = [f"bench{i}@{host}" for i in range(count)]
        processes = []
        for i in range(count):
            log = (stack.work_dir / f"worker-{i}.log").open("wb")
            command = [
                sys.executable, "-m", "celery", "-A", "bench.noop_app", "worker",
                "-Q", ",".join(queues), "-P", pool, "-c", str(concurrency),
                "--loglevel", "WARNING", "-n", f"bench{i}@%h",
                "--without-gossip", "--without-mingle", "--without-heartbeat",
            ]  # fmt: skip
            processes.append(
                subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
            )
            log.close()
        control = Celery(broker=stack.broker_url)
        control.conf.update(stack.celery_options)
        workers = cls(stack, processes, names, control)
        try:
            wait_until(workers._all_answer, 90, "the Celery workers to answer ping")
        except BaseException:
            workers.stop()
            raise
        return workers

    def _all_answer(self) -> bool:
        for process in self.processes:
            if process.poll() is not None:
                raise RuntimeError(f"a worker exited; see {self.stack.work_dir}/worker-*.log")
        replies = self.control.control.ping(destination=self.names, timeout=0.5)
        return len(replies) == len(self.names)

    def consume(self, queue: str) -> None:
        """Make every worker consume ``queue`` from now on (Celery's ``add_consumer``)."""
        replies = self.control.control.add_consumer(
            queue, destination=self.names, reply=True, timeout=5
        )
        if len(replies) != len(self.names):
            raise RuntimeError(f"add_consumer {queue}: {len(replies)} of {len(self.names)} said ok")

    def ignore(self, queue: str) -> None:
        """Stop consuming ``queue`` (Celery's ``cancel_consumer``)."""
        self.control.control.cancel_consumer(queue, destination=self.names, reply=True, timeout=5)

    def pids(self) -> list[int]:
        return [p.pid for p in self.processes]

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
        self.control.close()


def celery_client(stack: Stack) -> Celery:
    """A plain user's client app: Redis broker and Redis result backend, JSON."""
    app = Celery("ckb-bench-client", broker=stack.broker_url, backend=stack.result_url)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        broker_connection_retry_on_startup=True,
        **stack.celery_options,
    )
    return app
