"""E/R for each supported broker/backend combination: ``python -m bench.combinations``.

For every combination the local stack can run, on the same Kafka, workers and task:

- **R**, Celery alone: a client publishes N no-op tasks with ``send_task`` and waits for every
  result through the result backend, at most W outstanding (oldest first), as a program
  using Celery directly on that broker and backend would;
- **E**, the bridge end to end: ``ckb run`` on a topic prefilled with N records, from its
  first consumed record until the group's committed offsets reach N (every task finished and
  its outcome seen through the same backend).

It prints records/s of both, E/R, and the bridge's CPU per record. E/R near 1 means the bridge
costs nothing over Celery's own round trip on that combination; above 1, Kafka's batching and
the bridge's pipelined publish beat a client that waits for each result.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from bench import TASK_NAME
from bench.bridgeproc import BridgeProcess, bridge_config
from bench.common import free_port
from bench.env import (
    Stack,
    Workers,
    celery_client,
    committed_total,
    create_topic,
    group_probe,
    payload,
    produce,
    unique,
)
from bridge.stack import LocalStack, StackInfo


@dataclass(frozen=True)
class Access:
    """How a secured stack is reached: the benchmark's own Kafka clients (as a super user),
    the bridge's config sections (its least-privilege users), the names its ACLs allow."""

    admin_kafka: dict[str, Any]
    bridge_sections: dict[str, Any]
    topic_prefix: str
    group_prefix: str


@dataclass
class Combination(Stack):
    """The bench's stack, with the Celery broker and result backend of one combination."""

    name: str = ""
    broker: str = ""
    backend: str = ""
    #: None: a plain stack, everyone may do anything
    access: Access | None = None

    @property
    def broker_url(self) -> str:
        return self.broker

    @property
    def result_url(self) -> str:
        return self.backend


#: name → (broker URL, result backend URL) of a running stack; None: this stack has no such
#: server. New brokers and backends add an entry here.
COMBINATIONS: dict[str, Callable[[StackInfo], tuple[str, str] | None]] = {
    "redis/redis": lambda info: (f"{info.redis_url}/0", f"{info.redis_url}/1"),
    "rabbitmq/redis": lambda info: (
        None if info.rabbitmq_url is None else (info.rabbitmq_url, f"{info.redis_url}/1")
    ),
    # results are replies to each client's own queue: the bridge's, and R's client's
    "rabbitmq/rpc": lambda info: (
        None if info.rabbitmq_url is None else (info.rabbitmq_url, "rpc://")
    ),
    "redis/postgres": lambda info: (
        None if info.postgres_url is None else (f"{info.redis_url}/0", info.result_backend)
    ),
    # the stack's Redis as the master of a local Sentinel set (master_name in the options)
    "sentinel/sentinel": lambda info: (
        None if info.sentinel is None else (info.sentinel.url(0), info.sentinel.url(1))
    ),
}


@dataclass
class Figures:
    name: str
    r_rate: list[float]
    e_rate: list[float]
    cpu_us: list[float]


def round_trip(combo: Combination, queue: str, records: int, window: int) -> float:
    """R: records/s of publish + wait for every result, at most ``window`` outstanding."""
    app = celery_client(combo)
    pending: deque[Any] = deque()
    try:
        with app.producer_or_acquire() as producer:
            app.send_task(TASK_NAME, args=[payload(-1)], queue=queue, producer=producer).get(60)
            started = time.monotonic()
            for i in range(records):
                if len(pending) >= window:
                    pending.popleft().get(timeout=120)
                task = app.send_task(TASK_NAME, args=[payload(i)], queue=queue, producer=producer)
                pending.append(task)
            while pending:
                pending.popleft().get(timeout=120)
            return records / (time.monotonic() - started)
    finally:
        app.close()


def end_to_end(
    combo: Combination, queue: str, records: int, window: int, partitions: int
) -> tuple[float, float]:
    """E: records/s from the first consumed record to all committed; bridge CPU µs/record."""
    access = combo.access
    kafka = None if access is None else access.admin_kafka
    topic = unique(f"{access.topic_prefix if access else ''}bench-combo")
    create_topic(combo.bootstrap, topic, partitions, settings=kafka)
    produce(combo.bootstrap, topic, records, track=False, settings=kafka)
    group = unique(f"{access.group_prefix if access else ''}bench-combo")
    config = bridge_config(combo, group, [topic], queue, window, None)
    if access is not None:  # the bridge's users: its Kafka login and its Redis URLs
        config["kafka"].update(access.bridge_sections["kafka"])
        config["celery"].update(access.bridge_sections["celery"])
    bridge = BridgeProcess.start(config, combo.work_dir, group)
    probe = group_probe(combo.bootstrap, group, settings=kafka)
    try:
        origin, _ = bridge.wait_consuming(300)
        cpu = bridge.cpu()
        deadline = origin + 600
        while committed_total(probe, topic, partitions) < records:
            if time.monotonic() > deadline or not bridge.alive():
                raise RuntimeError(f"{combo.name}: E did not finish; {bridge.log_tail()}")
            time.sleep(0.05)
        ended = time.monotonic()
        cpu = bridge.cpu() - cpu
    finally:
        probe.close()
        bridge.stop()
    return records / (ended - origin), cpu * 1e6 / records


def measure(combo: Combination, options: argparse.Namespace, console: Console) -> Figures:
    queues = [unique("bench-r"), unique("bench-e")]
    figures = Figures(combo.name, [], [], [])
    with console.status(f"{combo.name}: starting {options.workers} worker(s)"):
        workers = Workers.start(combo, options.workers, options.concurrency, "prefork", queues)
    try:
        for repeat in range(options.repeat):
            with console.status(f"{combo.name}: R, repeat {repeat + 1}"):
                figures.r_rate.append(round_trip(combo, queues[0], options.records, options.window))
            with console.status(f"{combo.name}: E, repeat {repeat + 1}"):
                rate, cpu = end_to_end(
                    combo, queues[1], options.records, options.window, options.partitions
                )
            figures.e_rate.append(rate)
            figures.cpu_us.append(cpu)
            console.print(
                f"{combo.name} repeat {repeat + 1}: R {figures.r_rate[-1]:,.0f}/s, "
                f"E {rate:,.0f}/s, E/R {rate / figures.r_rate[-1]:.2f}, bridge {cpu:.0f} µs/rec"
            )
    finally:
        workers.stop()
    return figures


def median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def table(results: list[Figures], options: argparse.Namespace) -> Table:
    title = (
        f"E/R per combination: {options.records:,} no-op tasks, W={options.window}, "
        f"{options.workers}x{options.concurrency} prefork, medians of {options.repeat}"
    )
    out = Table(title=title)
    for column in ("broker/backend", "R records/s", "E records/s", "E/R", "bridge µs/rec"):
        out.add_column(column, justify="left" if column == "broker/backend" else "right")
    for f in results:
        ratios = [e / r for e, r in zip(f.e_rate, f.r_rate, strict=True)]
        out.add_row(
            f.name,
            f"{median(f.r_rate):,.0f}",
            f"{median(f.e_rate):,.0f}",
            f"{median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})",
            f"{median(f.cpu_us):.0f}",
        )
    return out


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.combinations", description=__doc__)
    parser.add_argument("--records", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--window", type=int, default=1000, help="in-flight window W (R and E)")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument(
        "--only", action="append", choices=sorted(COMBINATIONS), help="default: all"
    )
    parser.add_argument("--work-dir", type=Path, default=None)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    options = parse(argv)
    console = Console(stderr=True)
    names = options.only or sorted(COMBINATIONS)
    root = options.work_dir or Path(tempfile.mkdtemp(prefix="ckb-combos-"))
    local = LocalStack(
        root / "stack",
        kafka_port=free_port(),
        redis_port=free_port(),
        rabbitmq_port=free_port() if any(n.startswith("rabbitmq/") for n in names) else None,
        postgres_port=free_port() if any(n.endswith("/postgres") for n in names) else None,
        sentinel=any(n.startswith("sentinel/") for n in names),
    )
    with console.status("starting the local stack"):
        info = local.up(progress=lambda line: None)
    results = []
    try:
        for name in names:
            urls = COMBINATIONS[name](info)
            if urls is None:
                console.print(f"{name}: not in this stack, skipped")
                continue
            combo = Combination(root, local, info, name, *urls)
            results.append(measure(combo, options, console))
    finally:
        local.down()
    Console().print(table(results, options))


if __name__ == "__main__":
    main()
