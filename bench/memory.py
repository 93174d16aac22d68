"""``--memory``: the bridge's RSS over a long run (1M records by default, time-bounded).

Records are produced beforehand; ``ckb run`` dispatches them to the no-op worker pool with the
usual window. RSS (VmRSS) is sampled every second against the committed count; the figure is
RSS after all records over RSS after the first 10% (100k of 1M). When the time limit comes
first, the run reports how far it got, and the ratio over what was processed. Each sample
also reads the bridge's ``ckb_inflight_records`` (summed over partitions) from its /metrics:
in flight never above the window (``max_in_flight_total``) while a backlog waits in Kafka.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

from rich.table import Table

from bench.env import committed_total, group_probe, unique
from bench.phases import QUEUE_E
from bench.session import Session

SAMPLE_EVERY = 1.0
TARGET_RATIO = 1.10


@dataclass
class Sample:
    seconds: float
    committed: int
    rss_mib: float
    #: tasks in flight (the bridge's gauge, refreshed about once a second)
    in_flight: float


def _sample_until(s: Session, bridge: Any, topic: str, group: str, total: int) -> list[Sample]:
    """Sample RSS and the committed count until ``total`` is committed or time runs out."""
    probe = group_probe(s.stack.bootstrap, group)
    samples: list[Sample] = []
    try:
        origin, _ = bridge.wait_consuming(s.options.timeout)
        deadline = origin + s.options.memory_timeout
        while True:
            done = committed_total(probe, topic, s.options.partitions)
            in_flight = bridge.metrics()["ckb_inflight_records"]
            samples.append(Sample(time.monotonic() - origin, done, bridge.rss(), in_flight))
            if done >= total or time.monotonic() >= deadline or bridge.process.poll() is not None:
                return samples
            time.sleep(SAMPLE_EVERY)
    finally:
        probe.close()


def _rss_at(samples: list[Sample], count: int) -> Sample | None:
    return next((x for x in samples if x.committed >= count), None)


def memory_run(s: Session) -> dict[str, Any]:
    total = s.options.memory_records
    first_mark = max(total // 10, 1)
    topic = s.topic_with(total, "bench-mem")
    ctx = s.context(topic, total)
    group = unique("bench-mem")
    ctx.probe.clear_results()
    bridge = ctx.bridge(group, [topic], QUEUE_E, s.options.window, grace=10.0)
    try:
        with s.console.status(f"memory run: {total:,} records through the bridge"):
            samples = _sample_until(s, bridge, topic, group, total)
        peak = bridge.peak_rss()
    finally:
        bridge.stop()
    data = _summary(samples, total, first_mark, peak)
    data["in_flight_cap"] = s.options.window
    data["in_flight_max_sampled"] = max(x.in_flight for x in samples)
    s.console.print(_table(samples, data))
    return {"options": {k: str(v) for k, v in asdict(s.options).items()}, "memory": data}


def _summary(samples: list[Sample], total: int, first_mark: int, peak: float) -> dict[str, Any]:
    last = samples[-1]
    early = _rss_at(samples, first_mark)
    ratio = last.rss_mib / early.rss_mib if early is not None else None
    return {
        "records_wanted": total,
        "records_committed": last.committed,
        "complete": last.committed >= total,
        "seconds": last.seconds,
        "rate": last.committed / max(last.seconds, 1e-9),
        "first_mark": first_mark,
        "rss_mib_at_first_mark": None if early is None else early.rss_mib,
        "rss_mib_at_end": last.rss_mib,
        "rss_ratio": ratio,
        "target": f"<= {TARGET_RATIO}",
        "met": ratio is not None and ratio <= TARGET_RATIO,
        "peak_rss_mib": peak,
        "samples": [asdict(x) for x in samples],
    }


def _table(samples: list[Sample], data: dict[str, Any]) -> Table:
    table = Table(title="Bridge RSS over the run")
    for column in ("seconds", "committed", "RSS MiB", "in flight"):
        table.add_column(column, justify="right")
    step = max(len(samples) // 12, 1)
    for sample in [*samples[::step], samples[-1]]:
        table.add_row(
            f"{sample.seconds:.0f}",
            f"{sample.committed:,}",
            f"{sample.rss_mib:.1f}",
            f"{sample.in_flight:.0f}",
        )
    ratio = data["rss_ratio"]
    verdict = "—" if ratio is None else f"{ratio:.3f} ({'met' if data['met'] else 'MISSED'})"
    done = "" if data["complete"] else " [red](time limit: not all records)"
    table.caption = (
        f"RSS(end)/RSS({data['first_mark']:,}) = {verdict}, target {data['target']}; "
        f"{data['records_committed']:,} records at {data['rate']:,.0f}/s{done}; in flight "
        f"at most {data['in_flight_max_sampled']:.0f} (cap {data['in_flight_cap']:,})"
    )
    return table
