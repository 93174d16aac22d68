"""A rolling update of four bridges under load: no partition waits long for its commits.

Kubernetes replaces the pods of a Deployment one by one (``maxSurge: 1``): it starts a new
pod, and once that one runs it sends SIGTERM to an old one and starts the next new one at
once, so new members join while old ones are still leaving. Here: 12 partitions, records
produced at a steady rate, short tasks on a worker pool that is the bottleneck (so every
bridge keeps its ``max_queue_time`` of tasks queued in Celery, as in production), four
bridges replaced by four new ones that way, with the product's default timeouts.

Measured with a sampler that reads the group's committed offsets every 0.25 s: the longest
time a partition had a produced record waiting at its commit point without the commit point
moving (a "stall"). Checked: that stall < 10 s with either group protocol, every record ran,
every bridge exited 0 on SIGTERM and ``Consumer.close()`` returned in time.

No record may run twice, exactly: a leaving bridge hands the tasks still queued in Celery on
instead of waiting for them, and the next owner of the partition finds each one's dispatch
marker (or its result) and watches it instead of sending it again. A duplicate needs a task
declared lost (``task_timeout``, 300 s, is never reached here) or a bridge killed between a
publish and its marker write (no SIGKILL here).
"""

from __future__ import annotations

import json
import random
import re
import signal
import threading
import time
import urllib.request
from collections import Counter
from contextlib import suppress
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import redis
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

from bench.common import produce_retrying
from bridge.stack import StackInfo
from tests.figures import figure
from tests.integration.harness import (
    BridgeProcess,
    Executions,
    Kafka,
    bridge_config,
    start_bridge,
    start_worker,
    unique,
    wait_for,
)

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(420)]

#: the product's consumer defaults, only the group protocol chosen (session timeout 45 s)
PROTOCOLS: dict[str, dict[str, Any]] = {
    "cooperative-sticky": {},
    "consumer": {"group.protocol": "consumer"},
}
PARTITIONS = 12
REPLICAS = 4
#: records per second; the worker pool (4 threads, 20-50 ms tasks) finishes fewer, so the
#: bridges always keep a queue of tasks in Celery ahead of it
RATE = 130
WORKER_THREADS = 4
#: seconds a new bridge gets to receive partitions before an old one is stopped
READY_WAIT = 6.0
#: the acceptance bound (issue 12): no partition without commit progress for longer
MAX_STALL = 10.0
#: seconds between two reads of the group's committed offsets
SAMPLE_INTERVAL = 0.25
NOTHING_COMMITTED = -1001
#: "assigned t[0], t[3]": an assignment with partitions (not "assigned nothing")
ASSIGNED = re.compile(r"\bassigned (?!nothing)")
CLOSE_GAVE_UP = "did not finish within"
#: where a bridge serves /status (port 0: it picks one and logs it)
SERVING = re.compile(r"/status on (http://[0-9.]+:[0-9]+)")


class PacedProducer:
    """Produces numbered records round robin over the partitions at ``rate`` per second;
    remembers when each (partition, offset) was acknowledged."""

    def __init__(self, bootstrap: str, topic: str, rate: float, seed: int) -> None:
        self._bootstrap = bootstrap
        self._topic = topic
        self._rate = rate
        self._rng = random.Random(seed)
        #: (partition, offset) → (record number, wall time of the acknowledgement)
        self.acked: dict[tuple[int, int], tuple[int, float]] = {}
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rolling-producer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(60)
        assert not self._thread.is_alive(), "the producer did not stop"

    def cancel(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        producer = Producer(
            {"bootstrap.servers": self._bootstrap, "enable.idempotence": True, "linger.ms": 5}
        )
        started = time.monotonic()
        n = 0
        while not self._stop.is_set():
            self._stop.wait(max(0.0, started + n / self._rate - time.monotonic()))
            value = json.dumps({"n": n, "sleep_ms": self._rng.randint(20, 50)}).encode()

            def delivered(err: Any, msg: Any, n: int = n) -> None:
                if err is None:
                    self.acked[(msg.partition(), msg.offset())] = (n, time.time())
                else:
                    self.errors.append(f"record {n}: {err}")

            produce_retrying(
                producer, self._topic, value=value, partition=n % PARTITIONS, on_delivery=delivered
            )
            producer.poll(0)
            n += 1
        assert producer.flush(30) == 0

    def end_offsets(self) -> dict[int, int]:
        ends = dict.fromkeys(range(PARTITIONS), 0)
        for partition, offset in self.acked:
            ends[partition] = max(ends[partition], offset + 1)
        return ends


class CommitSampler:
    """Reads the group's committed offsets every ``interval`` seconds (not a group member)."""

    def __init__(
        self, bootstrap: str, group: str, topic: str, broker: redis.Redis, queue: str
    ) -> None:
        self.samples: list[tuple[float, dict[int, int]]] = []
        #: (wall time, tasks waiting in the Celery queue): how deep the workers are behind
        self.depths: list[tuple[float, int]] = []
        self._broker = broker
        self._queue = queue
        self._consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
        self._tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rolling-sampler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(30)
        self._consumer.close()

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_INTERVAL):
            with suppress(redis.RedisError):
                self.depths.append((time.time(), int(self._broker.llen(self._queue))))
            try:
                committed = self._consumer.committed(self._tps, timeout=5)
            except KafkaException:
                continue  # coordinator busy: a gap in the samples (it only hides progress)
            read_at = time.time()
            self.samples.append((read_at, {tp.partition: tp.offset for tp in committed}))

    def latest(self) -> dict[int, int]:
        return self.samples[-1][1] if self.samples else {}

    def every_partition_committed(self) -> bool:
        latest = self.latest()
        return len(latest) == PARTITIONS and all(value > 0 for value in latest.values())


@dataclass
class Stall:
    seconds: float = 0.0
    partition: int = -1
    #: wall time the stall ended (the sample that showed progress, or the last sample)
    ended: float = 0.0
    per_partition: dict[int, float] = field(default_factory=dict)


def longest_stall(
    samples: list[tuple[float, dict[int, int]]],
    acked: dict[tuple[int, int], tuple[int, float]],
    since: float,
) -> Stall:
    """The longest time (from ``since`` on) a partition's commit point stood still while the
    record at it had been produced: from the later of the last progress and that record's
    acknowledgement to the sample that showed the commit point moved (or the last sample)."""
    stall = Stall()
    last: dict[int, tuple[int, float]] = {}  # partition → (committed, since when)
    for read_at, sample in samples:
        for partition, value in sample.items():
            committed = max(0, value) if value != NOTHING_COMMITTED else 0
            point, moved_at = last.get(partition, (committed, since))
            waiting = acked.get((partition, point))
            if waiting is not None:
                stood = read_at - max(moved_at, waiting[1], since)
                if stood > stall.per_partition.get(partition, 0.0):
                    stall.per_partition[partition] = stood
                if stood > stall.seconds:
                    stall.seconds, stall.partition, stall.ended = stood, partition, read_at
            if committed != point or partition not in last:
                last[partition] = (committed, read_at if partition in last else since)
    return stall


class StatusPoller:
    """Reads each running bridge's ``/status`` every 0.5 s: after a failure, who owned a stalled
    partition and how many of its tasks were in flight (saved next to the logs)."""

    def __init__(self) -> None:
        self.bridges: list[BridgeProcess] = []
        #: (wall time, bridge name, its /status document)
        self.rows: list[tuple[float, str, Any]] = []
        self._urls: dict[str, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rolling-status", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            for bridge in list(self.bridges):
                url = self._url(bridge)
                if url is None or not bridge.alive():
                    continue
                with suppress(OSError, ValueError), urllib.request.urlopen(url, timeout=1) as reply:
                    self.rows.append((time.time(), bridge.log_path.stem, json.load(reply)))

    def _url(self, bridge: BridgeProcess) -> str | None:
        name = bridge.log_path.stem
        if name not in self._urls:
            found = SERVING.search(bridge.log_tail(100_000))
            if found is None:
                return None
            self._urls[name] = f"{found.group(1)}/status"
        return self._urls[name]


def save_evidence(
    path: Path, producer: PacedProducer, sampler: CommitSampler, poller: StatusPoller
) -> None:
    """What the stall figures come from, for a look after a failed run."""
    acked = sorted((p, o, at) for (p, o), (_, at) in producer.acked.items())
    evidence = {
        "acked": acked,
        "samples": sampler.samples,
        "depths": sampler.depths,
        "status": poller.rows,
    }
    path.write_text(json.dumps(evidence))


def has_partitions(bridge: BridgeProcess) -> bool:
    if not bridge.alive():
        raise AssertionError(f"bridge exited: {bridge.log_tail()}")
    return ASSIGNED.search(bridge.log_tail(1_000_000)) is not None


def timed_exit(
    bridge: BridgeProcess, name: str, into: dict[str, tuple[float, int]]
) -> threading.Thread:
    """Waits (on a thread) for ``bridge`` to exit after SIGTERM: seconds and exit code."""
    sent = time.monotonic()

    def wait() -> None:
        code = wait_exited(bridge, 90)
        into[name] = (time.monotonic() - sent, code)

    thread = threading.Thread(target=wait, name=f"exit-{name}", daemon=True)
    thread.start()
    return thread


def wait_exited(bridge: BridgeProcess, timeout: float) -> int:
    try:
        return bridge.process.wait(timeout)
    except Exception:
        bridge.kill()
        return -999  # needed SIGKILL


def hhmmss(at: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(at)) + f".{int(at % 1 * 1000):03d}"


@pytest.mark.parametrize("protocol", list(PROTOCOLS))
def test_rolling_update_under_load_keeps_every_partition_committing(
    protocol: str, stack: StackInfo, kafka: Kafka, executions: Executions, work_dir: Path
) -> None:
    begun = time.monotonic()
    queue = unique("q-rolling")
    worker = start_worker(stack, queue, work_dir, concurrency=WORKER_THREADS, pool="threads")
    topic = kafka.create_topic(PARTITIONS, prefix="rolling")
    group = unique(f"g-rolling-{protocol}")
    route = {"topic": topic, "task": "it.record", "queue": queue}
    config = bridge_config(
        stack,
        group,
        [route],
        kafka={"consumer": PROTOCOLS[protocol], "commit_interval": 0.5},
    )
    producer = PacedProducer(kafka.bootstrap, topic, RATE, seed=12)
    broker = redis.Redis.from_url(f"{stack.redis_url}/0")
    sampler = CommitSampler(kafka.bootstrap, group, topic, broker, queue)
    old = [start_bridge(config, work_dir, f"old-{i}") for i in range(1, REPLICAS + 1)]
    new: list[BridgeProcess] = []
    poller = StatusPoller()
    poller.bridges.extend(old)
    stopped: dict[str, tuple[float, int]] = {}  # name → (seconds from SIGTERM to exit, code)
    terms: list[tuple[str, float]] = []
    try:
        for bridge in old:
            wait_for(partial(has_partitions, bridge), 90, "the first bridges' assignments")
        sampler.start()
        producer.start()
        wait_for(sampler.every_partition_committed, 60, "a first commit on every partition")
        measured_from = time.time()
        # the load's schedule, not a wait for a condition: 4 s of steady state first
        time.sleep(4)  # the workers are behind, the Celery queue is full
        exits: list[threading.Thread] = []
        for i, leaving in enumerate(old, start=1):
            joining = start_bridge(config, work_dir, f"new-{i}")
            new.append(joining)
            poller.bridges.append(joining)
            with suppress(AssertionError):  # a rolling update does not wait longer either
                wait_for(partial(has_partitions, joining), READY_WAIT, "partitions", 0.1)
            leaving.process.send_signal(signal.SIGTERM)
            terms.append((f"old-{i}", time.time()))
            exits.append(timed_exit(leaving, f"old-{i}", stopped))
        for waiter in exits:
            waiter.join(100)
        time.sleep(4)  # the new fleet alone, under load
        producer.stop()
        assert not producer.errors, producer.errors[:3]
        ends = producer.end_offsets()
        wait_for(lambda: sampler.latest() == ends, 120, "every record committed", 0.25)
    finally:
        producer.cancel()
        for bridge in old + new:
            if bridge.alive():
                bridge.process.send_signal(signal.SIGTERM)
        final_codes = [wait_exited(b, 90) for b in new]
        worker.stop()
        sampler.stop()
        poller.stop()
        broker.close()
        save_evidence(work_dir / "evidence.json", producer, sampler, poller)

    # the worker has exited (worker.stop() waits for it): no run can be recorded after this
    assert worker.process.poll() is not None
    runs = Counter((r["ckb_partition"], r["ckb_offset"]) for r in executions.of(topic))
    lost = [coords for coords in producer.acked if coords not in runs]
    duplicates = sum(count - 1 for count in runs.values())
    stall = longest_stall(sampler.samples, producer.acked, measured_from)
    gave_up = {b.log_path.stem for b in old + new if CLOSE_GAVE_UP in b.log_tail(1_000_000)}
    elapsed = time.monotonic() - begun
    deepest = max((depth for _, depth in sampler.depths), default=0)
    shutdowns = ", ".join(f"{name} {took:.1f}s" for name, (took, _) in stopped.items())
    figure(
        f"rolling update ({protocol}): {len(producer.acked)} records, {PARTITIONS} partitions, "
        f"{REPLICAS} bridges replaced; deepest Celery queue {deepest}; longest stall "
        f"{stall.seconds:.1f}s (p{stall.partition}, ended {hhmmss(stall.ended)}); "
        f"lost {len(lost)}, duplicates {duplicates}; "
        f"SIGTERM to exit: {shutdowns}; close gave up: {sorted(gave_up) or 'none'}; "
        f"test {elapsed:.0f}s"
    )
    logs = ", ".join(str(b.log_path) for b in old + new)
    per_partition = {p: round(s, 1) for p, s in sorted(stall.per_partition.items())}
    context = (
        f"SIGTERMs at {[(n, hhmmss(t)) for n, t in terms]}; "
        f"stall per partition {per_partition}; logs: {logs}"
    )
    assert all(code == 0 for _, code in stopped.values()), f"exit codes {stopped}; {context}"
    assert final_codes == [0] * REPLICAS, f"exit codes of the new bridges {final_codes}"
    assert not gave_up, f"Consumer.close() gave up in {sorted(gave_up)}; {context}"
    assert not lost, f"{len(lost)} records never ran: {sorted(lost)[:5]}; {context}"
    assert duplicates == 0, f"{duplicates} duplicate runs; {context}"
    assert stall.seconds < MAX_STALL, (
        f"partition {stall.partition} made no commit progress for {stall.seconds:.1f}s "
        f"(until {hhmmss(stall.ended)}); {context}"
    )
