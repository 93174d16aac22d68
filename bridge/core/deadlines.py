"""Deadlines of in-flight tasks in a heap with lazy deletion.

Re-arming or finishing a task leaves its old entry behind; an entry counts only while it
matches the task's current deadline. Finding expired tasks costs O(log n) per task instead of
a scan of everything in flight, and the heap is compacted when stale entries pile up.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic

from bridge.core.jobs import Job, T

#: whether ``deadline`` is still the current deadline of task ``task_id``
IsCurrent = Callable[[str, float], bool]


class Deadlines:
    def __init__(self) -> None:
        self._heap: list[tuple[float, int, str]] = []
        self._seq = itertools.count()

    def __len__(self) -> int:
        return len(self._heap)

    def arm(self, task_id: str, deadline: float, live: int, is_current: IsCurrent) -> None:
        """Add an entry; compact when stale entries outnumber the ``live`` tasks."""
        heapq.heappush(self._heap, (deadline, next(self._seq), task_id))
        if len(self._heap) > 2 * live + 1024:
            self._heap = [entry for entry in self._heap if is_current(entry[2], entry[0])]
            heapq.heapify(self._heap)

    def due(self, now: float, is_current: IsCurrent) -> list[str]:
        """Task ids whose current deadline is at or before ``now``, each once."""
        due: dict[str, None] = {}  # a task re-armed twice at one instant has two equal entries
        while self._heap and self._heap[0][0] <= now:
            deadline, _, task_id = heapq.heappop(self._heap)
            if is_current(task_id, deadline):
                due[task_id] = None
        return list(due)


@dataclass(slots=True)
class Expiry(Generic[T]):
    """Tasks past their deadline: to send again, or given up (released, to dead-letter)."""

    resend: list[Job[T]] = field(default_factory=list)
    timed_out: list[Job[T]] = field(default_factory=list)
    held: list[Job[T]] = field(default_factory=list)


def never(_job: Job[T]) -> bool:
    return False
