"""Redis-side costs of a phase: commands (``INFO commandstats``) and CPU (``INFO cpu``).

The benchmark itself asks Redis things while it measures (``DBSIZE``, ``LLEN``, ``INFO``,
``CONFIG RESETSTAT``). :class:`RedisProbe` counts its own calls and subtracts them, so the
figures are what the system under test sent, plus the idle polling of the workers.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import redis


@dataclass
class RedisCost:
    """What Redis did between :meth:`RedisProbe.start` and :meth:`RedisProbe.stop`."""

    calls: Counter[str] = field(default_factory=Counter)
    usec: Counter[str] = field(default_factory=Counter)
    cpu_seconds: float = 0.0

    @property
    def total_calls(self) -> int:
        return sum(self.calls.values())

    def per_record(self, records: int) -> dict[str, float]:
        """Calls per record for each command, largest first."""
        return {
            name: count / records
            for name, count in sorted(self.calls.items(), key=lambda kv: -kv[1])
            if count
        }

    def usec_per_record(self, records: int) -> dict[str, float]:
        """Redis CPU µs per record spent in each command (``usec`` of commandstats)."""
        return {name: self.usec[name] / records for name in self.calls if self.calls[name]}


class RedisProbe:
    """One Redis connection for measuring; every command it sends is subtracted."""

    def __init__(self, broker_url: str, result_url: str) -> None:
        self.client = redis.Redis.from_url(result_url)
        self.broker = redis.Redis.from_url(broker_url)
        self._own: Counter[str] = Counter()
        self._cpu0 = 0.0

    def _count(self, name: str) -> None:
        self._own[name] += 1

    def start(self) -> None:
        """Reset the command counters and note Redis's CPU time."""
        self._own = Counter()
        self.client.config_resetstat()
        self._count("config|resetstat")
        self._cpu0 = self._cpu()

    def _cpu(self) -> float:
        info: dict[str, Any] = self.client.info("cpu")
        self._count("info")
        return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])

    def stop(self) -> RedisCost:
        cpu = self._cpu() - self._cpu0
        stats: dict[str, Any] = self.client.info("commandstats")  # not counted in itself
        cost = RedisCost(cpu_seconds=cpu)
        for key, value in stats.items():
            name = key.removeprefix("cmdstat_")
            calls = int(value["calls"]) - self._own.get(name, 0)
            if calls > 0:
                cost.calls[name] = calls
                cost.usec[name] = int(value["usec"])
        return cost

    # -- polls used while measuring ---------------------------------------------------
    def dbsize(self) -> int:
        self._count("dbsize")
        return int(self.client.dbsize())

    def llen(self, key: str) -> int:
        """Length of a broker queue (a Redis list in the broker's database)."""
        self._count("llen")
        return int(self.broker.llen(key))

    def clear_results(self) -> None:
        """Empty the result backend's database (results and the bridge's dispatch markers)."""
        self.client.flushdb()

    def drop_queue(self, queue: str) -> None:
        self.broker.delete(queue)

    def close(self) -> None:
        self.client.close()
        self.broker.close()


@dataclass
class Span:
    """When counting towards a target started to move and when it got there."""

    started: float
    ended: float
    counted: int  # how many the window covers (the count already reached at ``started``)

    @property
    def seconds(self) -> float:
        return max(self.ended - self.started, 1e-9)

    @property
    def rate(self) -> float:
        return self.counted / self.seconds


def wait_count(
    count: Any,
    target: int,
    timeout: float,
    interval: float = 0.02,
    baseline: int = 0,
    origin: float | None = None,
) -> Span:
    """Poll ``count()`` until it reaches ``target``; time from the first change to the end.

    The window starts at the first poll that sees the count above ``baseline``, so process
    start-up or a consumer's first poll interval is not charged to the rate. When everything
    happened between two polls (tiny runs), the window starts at ``origin`` instead.
    """
    origin = time.monotonic() if origin is None else origin
    deadline = time.monotonic() + timeout
    started: float | None = None
    at_start = baseline
    while time.monotonic() < deadline:
        value = int(count())
        now = time.monotonic()
        if started is None and value > baseline:
            started, at_start = now, value
        if value >= target:
            if started is None or at_start >= target:
                return Span(origin, now, target - baseline)
            return Span(started, now, target - at_start)
        time.sleep(interval)
    raise TimeoutError(f"count stayed below {target} for {timeout:.0f}s (last {count()})")
