"""A record's unit of work as the engine tracks it, from waiting to a final state."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

from bridge.core.vocabulary import TP

#: what the loop attaches to a job (its record, route and task request); opaque to the engine
T = TypeVar("T")


@dataclass(slots=True, eq=False)
class Job(Generic[T]):
    """One record with a task to run: waiting, then in flight until a final state."""

    tp: TP
    offset: int
    key: bytes | None
    epoch: int  # the assignment it was consumed under; stale once the partition moved
    task_id: str
    item: T
    first_dispatch: float = 0.0
    last_dispatch: float = 0.0
    deadline: float = 0.0
    dispatches: int = 0
    retries_seen: int = 0
    #: its place in its Celery queue's send order (see :mod:`bridge.core.queues`)
    seq: int = -1
    #: a worker reported STARTED or RETRY since it was last sent
    started: bool = False
    #: a batch: the records' jobs it carries in one task (offset order); None: one record
    members: list[Job[T]] | None = None

    def parts(self) -> list[Job[T]]:
        """The one-record jobs this job stands for: its members, or itself."""
        return self.members if self.members is not None else [self]

    def held_keys(self) -> set[bytes | None]:
        """The keys its task holds while it runs (a batch: every member's)."""
        return {job.key for job in self.parts()}

    @property
    def attempts(self) -> int:
        """Runs of the task as far as the bridge knows: one, plus each RETRY reported."""
        return max(1, self.dispatches) + self.retries_seen
