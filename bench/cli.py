"""``python -m bench``: one command, its own stack, every figure side by side.

Modes: the standard run (K, P, D, R, B, E, latencies; ``--repeat`` times), ``--memory`` (bridge
RSS over a long run) and ``--profile`` (the bridge under cProfile).
"""

from __future__ import annotations

import dataclasses
import os
import platform
import sys
from typing import Any

from rich.console import Console

from bench import phases
from bench.options import Options, parse
from bench.report import Report, print_report, write_json
from bench.session import Session, session


def machine() -> dict[str, Any]:
    import celery
    import confluent_kafka
    import kombu
    import redis

    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "celery": celery.__version__,
        "kombu": kombu.__version__,
        "redis_py": redis.__version__,
        "librdkafka": confluent_kafka.libversion()[0],
    }


def one_repeat(
    s: Session, topic: str, number: int
) -> tuple[dict[str, phases.PhaseResult], list[float]]:
    """Every phase once, on the same topic, Redis, workers and window."""
    ctx = s.context(topic, s.options.records)
    results: dict[str, phases.PhaseResult] = {}
    steps = [
        ("K", phases.raw_consume),
        ("P", phases.raw_publish),
        ("D", phases.drain),
        ("R", phases.round_trip),
        ("B", phases.bridge_dispatch),
        ("E", phases.bridge_end_to_end),
    ]
    celery_lat: list[float] = []
    for name, step in steps:
        with s.console.status(f"repeat {number}: {name} ({ctx.records:,} records)"):
            results[name] = step(ctx)
        s.console.log(f"repeat {number}: {name} {results[name].rate:,.0f} records/s")
        if name == "R":
            with s.console.status(f"repeat {number}: Celery latency (paced)"):
                celery_lat = phases.celery_latency(ctx)
    return results, celery_lat


def standard(s: Session) -> dict[str, Any]:
    topic = s.topic_with(s.options.records)
    report = Report(options=_options_json(s.options))
    for number in range(1, s.options.repeat + 1):
        report.add(*one_repeat(s, topic, number))
    print_report(s.console, report)
    return report.to_json()


def _options_json(options: Options) -> dict[str, Any]:
    return {k: (str(v) if v is not None else None) for k, v in dataclasses.asdict(options).items()}


def main(argv: list[str] | None = None) -> int:
    options = parse(argv)
    load_at_start = os.getloadavg()
    console = Console() if sys.stdout.isatty() else Console(width=120)
    try:
        with session(options, console) as s:
            if options.memory:
                from bench.memory import memory_run

                data = memory_run(s)
            elif options.window_trace:
                from bench.window_trace import window_trace

                data = window_trace(s)
            elif options.profile:
                from bench.profiling import profile_run

                data = profile_run(s)
            else:
                data = standard(s)
        data["machine"] = machine() | {
            "load_avg_at_start": load_at_start,
            "load_avg_at_end": os.getloadavg(),
        }
    except KeyboardInterrupt:
        console.print("[red]interrupted; everything started was stopped")
        return 130
    if options.json_path is not None:
        write_json(options.json_path, data)
        console.print(f"JSON written to {options.json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
