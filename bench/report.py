"""Figures from phase results: per repeat, median and spread, targets; rich tables and JSON."""

from __future__ import annotations

import json
import statistics
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from bench.phases import PhaseResult

PHASES = {
    "K": "raw Kafka consume loop",
    "P": "raw Celery send_task loop (one producer)",
    "D": "workers drain a prefilled queue",
    "R": "Celery round trip (send_task + get, window W)",
    "B": "bridge dispatch only (no worker consuming)",
    "E": "bridge end to end (until committed)",
}
SHORT = {
    "K": "Kafka consume",
    "P": "send_task loop",
    "D": "worker drain",
    "R": "Celery round trip",
    "B": "bridge dispatch",
    "E": "bridge end to end",
}

#: name → (unit, what it is); every figure a run reports
FIGURES: dict[str, tuple[str, str]] = {
    **{f"{k.lower()}_rate": ("records/s", PHASES[k]) for k in PHASES},
    "e_over_r": ("ratio", "E / R: bridge end to end vs Celery round trip"),
    "e_over_d": ("ratio", "E / D: bridge end to end vs worker-only drain"),
    "b_over_p": ("ratio", "B / P: bridge dispatch vs plain send_task loop"),
    **{
        f"redis_cmds_per_record_{k.lower()}": ("cmds", f"Redis commands per record, {k}")
        for k in "PDRBE"
    },
    **{
        f"redis_cpu_ms_per_1k_{k.lower()}": ("ms", f"Redis CPU per 1k records, {k}")
        for k in "PDRBE"
    },
    "bridge_cpu_us_per_record_b": ("µs", "bridge CPU per record, dispatch only (B)"),
    "bridge_cpu_us_per_record_e": ("µs", "bridge CPU per record, end to end (E)"),
    "bridge_idle_cpu_pct": ("%", "bridge CPU when idle (after E), % of one core"),
    "bridge_peak_rss_mib_b": ("MiB", "bridge peak RSS (VmHWM), B (window = records)"),
    "bridge_peak_rss_mib_e": ("MiB", "bridge peak RSS (VmHWM), E"),
    "bridge_cpu_us_per_record_paced": (
        "µs",
        "bridge CPU per record at the latency rate (paced, ~1 record per poll)",
    ),
    **{
        f"latency_{q}_ms": ("ms", f"bridge latency {q}: produce call → task start (paced, idle)")
        for q in ("p50", "p95", "p99")
    },
    **{
        f"celery_latency_{q}_ms": ("ms", f"Celery latency {q}: send_task call → task start (paced)")
        for q in ("p50", "p95", "p99")
    },
    **{
        f"kafka_latency_{q}_ms": ("ms", f"Kafka hop {q}: produce call → a plain consumer has it")
        for q in ("p50", "p95", "p99")
    },
    "latency_sent_rate": ("records/s", "rate the bridge latency records were actually produced"),
}

TARGETS = {
    "b_over_p": (2.5, "bridge dispatch ≥ 2.5 x P"),
    "e_over_r": (0.95, "E / R ≥ 0.95"),
}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return 0.0
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def _phase_figures(result: PhaseResult) -> dict[str, float]:
    key = result.name.lower()
    figures = {f"{key}_rate": result.rate}
    if result.redis is not None:
        figures[f"redis_cmds_per_record_{key}"] = result.redis.total_calls / result.records
        figures[f"redis_cpu_ms_per_1k_{key}"] = result.redis.cpu_seconds * 1e6 / result.records
    if result.cpu_seconds is not None:
        figures[f"bridge_cpu_us_per_record_{key}"] = result.cpu_seconds * 1e6 / result.records
    if result.peak_rss_mib is not None:
        figures[f"bridge_peak_rss_mib_{key}"] = result.peak_rss_mib
    if result.idle_cpu is not None:
        figures["bridge_idle_cpu_pct"] = result.idle_cpu * 100
    return figures


def repeat_figures(results: Mapping[str, PhaseResult], celery_lat: list[float]) -> dict[str, float]:
    """Every figure of one repeat of all phases."""
    figures: dict[str, float] = {}
    for result in results.values():
        figures.update(_phase_figures(result))
    figures["e_over_r"] = figures["e_rate"] / figures["r_rate"]
    figures["e_over_d"] = figures["e_rate"] / figures["d_rate"]
    figures["b_over_p"] = figures["b_rate"] / figures["p_rate"]
    for q in (50, 95, 99):
        figures[f"latency_p{q}_ms"] = percentile(results["E"].latencies, q / 100) * 1000
        figures[f"celery_latency_p{q}_ms"] = percentile(celery_lat, q / 100) * 1000
    paced = results["E"].paced
    if paced is not None:
        figures["latency_sent_rate"] = paced.sent_rate
        for q in (50, 95, 99):
            figures[f"kafka_latency_p{q}_ms"] = percentile(paced.kafka_hop, q / 100) * 1000
        if paced.bridge_cpu_seconds is not None and paced.samples:
            figures["bridge_cpu_us_per_record_paced"] = (
                paced.bridge_cpu_seconds * 1e6 / len(paced.samples)
            )
    return figures


def command_breakdown(result: PhaseResult) -> dict[str, dict[str, float]]:
    """Per Redis command: calls per record and Redis CPU µs per record."""
    if result.redis is None:
        return {}
    usec = result.redis.usec_per_record(result.records)
    return {
        name: {"per_record": calls, "usec_per_record": usec.get(name, 0.0)}
        for name, calls in result.redis.per_record(result.records).items()
    }


@dataclass
class Report:
    options: dict[str, Any]
    repeats: list[dict[str, float]] = field(default_factory=list)
    commands: list[dict[str, dict[str, dict[str, float]]]] = field(default_factory=list)

    def add(self, results: Mapping[str, PhaseResult], celery_lat: list[float]) -> dict[str, float]:
        figures = repeat_figures(results, celery_lat)
        self.repeats.append(figures)
        self.commands.append({k: command_breakdown(results[k]) for k in "PDRBE"})
        return figures

    def summary(self) -> dict[str, dict[str, float | str]]:
        out: dict[str, dict[str, float | str]] = {}
        for name, (unit, what) in FIGURES.items():
            values = [r[name] for r in self.repeats if name in r]
            if values:
                out[name] = {
                    "median": statistics.median(values),
                    "min": min(values),
                    "max": max(values),
                    "unit": unit,
                    "what": what,
                }
        return out

    def targets(self) -> dict[str, dict[str, Any]]:
        summary = self.summary()
        return {
            name: {
                "target": f">= {bound}",
                "measured": summary[name]["median"],
                "met": float(summary[name]["median"]) >= bound,
                "what": what,
            }
            for name, (bound, what) in TARGETS.items()
            if name in summary
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "options": self.options,
            "figures": self.summary(),
            "targets": self.targets(),
            "redis_commands_per_record": self.commands[-1] if self.commands else {},
            "repeats": self.repeats,
        }


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")


# == tables =================================================================================
def _cell(summary: Mapping[str, Mapping[str, Any]], name: str, digits: int = 0) -> str:
    if name not in summary:
        return "—"
    return f"{float(summary[name]['median']):,.{digits}f}"


def _spread(summary: Mapping[str, Mapping[str, Any]], name: str, digits: int = 0) -> str:
    if name not in summary:
        return "—"
    low, high = float(summary[name]["min"]), float(summary[name]["max"])
    return f"{low:,.{digits}f}-{high:,.{digits}f}"


def phase_table(report: Report) -> Table:
    s = report.summary()
    table = Table(title=f"Throughput, median of {len(report.repeats)} (min-max)")
    for column in ("", "phase", "records/s", "spread", "Redis cmd/rec", "Redis ms/1k"):
        table.add_column(column, justify="left" if column in ("", "phase") else "right")
    table.add_column("bridge µs/rec", justify="right")
    table.add_column("bridge RSS MiB", justify="right")
    for key, what in SHORT.items():
        k = key.lower()
        table.add_row(
            key,
            what,
            _cell(s, f"{k}_rate"),
            _spread(s, f"{k}_rate"),
            _cell(s, f"redis_cmds_per_record_{k}", 2),
            _cell(s, f"redis_cpu_ms_per_1k_{k}", 1),
            _cell(s, f"bridge_cpu_us_per_record_{k}"),
            _cell(s, f"bridge_peak_rss_mib_{k}", 1),
        )
    return table


def ratio_table(report: Report) -> Table:
    s = report.summary()
    targets = report.targets()
    table = Table(title="Ratios, bridge CPU and latency")
    for column in ("figure", "median", "spread", "target"):
        table.add_column(column, justify="left" if column == "figure" else "right")
    for name in ("e_over_r", "e_over_d", "b_over_p"):
        target = targets.get(name)
        verdict = ""
        if target is not None:
            verdict = f"{target['target']} {'[green]met' if target['met'] else '[red]MISSED'}"
        table.add_row(FIGURES[name][1], _cell(s, name, 2), _spread(s, name, 2), verdict)
    for name in (
        "bridge_cpu_us_per_record_e",
        "bridge_cpu_us_per_record_b",
        "bridge_cpu_us_per_record_paced",
        "bridge_idle_cpu_pct",
        *(f"{w}latency_{q}_ms" for w in ("", "celery_", "kafka_") for q in ("p50", "p95", "p99")),
        "latency_sent_rate",
    ):
        unit = FIGURES[name][0]
        table.add_row(f"{FIGURES[name][1]}, {unit}", _cell(s, name, 1), _spread(s, name, 1), "")
    return table


def command_table(report: Report, phases: str = "RBE") -> Table:
    """Redis commands per record of the last repeat, per command, for R, B and E."""
    last = report.commands[-1]
    names = sorted(
        {n for p in phases for n in last.get(p, {})},
        key=lambda n: -last.get("E", {}).get(n, {}).get("per_record", 0.0),
    )
    table = Table(title="Redis commands per record (last repeat): calls (Redis µs)")
    table.add_column("command")
    for phase in phases:
        table.add_column(phase, justify="right")
    for name in names:
        cells = []
        for phase in phases:
            entry = last.get(phase, {}).get(name)
            cells.append(
                ""
                if entry is None
                else f"{entry['per_record']:.3f} ({entry['usec_per_record']:.1f})"
            )
        table.add_row(name, *cells)
    return table


def print_report(console: Console, report: Report) -> None:
    console.print(phase_table(report))
    console.print(ratio_table(report))
    console.print(command_table(report))
