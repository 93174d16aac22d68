"""Records per second through the bridge: one task per record vs batches of 100 (issue 13).

    python -m bench.batch_throughput [--records 20000] [--partitions 4]

The same no-op task (``bench.noop``, which takes any arguments: one payload, or a list) on
the same workers; each mode reads its own topic of ``--records`` records produced beforehand,
timed from the first record consumed to the last offset committed. Prints records/s of each
mode and their ratio, measured in one run.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.bridgeproc import BridgeProcess, bridge_config
from bench.env import Stack, Workers, committed_total, create_topic, group_probe, produce, unique

QUEUE = "bench-batch"


def run_mode(
    stack: Stack, work_dir: Path, records: int, partitions: int, batch: dict[str, Any] | None
) -> float:
    topic = unique("bench-batch")
    create_topic(stack.bootstrap, topic, partitions)
    produce(stack.bootstrap, topic, records, track=False)
    group = unique("g-bench-batch")
    config = bridge_config(stack, group, [topic], QUEUE, 10_000, None)
    if batch is not None:
        config["routes"][0]["batch"] = batch
    bridge = BridgeProcess.start(config, work_dir, f"bridge-{'batch' if batch else 'single'}")
    probe = group_probe(stack.bootstrap, group)
    try:
        began, _ = bridge.wait_consuming()
        while committed_total(probe, topic, partitions) < records:
            if not bridge.alive():
                raise RuntimeError(bridge.log_tail())
            time.sleep(0.05)
        return records / (time.monotonic() - began)
    finally:
        probe.close()
        bridge.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--partitions", type=int, default=4)
    args = parser.parse_args()
    work_dir = Path(tempfile.mkdtemp(prefix="ckb-batch-bench-"))
    stack = Stack.start(work_dir)
    workers = Workers.start(stack, count=2, concurrency=4, pool="prefork", queues=[QUEUE])
    try:
        single = run_mode(stack, work_dir, args.records, args.partitions, None)
        batched = run_mode(
            stack, work_dir, args.records, args.partitions, {"max_records": 100, "max_wait": 0.5}
        )
    finally:
        workers.stop()
        stack.stop()
    print(
        f"{args.records} records, {args.partitions} partitions, no-op task: "
        f"one task per record {single:,.0f} records/s; batches of 100 {batched:,.0f} records/s "
        f"({batched / single:.1f}x)"
    )


if __name__ == "__main__":
    main()
