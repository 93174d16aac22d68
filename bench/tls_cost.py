"""What TLS and authentication cost: ``python -m bench.tls_cost``.

Two local stacks side by side, one after the other in one run: plain (Kafka PLAINTEXT, Redis
without TLS or users) and secured (``ckb stack up --secure``: Kafka on SASL_SSL with
SCRAM-SHA-512 and ACLs, Redis on TLS with ACL users). On each, the R and E of
:mod:`bench.combinations`: the bridge runs as its least-privilege users, the workers as theirs,
R's client as the Redis administrator (a program using Celery directly). Prints records/s,
E/R and the bridge's CPU per record, and what the secured stack costs against the plain one.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

from bench.combinations import Access, Combination, end_to_end, median, round_trip
from bench.common import free_port
from bench.env import Workers, unique
from bridge.stack import LocalStack, StackInfo, redis_acl
from bridge.stack.kafka_acls import ADMIN_USER, SOURCE_PREFIX


def plain(root: Path, local: LocalStack, info: StackInfo) -> tuple[Combination, Combination]:
    combo = Combination(root, local, info, "plain", f"{info.redis_url}/0", f"{info.redis_url}/1")
    return combo, combo


def secured(root: Path, local: LocalStack, info: StackInfo) -> tuple[Combination, Combination]:
    """The workers' and the bridge's side (least privilege), and R's client (administrator)."""
    clients = info.secure
    assert clients is not None
    worker = redis_acl.WORKER_USER
    access = Access(
        admin_kafka=clients.setup.kafka_client(ADMIN_USER),
        bridge_sections=clients.bridge_settings(),
        topic_prefix=SOURCE_PREFIX,
        group_prefix="ckb-",
    )
    workers = Combination(
        root, local, info, "secured",
        clients.redis_url(worker, 0), clients.redis_url(worker, 1), access,
    )  # fmt: skip
    admin = redis_acl.ADMIN_USER
    client = Combination(
        root, local, info, "secured", clients.redis_url(admin, 0), clients.redis_url(admin, 1)
    )
    return workers, client


def run(name: str, secure: bool, options: argparse.Namespace, console: Console) -> list[float]:
    """Median R, E, E/R and bridge µs/record on a fresh stack of that kind."""
    root = Path(tempfile.mkdtemp(prefix=f"ckb-tls-{name}-"))
    local = LocalStack(
        root / "stack", kafka_port=free_port(), redis_port=free_port(), secure=secure
    )
    with console.status(f"{name}: starting the stack"):
        info = local.up(progress=lambda line: None)
    r_rates, e_rates, cpus = [], [], []
    try:
        side, client = (secured if secure else plain)(root, local, info)
        queues = [unique("ckb-bench-r"), unique("ckb-bench-e")]  # the ACL users' queues: ckb-*
        workers = Workers.start(side, options.workers, options.concurrency, "prefork", queues)
        try:
            for repeat in range(options.repeat):
                with console.status(f"{name}: R and E, repeat {repeat + 1}"):
                    r_rates.append(round_trip(client, queues[0], options.records, options.window))
                    rate, cpu = end_to_end(
                        side, queues[1], options.records, options.window, options.partitions
                    )
                e_rates.append(rate)
                cpus.append(cpu)
                console.print(
                    f"{name} repeat {repeat + 1}: R {r_rates[-1]:,.0f}/s, E {rate:,.0f}/s, "
                    f"E/R {rate / r_rates[-1]:.2f}, bridge {cpu:.0f} µs/rec"
                )
        finally:
            workers.stop()
    finally:
        local.down()
    ratios = [e / r for e, r in zip(e_rates, r_rates, strict=True)]
    return [median(r_rates), median(e_rates), median(ratios), median(cpus)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.tls_cost", description=__doc__)
    parser.add_argument("--records", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--window", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--partitions", type=int, default=6)
    options = parser.parse_args(argv)
    console = Console(stderr=True)
    figures = {
        name: run(name, name == "secured", options, console) for name in ("plain", "secured")
    }
    table = Table(
        title=f"TLS and authentication: {options.records:,} no-op tasks, W={options.window}, "
        f"{options.workers}x{options.concurrency} prefork, medians of {options.repeat}"
    )
    columns = ("R records/s", "E records/s", "E/R", "bridge µs/rec")
    table.add_column("stack")
    for column in columns:
        table.add_column(column, justify="right")
    for name, values in figures.items():
        table.add_row(name, *(f"{v:,.0f}" if v >= 10 else f"{v:.2f}" for v in values))
    cost = [s / p for s, p in zip(figures["secured"], figures["plain"], strict=True)]
    table.add_row("secured / plain", *(f"{c:.2f}" for c in cost))
    Console().print(table)


if __name__ == "__main__":
    main()
