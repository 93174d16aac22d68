"""The bridge's memory while it holds a backlog of 1 MiB records (issue 10's byte budgets).

    python -m bench.budget [--records 400] [--budget-mib 128] [--kind string|objects]

Records of about 1 MiB are produced first; then ``ckb run`` starts with nobody consuming its
Celery queue, so the workers' window stays at its floor and the records wait in the bridge
until its byte budget (``limits.max_in_flight_bytes_total``) pauses the partitions. Printed:
the records the bridge read, its RSS when idle (same config, empty topic), and its peak RSS
(VmHWM) holding the backlog: the peak minus the idle RSS is what the held records cost.
``--kind objects`` sends ``[{},{},...]`` values (about 25 MB each once decoded).
``CKB_BENCH_BRIDGE_TREE=<checkout>`` measures another checkout's bridge (before/after).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from bench.bridgeproc import BridgeProcess, bridge_config, bridge_tree
from bench.env import Stack, unique

PARTITIONS = 4
RECORD_BYTES = 2**20
SETTLED_FOR = 5.0  # seconds without a new record read: the bridge holds all it will


def value_of(kind: str, n: int) -> bytes:
    if kind == "objects":
        count = (RECORD_BYTES - 2) // 3
        return b"[" + b",".join([b"{}"] * count) + b"]"
    text = json.dumps({"n": n, "pad": "x" * (RECORD_BYTES - 40)})
    return text.encode()


def produce_backlog(stack: Stack, topic: str, count: int, kind: str) -> None:
    admin = AdminClient({"bootstrap.servers": stack.bootstrap})
    config = {"max.message.bytes": str(2 * RECORD_BYTES)}
    for future in admin.create_topics([NewTopic(topic, PARTITIONS, 1, config=config)]).values():
        future.result(30)
    producer = Producer(
        {"bootstrap.servers": stack.bootstrap, "message.max.bytes": 2 * RECORD_BYTES}
    )
    for n in range(count):
        producer.produce(topic, value=value_of(kind, n), partition=n % PARTITIONS)
        producer.poll(0)
        if n % 50 == 49 and producer.flush(60):
            raise RuntimeError("producing the backlog did not complete")
    if producer.flush(60):
        raise RuntimeError("producing the backlog did not complete")


def config_for(stack: Stack, topic: str, budget_mib: int) -> dict[str, Any]:
    config = bridge_config(stack, unique("g-budget"), [topic], "budget-nobody", 10_000, None)
    route = config["routes"][0]
    route["max_payload_bytes"] = 2 * RECORD_BYTES
    if "max_in_flight_bytes" in (bridge_tree() / "bridge" / "settings.py").read_text():
        config["limits"]["max_in_flight_bytes_total"] = budget_mib * 2**20
        route["max_in_flight_bytes"] = budget_mib * 2**20
    return config


def held_records(bridge: BridgeProcess, timeout: float) -> float:
    """Records the bridge read, once it stopped reading for SETTLED_FOR seconds."""
    last, since = -1.0, time.monotonic()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and bridge.alive():
        read = bridge.metrics()["ckb_records_consumed_total"]
        if read != last:
            last, since = read, time.monotonic()
        elif time.monotonic() - since >= SETTLED_FOR and read > 0:
            return read
        time.sleep(0.5)
    return last


def idle_rss(stack: Stack, work_dir: Path, budget_mib: int) -> float:
    topic = unique("budget-empty")
    admin = AdminClient({"bootstrap.servers": stack.bootstrap})  # alive until answered
    admin.create_topics([NewTopic(topic, PARTITIONS, 1)])[topic].result(30)
    bridge = BridgeProcess.start(config_for(stack, topic, budget_mib), work_dir, "idle")
    try:
        bridge.wait_assigned()
        time.sleep(3)  # the bridge's own threads and connections settle
        return bridge.peak_rss()
    finally:
        bridge.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=400)
    parser.add_argument("--budget-mib", type=int, default=128)
    parser.add_argument("--kind", choices=["string", "objects"], default="string")
    args = parser.parse_args()
    work_dir = Path(tempfile.mkdtemp(prefix="ckb-budget-"))
    stack = Stack.start(work_dir)
    try:
        idle = idle_rss(stack, work_dir, args.budget_mib)
        topic = unique("budget")
        produce_backlog(stack, topic, args.records, args.kind)
        bridge = BridgeProcess.start(config_for(stack, topic, args.budget_mib), work_dir, "held")
        try:
            bridge.wait_assigned()
            held = held_records(bridge, timeout=180)
            peak = bridge.peak_rss()
            alive = bridge.alive()
        finally:
            bridge.stop()
        print(
            f"bridge tree {bridge_tree()}: {args.records} records of 1 MiB ({args.kind}), "
            f"budget {args.budget_mib} MiB: read {held:.0f} records "
            f"({held * RECORD_BYTES / 2**20:.0f} MiB), idle RSS {idle:.0f} MiB, "
            f"peak RSS {peak:.0f} MiB, peak - idle {peak - idle:.0f} MiB"
            f"{'' if alive else ', the bridge DIED'}"
        )
    finally:
        stack.stop()


if __name__ == "__main__":
    main()
