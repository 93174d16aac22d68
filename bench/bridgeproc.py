"""``ckb run`` as a real process: config, start, wait ready, its /metrics, CPU and memory, stop.

:class:`BridgeProcess` is the one bridge-process helper of the benchmark and the test suite
(``tests/integration/harness.py`` starts its bridges with it).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from bench import TASK_NAME
from bench.common import free_port, wait_for
from bench.env import REPO, Stack
from bench.procstats import cpu_seconds, peak_rss_mib, rss_mib


def bridge_config(
    stack: Stack,
    group: str,
    topics: list[str],
    queue: str,
    window: int,
    commit_interval: float | None,
    shutdown_grace: float = 10.0,
    window_follows_workers: bool = True,
) -> dict[str, Any]:
    """A bridge config for the bench: every topic to the no-op task on ``queue``.

    ``window`` is both the route's ``max_in_flight`` and ``limits.max_in_flight_total``, so
    one bound holds however the partitions are spread.
    """
    kafka: dict[str, Any] = {"bootstrap_servers": stack.bootstrap, "group_id": group}
    limits: dict[str, Any] = {"max_in_flight_total": window, "shutdown_grace": shutdown_grace}
    if not window_follows_workers and _bridge_knows("max_queue_time"):
        limits["max_queue_time"] = 0  # a queue nobody drains (B): only the caps bound it
    if commit_interval is not None:
        kafka["commit_interval"] = commit_interval
    return {
        "kafka": kafka,
        "celery": {
            "broker_url": stack.broker_url,
            "result_backend": stack.result_url,
            "options": stack.celery_options,
        },
        "routes": [
            {"topic": topic, "task": TASK_NAME, "queue": queue, "max_in_flight": window}
            for topic in topics
        ],
        "limits": limits,
        "metrics": {"enabled": True, "host": "127.0.0.1", "port": free_port()},
        "logging": {"level": "INFO"},
    }


def bridge_tree() -> Path:
    """The checkout whose bridge runs: CKB_BENCH_BRIDGE_TREE (another checkout, for a
    before/after comparison with this harness) or this repository."""
    return Path(os.environ.get("CKB_BENCH_BRIDGE_TREE") or REPO)


def _bridge_knows(setting: str) -> bool:
    """Whether the measured bridge has ``setting`` (an older checkout may not)."""
    return setting in (bridge_tree() / "bridge" / "settings.py").read_text()


def parse_metrics(text: str) -> Counter[str]:
    """Prometheus text format → each sample name summed over its labels."""
    sums: Counter[str] = Counter()
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name_labels, _, value = line.rpartition(" ")
        name = name_labels.split("{", 1)[0]
        try:
            sums[name] += float(value)  # type: ignore[assignment]
        except ValueError:
            continue
    return sums


@dataclass
class BridgeProcess:
    """A ``ckb run`` process started from ``config``, written to ``config_path``; its output
    (stdout and stderr) appended to ``log_path``."""

    process: subprocess.Popen[bytes]
    config: dict[str, Any]
    log_path: Path
    config_path: Path

    @classmethod
    def start(
        cls,
        config: dict[str, Any],
        work_dir: Path,
        name: str,
        profile_to: Path | None = None,
        clock: str = "cpu",
        env: dict[str, str] | None = None,
    ) -> BridgeProcess:
        """``python -m bridge run`` in ``env`` (None: this process's environment); with
        ``profile_to``, under cProfile (``clock`` cpu/wall)."""
        config_path = work_dir / f"{name}.yaml"
        config_path.write_text(yaml.safe_dump(config))
        log_path = work_dir / f"{name}.log"
        command = [sys.executable, "-m", "bridge"]
        if profile_to is not None and clock == "wall":
            command = [sys.executable, "-m", "cProfile", "-o", str(profile_to), "-m", "bridge"]
        elif profile_to is not None:
            command = [sys.executable, "-m", "bench.cpu_profiled_bridge", str(profile_to)]
        # CKB_BENCH_BRIDGE_TREE=<another checkout>: measure that tree's bridge with this
        # harness (a before/after comparison in one run); default: this repository's
        tree = bridge_tree()
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                [*command, "run", "-c", str(config_path)],
                cwd=tree,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return cls(process, config, log_path, config_path)

    @property
    def pid(self) -> int:
        return self.process.pid

    def metrics(self) -> Counter[str]:
        port = self.config["metrics"]["port"]
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
                return parse_metrics(reply.read().decode())
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return Counter()

    def alive(self) -> bool:
        return self.process.poll() is None

    def wait_assigned(self, timeout: float = 60.0) -> None:
        """Until the bridge logged its first assignment (it joined its group)."""

        def joined() -> bool:
            if not self.alive():
                raise AssertionError(f"bridge exited: {self.log_tail()}")
            return "assigned " in self.log_tail(200_000)

        wait_for(joined, timeout, "the bridge to join its group", interval=0.1)

    def wait_consuming(self, timeout: float = 90.0) -> tuple[float, Counter[str]]:
        """Poll /metrics until the first record was consumed; that moment and the metrics."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the bridge exited: {self.log_tail()}")
            values = self.metrics()
            if values["ckb_records_consumed_total"] > 0:
                return time.monotonic(), values
            time.sleep(0.01)
        raise TimeoutError(f"the bridge consumed nothing within {timeout:.0f}s: {self.log_tail()}")

    def cpu(self) -> float:
        return cpu_seconds(self.pid)

    def rss(self) -> float:
        return rss_mib(self.pid)

    def peak_rss(self) -> float:
        return peak_rss_mib(self.pid)

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM (a graceful stop: commit, close), SIGKILL if it does not end in time;
        the exit code."""
        code, _ = self._sigterm(timeout)
        return code

    def terminate(self, timeout: float = 60.0) -> int:
        """:meth:`stop`, for tests: a bridge that needs SIGKILL is an ``AssertionError``."""
        code, killed = self._sigterm(timeout)
        if killed:
            raise AssertionError(f"bridge did not stop on SIGTERM: {self.log_tail()}")
        return code

    def _sigterm(self, timeout: float) -> tuple[int, bool]:
        """SIGTERM, SIGKILL after ``timeout``: the exit code and whether it took SIGKILL."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout), False
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait(10), True

    def kill(self) -> None:
        """SIGKILL, if it still runs."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]
