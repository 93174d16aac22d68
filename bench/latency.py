"""Latency: paced records to an idle, assigned bridge (or paced ``send_task``) → task start.

What is measured, for the bridge and for plain Celery alike: ``time.time()`` just before the
send call (``Producer.produce`` for the bridge, ``app.send_task`` for Celery) → ``time.time()``
taken as the task body starts in the worker (:data:`bench.STAMP_TASK` returns it, so it comes
back in the stored result). Same machine, same clock. Records are sent at a fixed rate
(``--latency-rate``), each scheduled at ``start + i / rate`` (a late send is not followed by a
burst), so neither the worker nor the bridge has a queue to drain: the difference between the
two is what the bridge adds to a record's way to the worker.

A plain consumer of the same topic (:class:`KafkaHop`) notes when each record could first be
read from Kafka, so the bridge's figure splits into the Kafka hop and the rest.

Before the clock starts the bridge path is made ready and idle: a fresh ``ckb run`` on its own
topic, warm-up records produced to *every* partition, each dispatched, run and committed (so
every partition is assigned and every connection is open), then nothing in flight and the
worker queue empty.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import redis
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from bench import STAMP_TASK
from bench.common import wait_for
from bench.env import committed_total, create_topic, group_probe, payload, unique
from bridge.task_ids import task_id_for

RESULT_PREFIX = "celery-task-meta-"
WARM_UP_PER_PARTITION = 2


@dataclass
class Sample:
    sent: float  # time.time() just before the send call
    started: float  # time.time() as the task body started, in the worker
    done: float  # the result's date_done (task end, result stored), epoch seconds


@dataclass
class Paced:
    """One latency run."""

    samples: list[Sample] = field(default_factory=list)
    sent_rate: float = 0.0  # the rate the records were actually sent at
    lost: int = 0  # sent, but no result within the timeout
    bridge_cpu_seconds: float | None = None  # the bridge process over the paced window
    kafka_hop: list[float] = field(default_factory=list)  # produce call → a raw consumer has it

    def latencies(self) -> list[float]:
        return [s.started - s.sent for s in self.samples]


def pace(began: float, index: int, rate: float) -> None:
    """Sleep until record ``index`` is due (``began`` is ``time.monotonic()``)."""
    delay = began + index / rate - time.monotonic()
    if delay > 0:
        time.sleep(delay)


def read_stamps(client: redis.Redis, task_ids: list[str]) -> dict[str, tuple[float, float]]:
    """Stored results of :data:`STAMP_TASK`: task id → (task start, ``date_done``)."""
    out: dict[str, tuple[float, float]] = {}
    for start in range(0, len(task_ids), 1000):
        part = task_ids[start : start + 1000]
        for task_id, value in zip(
            part, client.mget([RESULT_PREFIX + i for i in part]), strict=True
        ):
            if value is None:
                continue
            meta = json.loads(value)
            if meta.get("status") != "SUCCESS":
                continue
            done = datetime.fromisoformat(meta["date_done"])
            if done.tzinfo is None:
                done = done.replace(tzinfo=UTC)
            out[task_id] = (float(meta["result"]), done.timestamp())
    return out


def collect(
    client: redis.Redis, sent: dict[str, float], timeout: float, interval: float = 0.2
) -> tuple[list[Sample], int]:
    """Wait (at most ``timeout``) for the results of ``sent``; the samples and how many lack one."""
    deadline = time.monotonic() + timeout
    while True:
        stamps = read_stamps(client, list(sent))
        if len(stamps) == len(sent) or time.monotonic() > deadline:
            break
        time.sleep(interval)
    samples = [Sample(at, *stamps[task_id]) for task_id, at in sent.items() if task_id in stamps]
    return samples, len(sent) - len(samples)


# == Celery: send_task → task start =========================================================
def celery_paced(
    app: Any, queue: str, count: int, rate: float, client: redis.Redis, timeout: float
) -> Paced:
    """``send_task`` of :data:`STAMP_TASK` at ``rate``/s with one producer, after a warm-up
    round trip (connections open, queue declared)."""
    sent: dict[str, float] = {}
    with app.producer_or_acquire() as producer:
        app.send_task(STAMP_TASK, args=[payload(-1)], queue=queue, producer=producer).get(60)
        began = time.monotonic()
        for i in range(count):
            pace(began, i, rate)
            at = time.time()
            result = app.send_task(STAMP_TASK, args=[payload(i)], queue=queue, producer=producer)
            sent[result.id] = at
        seconds = time.monotonic() - began
    samples, lost = collect(client, sent, timeout)
    return Paced(samples, count / max(seconds, 1e-9), lost)


# == the bridge: produce → task start =======================================================
@dataclass
class PacedProducer:
    """A Kafka producer for paced records: no linger, every record's send time and offsets."""

    bootstrap: str
    topic: str
    producer: Producer = field(init=False)
    sent: list[float] = field(default_factory=list)
    #: index → (partition, offset, timestamp ms) from the delivery reports
    delivered: dict[int, tuple[int, int, int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.producer = Producer(
            {"bootstrap.servers": self.bootstrap, "linger.ms": 0, "acks": "all"}
        )

    def _on_delivery(self, index: int) -> Callable[[Any, Any], None]:
        def delivered(error: Any, message: Any) -> None:
            if error is None:
                self.delivered[index] = (
                    message.partition(),
                    message.offset(),
                    message.timestamp()[1],
                )

        return delivered

    def send(self, value: bytes, partition: int = -1) -> None:
        """Produce ``value`` (to ``partition``, or where the partitioner puts it: -1)."""
        index = len(self.sent)
        self.sent.append(time.time())
        self.producer.produce(
            self.topic, value=value, partition=partition, on_delivery=self._on_delivery(index)
        )
        self.producer.poll(0)

    def flush(self) -> None:
        if self.producer.flush(60):
            raise RuntimeError(f"producing to {self.topic} did not complete")
        if len(self.delivered) != len(self.sent):
            raise RuntimeError(f"{len(self.sent) - len(self.delivered)} records failed")

    def task_ids(self, group: str, indexes: range) -> dict[str, float]:
        """Task id (as the bridge derives it) → send time, for the records in ``indexes``."""
        return {task_id_for(group, self.topic, *self.delivered[i]): self.sent[i] for i in indexes}


class KafkaHop:
    """A plain consumer of the latency topic, in a thread, next to the bridge: when each record
    reaches a consumer that does nothing else (the Kafka part of the bridge's latency)."""

    def __init__(self, bootstrap: str, topic: str, partitions: int) -> None:
        self.consumer = Consumer(
            {"bootstrap.servers": bootstrap, "group.id": unique("bench-hop")}
            | {"enable.auto.commit": False}
        )
        self.consumer.assign(
            [TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)]
        )
        self.seen: dict[tuple[int, int], float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-kafka-hop", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            message = self.consumer.poll(0.1)  # returns with the first record (consume() waits)
            if message is None or message.error() is not None:
                continue
            partition, offset = message.partition(), message.offset()
            if partition is not None and offset is not None:
                self.seen[(partition, offset)] = time.time()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.consumer.close()


def bridge_paced(
    start_bridge: Callable[[str, str, list[str]], Any],
    bootstrap: str,
    partitions: int,
    count: int,
    rate: float,
    client: redis.Redis,
    queue_length: Callable[[], int],
    timeout: float,
) -> Paced:
    """A fresh bridge on its own topic, made ready and idle, then paced records to it.

    ``start_bridge(group, task, topics)`` starts ``ckb run`` (a :class:`BridgeProcess`) routing
    ``topics`` to ``task``; it is stopped here.
    """
    topic = unique("bench-lat")
    group = unique("bench-lat")
    create_topic(bootstrap, topic, partitions)
    bridge = start_bridge(group, STAMP_TASK, [topic])
    probe = group_probe(bootstrap, group)
    records = PacedProducer(bootstrap, topic)
    hop = KafkaHop(bootstrap, topic, partitions)
    try:
        # ready: warm-up records on every partition, each dispatched, run and committed
        warm = partitions * WARM_UP_PER_PARTITION
        for i in range(warm):
            records.send(json.dumps(payload(-1 - i)).encode(), partition=i % partitions)
        records.flush()
        bridge.wait_consuming(timeout)
        _wait(lambda: committed_total(probe, topic, partitions) >= warm, timeout, "warm-up")
        _wait(lambda: len(hop.seen) >= warm, timeout, "the plain consumer")
        # idle: nothing in flight in the bridge, nothing queued for the worker
        _wait(
            lambda: bridge.metrics()["ckb_inflight_records"] == 0 and queue_length() == 0,
            timeout,
            "an idle bridge",
        )
        time.sleep(1.0)  # the warm-up's commit and the result watcher's sweep are over
        cpu = bridge.cpu()
        began = time.monotonic()
        for i in range(count):
            pace(began, i, rate)
            records.send(json.dumps(payload(i)).encode())
        seconds = time.monotonic() - began
        records.flush()
        _wait(lambda: committed_total(probe, topic, partitions) >= warm + count, timeout, "all")
        cpu = bridge.cpu() - cpu
        sent = records.task_ids(group, range(warm, warm + count))
        samples, lost = collect(client, sent, timeout)
        _wait(lambda: len(hop.seen) >= warm + count, timeout, "the plain consumer")
    finally:
        hop.close()
        probe.close()
        bridge.stop()
    kafka = [
        hop.seen[records.delivered[i][:2]] - records.sent[i] for i in range(warm, warm + count)
    ]
    return Paced(samples, count / max(seconds, 1e-9), lost, cpu, kafka)


def _wait(condition: Callable[[], bool], timeout: float, what: str) -> None:
    wait_for(condition, timeout, f"latency: {what}", interval=0.05, error=TimeoutError)
