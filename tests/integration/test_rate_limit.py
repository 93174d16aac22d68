"""Rate limits hold for the consumer group as a whole (issue 13): one bucket in real Redis,
shared by every bridge, measured where it matters, at the worker's task starts."""

from __future__ import annotations

import json
import time
from pathlib import Path

import redis

from bridge.rate_limit import MIN_WAIT, TokenBuckets
from bridge.stack import StackInfo
from tests.integration.harness import (
    SHARED_QUEUE,
    Executions,
    Kafka,
    Worker,
    bridge_config,
    start_bridge,
    unique,
    wait_for,
)

RATE, BURST, RECORDS, BRIDGES, PARTITIONS = 50, 50, 3000, 3, 6
WINDOW = 5.0


def test_two_clients_of_one_bucket_get_the_burst_then_the_rate_between_them(
    stack: StackInfo,
) -> None:
    group = unique("g-bucket")
    clients = [redis.Redis.from_url(f"{stack.redis_url}/1") for _ in range(2)]
    buckets = [TokenBuckets(client, group) for client in clients]
    began = time.monotonic()
    granted = 0
    while time.monotonic() - began < 2.0:
        for bucket in buckets:
            granted += bucket.take("orders", 20.0, 10, 5).granted
    elapsed = time.monotonic() - began
    assert granted <= 10 + 20 * elapsed + 1, "two bridges got more than one bucket's worth"
    assert granted >= 10 + 20 * (elapsed - 0.2), "the bucket starved its clients"
    first = buckets[0].take("other", 20.0, 10, 100)
    assert first.granted == 10, "each route has its own bucket, full at first"
    assert first.wait == MIN_WAIT  # the next token is due in 1/20 s; tokens gather meanwhile
    for client in clients:
        client.close()


def test_three_bridges_hold_the_group_s_task_starts_to_the_rate(
    stack: StackInfo, kafka: Kafka, executions: Executions, shared_worker: Worker, work_dir: Path
) -> None:
    limited = kafka.create_topic(PARTITIONS, prefix="rate")
    free = kafka.create_topic(PARTITIONS, prefix="free")
    values = [json.dumps({"payload": {"n": n}}).encode() for n in range(RECORDS)]
    kafka.produce(limited, values, partition_of=lambda i: i % PARTITIONS)
    routes = [
        {
            "topic": limited,
            "task": "it.record",
            "queue": SHARED_QUEUE,
            "call": "kwargs",
            "rate_limit": f"{RATE}/s",
            "rate_burst": BURST,
        },
        {"topic": free, "task": "it.record", "queue": SHARED_QUEUE, "call": "kwargs"},
    ]
    config = bridge_config(stack, unique("g-rate"), routes)
    group = config["kafka"]["group_id"]
    calls_before = _script_calls(stack)
    bridges = [start_bridge(config, work_dir, f"bridge-{i}") for i in range(BRIDGES)]
    try:
        wait_for(
            lambda: kafka.caught_up(group, limited, PARTITIONS),
            RECORDS / RATE + 60,
            "the limited route committed to its end",
        )
        calls = _script_calls(stack) - calls_before
        # then a route without a limit, through the same bridges and workers (afterwards:
        # its tasks would otherwise queue before the limited ones and bunch their starts)
        kafka.produce(free, values[:600], partition_of=lambda i: i % PARTITIONS)
        wait_for(lambda: kafka.caught_up(group, free, PARTITIONS), 60, "the unlimited route")
        assert all(b.alive() for b in bridges), "\n".join(b.log_tail() for b in bridges)
    finally:
        codes = [b.terminate() for b in bridges]
    assert codes == [0] * BRIDGES

    print(f"bucket calls (EVALSHA): {calls}, {calls / RECORDS:.2f} per record")
    starts = sorted(run["start"] for run in executions.of(limited))
    assert len(starts) == RECORDS, "every record ran once"
    # the first burst: the full bucket, plus what refilled while the workers started it (the
    # burst reaches the workers over a few hundred ms); windows start a second after it
    after_burst = starts[BURST:]
    counts = []
    origin = after_burst[0] + 1.0
    while origin + WINDOW <= after_burst[-1]:
        counts.append(sum(origin <= t < origin + WINDOW for t in after_burst))
        origin += WINDOW
    expected = RATE * WINDOW
    print(f"task starts per {WINDOW:.0f} s window (expected {expected:.0f} +-10%): {counts}")
    assert counts and all(0.9 * expected <= c <= 1.1 * expected for c in counts), counts

    free_starts = sorted(run["start"] for run in executions.of(free))
    free_rate = len(free_starts) / max(free_starts[-1] - free_starts[0], 1e-3)
    print(f"the unlimited route: {free_rate:.0f} task starts/s")
    assert free_rate > 3 * RATE, "a route without a limit was held back"


def _script_calls(stack: StackInfo) -> int:
    """Scripts Redis ran so far (the buckets' only command)."""
    client = redis.Redis.from_url(stack.redis_url)
    try:
        stats = client.info("commandstats")
        return sum(
            int(stats.get(f"cmdstat_{name}", {}).get("calls", 0)) for name in ("evalsha", "eval")
        )
    finally:
        client.close()
