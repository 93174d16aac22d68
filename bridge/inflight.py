"""Pure bookkeeping of dispatched tasks: by task id, counted per partition, with deadlines.

No I/O; the caller passes the time. Deadlines sit in a heap with lazy deletion, so finding
expired tasks costs O(log n) per task rather than a scan of everything in flight.
"""

from __future__ import annotations

import heapq
import itertools
from collections import Counter
from dataclasses import dataclass

from bridge.dispatcher import TaskRequest
from bridge.records import Record
from bridge.settings import Route

TP = tuple[str, int]


@dataclass(slots=True)
class Job:
    """A record whose task was sent and has not reached a final state."""

    record: Record
    route: Route
    epoch: int
    request: TaskRequest
    first_dispatch: float = 0.0
    deadline: float = 0.0
    dispatches: int = 0
    retries_seen: int = 0

    @property
    def attempts(self) -> int:
        """Runs of the task as far as the bridge knows: one, plus each RETRY reported."""
        return max(1, self.dispatches) + self.retries_seen


class InFlightTable:
    def __init__(self) -> None:
        self._jobs: dict[str, Job] = {}
        self._per_tp: Counter[TP] = Counter()
        self._deadlines: list[tuple[float, int, str]] = []
        self._seq = itertools.count()

    def add(self, job: Job, now: float) -> None:
        """Track ``job`` as just dispatched (again, if it was already tracked)."""
        if job.request.task_id not in self._jobs:
            self._jobs[job.request.task_id] = job
            self._per_tp[job.record.tp] += 1
            job.first_dispatch = now
        job.dispatches += 1
        self.extend(job, now)

    def extend(self, job: Job, now: float) -> None:
        """Restart ``job``'s timeout window (progress was seen, or it was re-sent)."""
        job.deadline = now + job.route.task_timeout
        heapq.heappush(self._deadlines, (job.deadline, next(self._seq), job.request.task_id))
        if len(self._deadlines) > 2 * len(self._jobs) + 1024:
            self._compact()

    def _compact(self) -> None:
        """Drop heap entries of finished or re-armed jobs, so memory follows what is in flight."""
        self._deadlines = [
            entry
            for entry in self._deadlines
            if (job := self._jobs.get(entry[2])) is not None and job.deadline == entry[0]
        ]
        heapq.heapify(self._deadlines)

    def get(self, task_id: str) -> Job | None:
        return self._jobs.get(task_id)

    def pop(self, task_id: str) -> Job | None:
        job = self._jobs.pop(task_id, None)
        if job is not None:
            self._per_tp[job.record.tp] -= 1
            if not self._per_tp[job.record.tp]:
                del self._per_tp[job.record.tp]
        return job

    def expired(self, now: float) -> list[Job]:
        """Jobs whose deadline passed; each is returned once per deadline."""
        due: dict[str, Job] = {}  # a job re-armed twice at one instant has two equal entries
        while self._deadlines and self._deadlines[0][0] <= now:
            deadline, _, task_id = heapq.heappop(self._deadlines)
            job = self._jobs.get(task_id)
            if job is not None and job.deadline == deadline:
                due[task_id] = job
        return list(due.values())

    def drop_partitions(self, tps: set[TP]) -> list[Job]:
        """Forget every job of ``tps`` (their heap entries expire lazily)."""
        dropped = [job for job in self._jobs.values() if job.record.tp in tps]
        for job in dropped:
            self.pop(job.request.task_id)
        return dropped

    def count(self, tp: TP) -> int:
        return self._per_tp.get(tp, 0)

    def __len__(self) -> int:
        return len(self._jobs)

    def ids(self) -> list[str]:
        return list(self._jobs)
