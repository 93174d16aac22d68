"""Pure per-partition offset bookkeeping: what may be committed, and nothing more.

A record is *open* from the moment the consumer hands it to the bridge until its task
succeeded or it was durably dead-lettered. The commit point of a partition is the lowest
open offset, or one past the highest offset seen when nothing is open. Because Kafka hands
out a partition's records in offset order, open offsets are kept in insertion order in an
``OrderedDict``: adding, finishing and reading the lowest open offset are all O(1).

No I/O and no clock: time, where needed, is passed in by the caller.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field

TopicPartition = tuple[str, int]


@dataclass
class PartitionOffsets:
    """Open offsets of one partition under one assignment."""

    epoch: int
    open: OrderedDict[int, float] = field(default_factory=OrderedDict)
    next_offset: int | None = None
    committed: int | None = None

    def add(self, offset: int, now: float) -> bool:
        """Open ``offset``; False (and no change) when it is not beyond what was seen."""
        if self.next_offset is not None and offset < self.next_offset:
            return False
        self.open[offset] = now
        self.next_offset = offset + 1
        return True

    def finish(self, offset: int) -> bool:
        """Close ``offset``; False when it was not open (already finished or never seen)."""
        return self.open.pop(offset, None) is not None

    def commit_point(self) -> int | None:
        """Lowest open offset, else the next offset to consume; None before any record."""
        if self.open:
            return next(iter(self.open))
        return self.next_offset

    def oldest_open_since(self) -> float | None:
        """When the lowest open offset was opened (the age of the commit blocker)."""
        if not self.open:
            return None
        return next(iter(self.open.values()))


class OffsetTracker:
    """Open offsets and commit points for every assigned partition.

    Partitions are added on assignment with an *epoch*; a completion carries the epoch of
    the assignment it was dispatched under, and one from an older assignment is ignored.
    """

    def __init__(self) -> None:
        self._partitions: dict[TopicPartition, PartitionOffsets] = {}
        self._open_total = 0

    # -- assignment ---------------------------------------------------------------
    def assign(self, tp: TopicPartition, epoch: int, committed: int | None = None) -> None:
        """Start tracking ``tp`` afresh under ``epoch`` (any earlier state is dropped)."""
        self.revoke(tp)
        self._partitions[tp] = PartitionOffsets(epoch=epoch, committed=committed)

    def revoke(self, tp: TopicPartition) -> list[int]:
        """Stop tracking ``tp``; returns the offsets that were still open."""
        state = self._partitions.pop(tp, None)
        if state is None:
            return []
        self._open_total -= len(state.open)
        return list(state.open)

    def owns(self, tp: TopicPartition, epoch: int | None = None) -> bool:
        state = self._partitions.get(tp)
        return state is not None and (epoch is None or state.epoch == epoch)

    def epoch(self, tp: TopicPartition) -> int | None:
        state = self._partitions.get(tp)
        return None if state is None else state.epoch

    def partitions(self) -> list[TopicPartition]:
        return list(self._partitions)

    # -- records ------------------------------------------------------------------
    def add(self, tp: TopicPartition, offset: int, now: float) -> bool:
        """Open a consumed record; False when ``tp`` is not owned or the offset is stale."""
        state = self._partitions.get(tp)
        if state is None or not state.add(offset, now):
            return False
        self._open_total += 1
        return True

    def finish(self, tp: TopicPartition, offset: int, epoch: int) -> bool:
        """Close a record; ignored (False) for a partition not owned under ``epoch``."""
        state = self._partitions.get(tp)
        if state is None or state.epoch != epoch or not state.finish(offset):
            return False
        self._open_total -= 1
        return True

    # -- commits ------------------------------------------------------------------
    def commit_point(self, tp: TopicPartition) -> int | None:
        state = self._partitions.get(tp)
        return None if state is None else state.commit_point()

    def committable(self, tps: Iterable[TopicPartition] | None = None) -> dict[TopicPartition, int]:
        """Commit points that moved past what was last marked committed."""
        result: dict[TopicPartition, int] = {}
        for tp in self._partitions if tps is None else tps:
            state = self._partitions.get(tp)
            if state is None:
                continue
            point = state.commit_point()
            if point is not None and (state.committed is None or point > state.committed):
                result[tp] = point
        return result

    def mark_committed(self, tp: TopicPartition, offset: int) -> None:
        """Record that ``offset`` was committed; a lower one never replaces a higher one."""
        state = self._partitions.get(tp)
        if state is not None and (state.committed is None or offset > state.committed):
            state.committed = offset

    def unmark_committed(self, tp: TopicPartition, offset: int) -> None:
        """A commit of ``offset`` failed: forget it, so the current point is committed again."""
        state = self._partitions.get(tp)
        if state is not None and state.committed == offset:
            state.committed = None

    def committed(self, tp: TopicPartition) -> int | None:
        state = self._partitions.get(tp)
        return None if state is None else state.committed

    # -- sizes --------------------------------------------------------------------
    def open_count(self, tp: TopicPartition) -> int:
        state = self._partitions.get(tp)
        return 0 if state is None else len(state.open)

    @property
    def open_total(self) -> int:
        return self._open_total

    def oldest_open_since(self, tp: TopicPartition) -> float | None:
        state = self._partitions.get(tp)
        return None if state is None else state.oldest_open_since()
