"""The measurements: K, P, D, R, B (bridge dispatch only), E (bridge end to end), latencies.

Every phase returns a :class:`PhaseResult`. Timing windows exclude process start-up: a phase
is timed from its first record moving (first consumed, first published, first result) to its
last one being done. The latency measurements (paced traffic, send call → task start in the
worker) are in :mod:`bench.latency`; :func:`celery_latency` runs after R, :func:`bridge_latency`
after E, with its own bridge.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from bench import TASK_NAME, latency
from bench.bridgeproc import BridgeProcess, bridge_config
from bench.env import (
    Stack,
    Workers,
    celery_client,
    committed_total,
    group_probe,
    payload,
    unique,
)
from bench.redisstats import RedisCost, RedisProbe, Span, wait_count

#: queues: D's prefill (P publishes into it), R's, E's, and B's (never consumed)
QUEUE_D, QUEUE_R, QUEUE_E, QUEUE_B = "bench-d", "bench-r", "bench-e", "bench-b"


@dataclass
class PhaseResult:
    name: str
    records: int
    seconds: float
    redis: RedisCost | None = None
    cpu_seconds: float | None = None  # the bridge process, over the timed window
    peak_rss_mib: float | None = None
    latencies: list[float] = field(default_factory=list)  # seconds, paced: send → task start
    idle_cpu: float | None = None  # the bridge's CPU share with nothing to do (0..1 per core)
    paced: latency.Paced | None = None  # the bridge latency run (E only)

    @property
    def rate(self) -> float:
        return self.records / max(self.seconds, 1e-9)


@dataclass
class Context:
    stack: Stack
    workers: Workers
    probe: RedisProbe
    topic: str
    partitions: int
    records: int
    window: int
    commit_interval: float | None
    latency_records: int
    latency_rate: float
    timeout: float

    def bridge(
        self,
        group: str,
        topics: list[str],
        queue: str,
        window: int,
        grace: float,
        window_follows_workers: bool = True,
    ) -> BridgeProcess:
        config = bridge_config(
            self.stack,
            group,
            topics,
            queue,
            window,
            self.commit_interval,
            shutdown_grace=grace,
            window_follows_workers=window_follows_workers,
        )
        return BridgeProcess.start(config, self.stack.work_dir, group)


def wait_target(count: Callable[[], int], target: int, timeout: float, interval: float) -> float:
    """Poll until ``count() >= target``; the moment it did."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if count() >= target:
            return time.monotonic()
        time.sleep(interval)
    raise TimeoutError(f"count stayed below {target} for {timeout:.0f}s (last {count()})")


# == K: raw Kafka consume ===================================================================
def raw_consume(ctx: Context) -> PhaseResult:
    consumer = Consumer(
        {"bootstrap.servers": ctx.stack.bootstrap, "group.id": unique("bench-k")}
        | {"enable.auto.commit": False}
    )
    tps = [TopicPartition(ctx.topic, p, OFFSET_BEGINNING) for p in range(ctx.partitions)]
    try:
        origin = time.monotonic()
        consumer.assign(tps)
        seen, first, started = 0, 0, None
        deadline = origin + ctx.timeout
        while seen < ctx.records and time.monotonic() < deadline:
            messages = consumer.consume(500, 1.0)
            valid = sum(1 for m in messages if m.error() is None and m.value() is not None)
            if valid and started is None:
                started, first = time.monotonic(), valid
            seen += valid
        ended = time.monotonic()
    finally:
        consumer.close()
    if seen < ctx.records:
        raise TimeoutError(f"raw consume read {seen} of {ctx.records} records")
    if started is None or seen == first:
        return PhaseResult("K", seen, ended - origin)
    return PhaseResult("K", seen - first, ended - started)


# == P: raw Celery publish ==================================================================
def close_client(app: Any) -> None:
    """Close a client app and its result consumer's pub/sub connection."""
    consumer = getattr(app.backend, "result_consumer", None)
    if consumer is not None:
        consumer.stop()
    app.close()


def raw_publish(ctx: Context) -> PhaseResult:
    """``send_task`` in a loop with one producer; the tasks stay queued for D."""
    ctx.probe.clear_results()
    app = celery_client(ctx.stack)
    try:
        with app.producer_or_acquire() as producer:
            app.send_task(TASK_NAME, args=[payload(-1)], queue=QUEUE_B, producer=producer)
            ctx.probe.drop_queue(QUEUE_B)  # warm-up: connections open before the clock starts
            ctx.probe.start()
            started = time.monotonic()
            for i in range(ctx.records):
                app.send_task(TASK_NAME, args=[payload(i)], queue=QUEUE_D, producer=producer)
            ended = time.monotonic()
            cost = ctx.probe.stop()
    finally:
        close_client(app)
    return PhaseResult("P", ctx.records, ended - started, cost)


# == D: worker-only drain ===================================================================
def drain(ctx: Context) -> PhaseResult:
    """The workers start consuming P's prefilled queue; timed until every result exists."""
    ctx.probe.start()
    origin = time.monotonic()
    ctx.workers.consume(QUEUE_D)
    try:
        span = wait_count(ctx.probe.dbsize, ctx.records, ctx.timeout, origin=origin)
    finally:
        cost = ctx.probe.stop()
        ctx.workers.ignore(QUEUE_D)
    return PhaseResult("D", span.counted, span.seconds, cost)


# == R: Celery-only round trip ==============================================================
def round_trip(ctx: Context) -> PhaseResult:
    """Publish and wait for every result, at most ``window`` outstanding (oldest first)."""
    ctx.probe.clear_results()
    app = celery_client(ctx.stack)
    pending: deque[Any] = deque()
    try:
        with app.producer_or_acquire() as producer:
            app.send_task(TASK_NAME, args=[payload(-1)], queue=QUEUE_R, producer=producer).get(60)
            ctx.probe.start()
            started = time.monotonic()
            for i in range(ctx.records):
                if len(pending) >= ctx.window:
                    pending.popleft().get(timeout=ctx.timeout)
                pending.append(
                    app.send_task(TASK_NAME, args=[payload(i)], queue=QUEUE_R, producer=producer)
                )
            while pending:
                pending.popleft().get(timeout=ctx.timeout)
            ended = time.monotonic()
            cost = ctx.probe.stop()
    finally:
        close_client(app)
    return PhaseResult("R", ctx.records, ended - started, cost)


def celery_latency(ctx: Context) -> list[float]:
    """Paced ``send_task`` to idle workers: send call → task start, per task (seconds).

    Runs right after R, whose results have all arrived, so the worker queue is empty.
    """
    app = celery_client(ctx.stack)
    try:
        paced = latency.celery_paced(
            app, QUEUE_R, ctx.latency_records, ctx.latency_rate, ctx.probe.client, ctx.timeout
        )
    finally:
        close_client(app)
    return checked(paced, "Celery").latencies()


def checked(paced: latency.Paced, what: str) -> latency.Paced:
    if paced.lost:
        raise RuntimeError(f"{what} latency: {paced.lost} tasks without a result")
    return paced


# == B: the bridge's dispatch rate, no worker consuming =====================================
def bridge_dispatch(ctx: Context) -> PhaseResult:
    """Records/s the bridge publishes into a queue no worker reads (window ≥ records)."""
    ctx.probe.clear_results()
    group = unique("bench-b")
    window = max(ctx.records, ctx.window)
    # nobody drains QUEUE_B: the window that follows the workers would stop at its floor
    bridge = ctx.bridge(
        group, [ctx.topic], QUEUE_B, window, grace=0.0, window_follows_workers=False
    )
    try:
        origin, metrics = bridge.wait_consuming(ctx.timeout)
        ctx.probe.start()
        cpu = bridge.cpu()
        already = int(metrics["ckb_tasks_dispatched_total"])
        ended = wait_target(lambda: ctx.probe.llen(QUEUE_B), ctx.records, ctx.timeout, 0.01)
        # costs include the work that follows the last publish (dispatch markers, events)
        wait_target(
            lambda: int(bridge.metrics()["ckb_tasks_dispatched_total"]), ctx.records, 30, 0.01
        )
        cpu = bridge.cpu() - cpu
        cost = ctx.probe.stop()
        peak = bridge.peak_rss()
    finally:
        bridge.stop()
        ctx.probe.drop_queue(QUEUE_B)
    span = Span(origin, ended, ctx.records - already)
    return PhaseResult("B", span.counted, span.seconds, cost, cpu, peak)


# == E: the bridge end to end ===============================================================
def bridge_end_to_end(ctx: Context) -> PhaseResult:
    """``ckb run`` on the prefilled topic with the workers consuming; until all committed.

    Then the bridge's idle CPU, and the bridge latency (:func:`bridge_latency`), with a fresh
    bridge once this one has stopped: E's figures and the latency do not share a window.
    """
    ctx.probe.clear_results()
    group = unique("bench-e")
    bridge = ctx.bridge(group, [ctx.topic], QUEUE_E, ctx.window, grace=10.0)
    committed = group_probe(ctx.stack.bootstrap, group)
    try:
        origin, _ = bridge.wait_consuming(ctx.timeout)
        ctx.probe.start()
        cpu = bridge.cpu()
        ended = wait_target(
            lambda: committed_total(committed, ctx.topic, ctx.partitions),
            ctx.records,
            ctx.timeout,
            0.05,
        )
        cpu = bridge.cpu() - cpu
        cost = ctx.probe.stop()
        peak = bridge.peak_rss()
        idle = idle_cpu(bridge)
    finally:
        committed.close()
        bridge.stop()
    paced = bridge_latency(ctx)
    result = PhaseResult("E", ctx.records, ended - origin, cost, cpu, peak, idle_cpu=idle)
    result.latencies = paced.latencies()
    result.paced = paced
    return result


def idle_cpu(bridge: BridgeProcess, seconds: float = 3.0) -> float:
    """The bridge's CPU share while nothing arrives: loop turns, librdkafka, helper threads."""
    time.sleep(1.5)  # the last commit and result sweep
    before, began = bridge.cpu(), time.monotonic()
    time.sleep(seconds)
    return (bridge.cpu() - before) / (time.monotonic() - began)


def bridge_latency(ctx: Context) -> latency.Paced:
    """Paced records to a fresh, assigned, idle bridge: produce call → task start."""

    def start(group: str, task: str, topics: list[str]) -> BridgeProcess:
        config = bridge_config(
            ctx.stack, group, topics, QUEUE_E, ctx.window, ctx.commit_interval, shutdown_grace=0
        )
        for route in config["routes"]:
            route["task"] = task
        return BridgeProcess.start(config, ctx.stack.work_dir, group)

    paced = latency.bridge_paced(
        start,
        ctx.stack.bootstrap,
        ctx.partitions,
        ctx.latency_records,
        ctx.latency_rate,
        ctx.probe.client,
        lambda: ctx.probe.llen(QUEUE_E),
        ctx.timeout,
    )
    return checked(paced, "bridge")
