"""``--window-trace``: the dispatch window over a run, with the worker pool paused midway.

Records are produced beforehand; one ``ckb run`` sends them to the benchmark's workers (whose
task takes ``CKB_BENCH_TASK_MS``, e.g. 20 ms). Every half second the bridge's /metrics are
read: its window for the queue (``ckb_dispatch_window_tasks``), the tasks in flight, the
finishing rate it measured, and how many records were committed. A third of the way through
the workers stop consuming the queue for ``PAUSE`` seconds (Celery's ``cancel_consumer``), then
start again. The samples go to a CSV and an SVG chart (``--json`` path with .csv/.svg).
"""

from __future__ import annotations

import csv
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.env import committed_total, group_probe, unique
from bench.phases import QUEUE_E
from bench.session import Session

SAMPLE_EVERY = 0.5
#: seconds the workers stop consuming the queue, a third of the way through
PAUSE = 10.0


@dataclass
class Sample:
    seconds: float
    window: float
    in_flight: float
    rate: float
    committed: int


def window_trace(s: Session) -> dict[str, Any]:
    total = s.options.records
    topic = s.topic_with(total, "bench-win")
    ctx = s.context(topic, total)
    group = unique("bench-win")
    bridge = ctx.bridge(group, [topic], QUEUE_E, s.options.window, grace=10.0)
    probe = group_probe(s.stack.bootstrap, group)
    samples: list[Sample] = []
    paused_at = resumed_at = None
    try:
        origin, _ = bridge.wait_consuming(s.options.timeout)
        deadline = origin + s.options.timeout
        while time.monotonic() < deadline:
            done = committed_total(probe, topic, s.options.partitions)
            m = bridge.metrics()
            samples.append(
                Sample(
                    time.monotonic() - origin,
                    m["ckb_dispatch_window_tasks"],
                    m["ckb_queue_inflight_tasks"],
                    m["ckb_queue_finish_rate"],
                    done,
                )
            )
            if paused_at is None and done >= total // 3:
                s.workers.ignore(QUEUE_E)
                paused_at = samples[-1].seconds
            elif (
                paused_at is not None
                and resumed_at is None
                and samples[-1].seconds - paused_at >= PAUSE
            ):
                s.workers.consume(QUEUE_E)
                resumed_at = samples[-1].seconds
            if done >= total:
                break
            time.sleep(SAMPLE_EVERY)
    finally:
        probe.close()
        bridge.stop()
    data = {
        "records": total,
        "paused_at": paused_at,
        "resumed_at": resumed_at,
        "samples": [asdict(x) for x in samples],
    }
    s.console.print(
        f"window trace: {total:,} records in {samples[-1].seconds:.0f}s; window at most "
        f"{max(x.window for x in samples):.0f}, in flight at most "
        f"{max(x.in_flight for x in samples):.0f}; workers paused {paused_at}-{resumed_at}s"
    )
    if s.options.json_path is not None:
        write_csv(s.options.json_path.with_suffix(".csv"), samples)
        write_svg(s.options.json_path.with_suffix(".svg"), samples, paused_at, resumed_at)
    return {"window_trace": data}


def write_csv(path: Path, samples: list[Sample]) -> None:
    with path.open("w", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=list(asdict(samples[0])))
        writer.writeheader()
        writer.writerows(asdict(x) for x in samples)


def write_svg(
    path: Path, samples: list[Sample], paused: float | None, resumed: float | None
) -> None:
    """A plain line chart: window and in flight (tasks, left), finish rate (tasks/s, scaled to
    the same axis), the pause shaded. Hand-written SVG: no plotting library needed."""
    width, height, pad = 760, 320, 50
    t_max = max(x.seconds for x in samples) or 1.0
    y_max = max(max(x.window, x.in_flight, x.rate) for x in samples) or 1.0

    def xy(t: float, v: float) -> str:
        x = pad + (width - 2 * pad) * t / t_max
        y = height - pad - (height - 2 * pad) * v / y_max
        return f"{x:.1f},{y:.1f}"

    def line(values: list[tuple[float, float]], color: str) -> str:
        points = " ".join(xy(t, v) for t, v in values)
        return f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{points}"/>'

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        'font-family="sans-serif" font-size="12">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
    ]
    if paused is not None:
        x0 = xy(paused, 0).split(",")[0]
        x1 = xy(resumed if resumed is not None else t_max, 0).split(",")[0]
        parts.append(
            f'<rect x="{x0}" y="{pad}" width="{float(x1) - float(x0):.1f}" '
            f'height="{height - 2 * pad}" fill="#eee"/>'
        )
        parts.append(f'<text x="{x0}" y="{pad - 6}">workers paused</text>')
    parts += [
        f'<line x1="{pad}" y1="{height - pad}" x2="{width - pad}" y2="{height - pad}" '
        'stroke="black"/>',
        f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{height - pad}" stroke="black"/>',
        f'<text x="{width / 2 - 20}" y="{height - 15}">seconds (0-{t_max:.0f})</text>',
        f'<text x="5" y="{pad - 6}">{y_max:.0f}</text>',
        line([(x.seconds, x.window) for x in samples], "#1f77b4"),
        line([(x.seconds, x.in_flight) for x in samples], "#ff7f0e"),
        line([(x.seconds, x.rate) for x in samples], "#2ca02c"),
        f'<text x="{width - 230}" y="{pad + 10}" fill="#1f77b4">window (tasks)</text>',
        f'<text x="{width - 230}" y="{pad + 26}" fill="#ff7f0e">in flight (tasks)</text>',
        f'<text x="{width - 230}" y="{pad + 42}" fill="#2ca02c">finish rate (tasks/s)</text>',
        "</svg>",
    ]
    path.write_text("\n".join(parts) + "\n")
