"""The ordering gate of one partition: which of its waiting jobs may start now.

Modes, per route:

- ``unordered``: any record may run while others run;
- ``key``: records with the same key run one after another, in offset order; different keys
  in parallel. Records without a key count as one key (they keep their relative order);
- ``partition``: one record at a time per partition, in offset order.

Waiting jobs are kept in offset order; the gate never lets a job overtake an earlier waiting
job with the same key, so offset order holds per key.
"""

from __future__ import annotations

from collections import Counter, deque
from typing import Any

from bridge.core.jobs import Job
from bridge.core.vocabulary import Ordering


class PartitionGate:
    """Running tasks of one partition, by key."""

    __slots__ = ("busy", "running")

    def __init__(self) -> None:
        self.running = 0
        self.busy: Counter[bytes | None] = Counter()

    def select(self, mode: Ordering, waiting: deque[Job[Any]], room: int) -> list[Job[Any]]:
        """Remove and return the waiting jobs that may start, at most ``room`` of them."""
        if room <= 0 or not waiting:
            return []
        if mode is Ordering.PARTITION:
            return [waiting.popleft()] if not self.running else []
        if mode is Ordering.KEY:
            return self._select_by_key(waiting, room)
        return [waiting.popleft() for _ in range(min(room, len(waiting)))]

    def _select_by_key(self, waiting: deque[Job[Any]], room: int) -> list[Job[Any]]:
        blocked: set[bytes | None] = set()
        chosen: list[Job[Any]] = []
        kept: deque[Job[Any]] = deque()
        for job in waiting:
            if len(chosen) < room and not self.busy[job.key] and job.key not in blocked:
                chosen.append(job)
            else:
                kept.append(job)
            blocked.add(job.key)  # the next job of this key waits for this one
        waiting.clear()
        waiting.extend(kept)
        return chosen

    def started(self, key: bytes | None) -> None:
        self.running += 1
        self.busy[key] += 1

    def finished(self, key: bytes | None) -> None:
        """A started job of ``key`` is over (the engine calls this once per :meth:`started`)."""
        self.running -= 1
        self.busy[key] -= 1
        if not self.busy[key]:
            del self.busy[key]
