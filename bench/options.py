"""Command-line options of ``python -m bench``."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Options:
    records: int = 20_000
    repeat: int = 1
    workers: int = 1
    concurrency: int = 4
    pool: str = "prefork"
    prefetch: int = 4
    window: int = 1000
    partitions: int = 4
    commit_interval: float | None = None  # None: the bridge's default (1 s)
    latency_records: int = 1000
    latency_rate: float = 200.0
    timeout: float = 300.0
    json_path: Path | None = None
    work_dir: Path | None = None
    keep: bool = False
    smoke: bool = False
    memory: bool = False
    memory_records: int = 1_000_000
    memory_timeout: float = 600.0
    profile: bool = False
    profile_records: int = 20_000
    profile_clock: str = "cpu"
    window_trace: bool = False


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="Side-by-side benchmark: raw Kafka (K), raw Celery publish (P), worker "
        "drain (D), Celery round trip (R), bridge dispatch (B) and bridge end to end (E).",
    )
    d = Options()
    p.add_argument("--records", type=int, default=d.records, help="records per phase")
    p.add_argument("--repeat", type=int, default=d.repeat, help="runs of every phase")
    p.add_argument("--workers", type=int, default=d.workers, help="celery worker processes")
    p.add_argument("--concurrency", type=int, default=d.concurrency, help="per worker")
    p.add_argument("--pool", default=d.pool, choices=["prefork", "threads", "solo"])
    p.add_argument("--prefetch", type=int, default=d.prefetch, help="worker_prefetch_multiplier")
    p.add_argument("--window", type=int, default=d.window, help="in-flight window W (R and E)")
    p.add_argument("--partitions", type=int, default=d.partitions, help="partitions of the topic")
    p.add_argument(
        "--commit-interval",
        type=float,
        default=d.commit_interval,
        help="the bridge's kafka.commit_interval (default: the bridge's own default)",
    )
    p.add_argument("--latency-records", type=int, default=d.latency_records)
    p.add_argument("--latency-rate", type=float, default=d.latency_rate, help="records/s")
    p.add_argument("--timeout", type=float, default=d.timeout, help="seconds per phase at most")
    p.add_argument("--json", dest="json_path", type=Path, help="write the figures here")
    p.add_argument("--work-dir", type=Path, help="stack state and logs (default: a temp dir)")
    p.add_argument("--keep", action="store_true", help="keep the work dir (logs) afterwards")
    p.add_argument("--smoke", action="store_true", help="tiny run: 500 records, 1 repeat")
    p.add_argument("--memory", action="store_true", help="bridge RSS over a long run instead")
    p.add_argument("--memory-records", type=int, default=d.memory_records)
    p.add_argument("--memory-timeout", type=float, default=d.memory_timeout)
    p.add_argument("--profile", action="store_true", help="the bridge under cProfile instead")
    p.add_argument("--profile-records", type=int, default=d.profile_records)
    p.add_argument(
        "--profile-clock",
        default=d.profile_clock,
        choices=["cpu", "wall"],
        help="cpu: main-thread CPU time (default); wall: python -m cProfile as is",
    )
    p.add_argument(
        "--window-trace",
        action="store_true",
        help="the dispatch window over one run with the workers paused midway (CSV and SVG "
        "next to --json); give the task some work: CKB_BENCH_TASK_MS=20",
    )
    return p


def parse(argv: list[str] | None = None) -> Options:
    args = vars(parser().parse_args(argv))
    if args["smoke"]:
        args |= {"records": 500, "repeat": 1, "latency_records": 100, "latency_rate": 100.0}
        args |= {"memory_records": 5000, "profile_records": 2000, "timeout": 120.0}
    return Options(**args)
