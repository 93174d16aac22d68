"""Everything the engine knows about one assigned partition, in one object.

A revoke or a lost partition drops the object whole, so no container can outlive its
assignment (no "forget" that has to clear eight dicts in lockstep).
"""

from __future__ import annotations

from collections import defaultdict, deque
from collections.abc import Iterable
from typing import Generic

from bridge.core.jobs import Job, T
from bridge.core.offsets import PartitionOffsets
from bridge.core.ordering import PartitionGate
from bridge.core.policy import RoutePolicy
from bridge.core.queues import QueueProgress


class PartitionWork(Generic[T]):
    """One partition under one assignment (``epoch``)."""

    __slots__ = (
        "byte_cap",
        "cap",
        "epoch",
        "gate",
        "jobs",
        "offsets",
        "open_bytes",
        "paused",
        "paused_by_total",
        "policy",
        "progress",
        "remembered",
        "rewind_reported",
        "sizes",
        "waiting",
    )

    def __init__(
        self, epoch: int, policy: RoutePolicy | None, cap: int, progress: QueueProgress
    ) -> None:
        self.epoch = epoch
        #: None for a topic no route matches: its records are never dispatched
        self.policy = policy
        #: open records at which the partition pauses
        self.cap = cap
        #: open record bytes at which the partition pauses
        self.byte_cap = policy.max_in_flight_bytes if policy else 2**62
        #: bytes of each open record that has any, and their sum
        self.sizes: dict[int, int] = {}
        self.open_bytes = 0
        self.offsets = PartitionOffsets()
        #: consumed, routed and decoded, not yet sent (offset order)
        self.waiting: deque[Job[T]] = deque()
        self.gate = PartitionGate()
        #: sent and not final, by task id
        self.jobs: dict[str, Job[T]] = {}
        self.paused = False
        #: the Celery queue its tasks go to (shared with the other partitions routed there)
        self.progress = progress
        #: an offset behind what was delivered came again (said once per assignment)
        self.rewind_reported = False
        #: paused because all partitions together reached the total cap, not its own
        self.paused_by_total = False
        #: batches an earlier owner sent (task id, record offsets), lowest first: formed again
        #: exactly so, under the same task id, before any new batch (see core/batches.py)
        self.remembered: list[tuple[str, frozenset[int]]] = []

    @property
    def open_count(self) -> int:
        return len(self.offsets.open)

    def opened(self, offset: int, size: int) -> None:
        if size:
            self.sizes[offset] = size
            self.open_bytes += size

    def size_of(self, offset: int) -> int:
        """Bytes of an open record (0: none counted)."""
        return self.sizes.get(offset, 0)

    def closed(self, offset: int) -> int:
        """The bytes ``offset`` held, now released."""
        size = self.sizes.pop(offset, 0)
        self.open_bytes -= size
        return size

    @property
    def full(self) -> bool:
        """At its cap of open records or of open bytes."""
        return self.open_count >= self.cap or self.open_bytes >= self.byte_cap

    def drained(self, ratio: float) -> bool:
        """Below both caps by ``ratio``: a partition paused at its own cap may fetch again
        (``not full`` too: with a ratio of 1 it would flap at the cap every turn)."""
        return (
            not self.full
            and self.open_count <= self.cap * ratio
            and self.open_bytes <= self.byte_cap * ratio
        )

    def policy_timeout(self) -> float:
        """Seconds a started (or taken) task may take before it counts as lost."""
        assert self.policy is not None  # only routed partitions have tasks
        return self.policy.task_timeout

    def room(self) -> int:
        """How many more tasks this partition may have in flight."""
        return 0 if self.policy is None else self.policy.max_in_flight - len(self.jobs)

    def put_back(self, jobs: Iterable[Job[T]]) -> None:
        """Return unsent jobs to the waiting queue, keeping offset order."""
        merged = sorted([*self.waiting, *jobs], key=lambda job: job.offset)
        self.waiting.clear()
        self.waiting.extend(merged)


def fair_shares(wanting: list[PartitionWork[T]]) -> dict[str, int]:
    """Per queue: its window's free room split evenly over the partitions that want some
    (rounded up, at least one)."""
    count: dict[str, int] = defaultdict(int)
    room: dict[str, int] = {}
    for part in wanting:
        assert part.policy is not None
        count[part.policy.queue] += 1
        room[part.policy.queue] = part.progress.room()
    return {name: max(1, -(-room[name] // n)) for name, n in count.items()}
