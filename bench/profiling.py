"""``--profile``: an end-to-end run with ``ckb run`` under cProfile; the top costs.

By default the bridge runs under :mod:`bench.cpu_profiled_bridge` (cProfile with the main
thread's CPU clock); ``--profile-clock wall`` runs ``python -m cProfile -o FILE -m bridge run -c
CONFIG`` as is, where waiting inside ``Consumer.consume`` dominates. Either way the bridge is
stopped with SIGTERM once every record is committed: its graceful stop returns from ``main``
and the profile is written. cProfile sees the main thread only, which is the consumer loop
(poll, decode, dispatch, commit); the result watcher's thread is not in the profile.
"""

from __future__ import annotations

import pstats
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.table import Table

from bench.bridgeproc import BridgeProcess, bridge_config
from bench.env import REPO, committed_total, group_probe, unique
from bench.phases import QUEUE_E, wait_target
from bench.session import Session

TOP = 10
WATCHER = "ckb-result-watcher"


def profile_run(s: Session) -> dict[str, Any]:
    o = s.options
    topic = s.topic_with(o.profile_records, "bench-prof")
    group = unique("bench-prof")
    s.probe.clear_results()
    out = s.stack.work_dir / "bridge.prof"
    config = bridge_config(s.stack, group, [topic], QUEUE_E, o.window, o.commit_interval)
    bridge = BridgeProcess.start(
        config, s.stack.work_dir, group, profile_to=out, clock=o.profile_clock
    )
    probe = group_probe(s.stack.bootstrap, group)
    try:
        with s.console.status(f"profiling the bridge over {o.profile_records:,} records"):
            origin, _ = bridge.wait_consuming(o.timeout)
            cpu = bridge.cpu()
            total = lambda: committed_total(probe, topic, o.partitions)  # noqa: E731
            ended = wait_target(total, o.profile_records, o.timeout, 0.05)
            cpu = bridge.cpu() - cpu
    finally:
        probe.close()
        code = bridge.stop()
    if not out.is_file():
        raise RuntimeError(f"the bridge (exit {code}) wrote no profile: {bridge.log_tail()}")
    kept = Path(tempfile.gettempdir()) / f"ckb-bench-{time.strftime('%Y%m%d-%H%M%S')}.prof"
    shutil.copyfile(out, kept)
    n = o.profile_records
    data: dict[str, Any] = {
        "records": n,
        "clock": o.profile_clock,
        "rate_under_profiler": n / max(ended - origin, 1e-9),
        "process_cpu_us_per_record_under_profiler": cpu * 1e6 / n,
        "profile_file": str(kept),
        "cumulative": top_costs(kept, "cumulative", n),
        "internal": top_costs(kept, "tottime", n),
        "threads_cpu_s": {"main (consumer loop)": pstats.Stats(str(kept)).total_tt},  # type: ignore[attr-defined]
    }
    titles = [("cumulative", "main thread: top {} by cumulative time")]
    titles.append(("internal", "main thread: top {} by internal time"))
    watcher = out.with_name(f"{out.name}.{WATCHER}")
    if watcher.is_file():  # only with the CPU clock (bench.cpu_profiled_bridge)
        kept_watcher = kept.with_name(f"{kept.stem}-watcher.prof")
        shutil.copyfile(watcher, kept_watcher)
        data["watcher_cumulative"] = top_costs(kept_watcher, "cumulative", n)
        data["threads_cpu_s"][WATCHER] = pstats.Stats(str(kept_watcher)).total_tt  # type: ignore[attr-defined]
        titles.append(("watcher_cumulative", f"{WATCHER} thread: top {{}} by cumulative time"))
    for key, title in titles:
        s.console.print(cost_table(data[key], title.format(TOP)))
    threads = ", ".join(f"{k} {v:.1f} s" for k, v in data["threads_cpu_s"].items())
    s.console.print(f"profiled CPU per thread (startup included): {threads}")
    s.console.print(f"profile kept in {kept} (python -m pstats {kept})")
    return {"profile": data}


def top_costs(path: Path, key: str, records: int) -> list[dict[str, Any]]:
    """The ``TOP`` costliest functions by ``key``.

    By cumulative time, the frames that enclose the whole run (``runpy``, click, ``cli.run``,
    ``ConsumerLoop.run``: 90% of the total or more) are left out: they say nothing.
    """
    stats = pstats.Stats(str(path))
    stats.sort_stats(key)
    table: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    total = max(entry[3] for entry in table.values())
    rows: list[dict[str, Any]] = []
    for func in stats.fcn_list:  # type: ignore[attr-defined]
        _cc, calls, tottime, cumtime, _callers = table[func]
        if key == "cumulative" and cumtime >= 0.9 * total:
            continue
        if len(rows) == TOP:
            break
        filename, line, name = func
        rows.append(
            {
                "function": f"{_short(filename)}:{line}({name})",
                "calls": calls,
                "tottime_s": tottime,
                "cumtime_s": cumtime,
                "us_per_record": (cumtime if key == "cumulative" else tottime) * 1e6 / records,
            }
        )
    return rows


def _short(filename: str) -> str:
    """A path as short as still says where: repo-relative, or after site-packages."""
    if "site-packages/" in filename:
        return filename.split("site-packages/", 1)[1]
    return filename.removeprefix(str(REPO) + "/")


def cost_table(rows: list[dict[str, Any]], title: str) -> Table:
    table = Table(title=title)
    for column in ("function", "calls", "tottime s", "cumtime s", "µs/record"):
        table.add_column(column, justify="left" if column == "function" else "right")
    for row in rows:
        table.add_row(
            row["function"],
            f"{row['calls']:,}",
            f"{row['tottime_s']:.2f}",
            f"{row['cumtime_s']:.2f}",
            f"{row['us_per_record']:.1f}",
        )
    return table
