"""Open offsets of one partition: what may be committed, and nothing more.

A record is *open* from the moment the consumer hands it to the bridge until its task
succeeded or it was durably dead-lettered. The commit point is the lowest open offset, or one
past the highest offset seen when nothing is open. Kafka hands out a partition's records in
offset order, so open offsets are kept in insertion order in an ``OrderedDict``: adding,
finishing and reading the lowest open offset are all O(1).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field


@dataclass
class PartitionOffsets:
    """Open offsets of one partition under one assignment."""

    open: OrderedDict[int, float] = field(default_factory=OrderedDict)
    next_offset: int | None = None
    #: the last commit point handed to Kafka (None: none yet, or the last one failed)
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

    def committable(self) -> int | None:
        """The commit point, when it moved past what was last marked committed."""
        point = self.commit_point()
        if point is None or (self.committed is not None and point <= self.committed):
            return None
        return point

    def mark_committed(self, offset: int) -> None:
        """Record that ``offset`` was committed; a lower one never replaces a higher one."""
        if self.committed is None or offset > self.committed:
            self.committed = offset

    def unmark_committed(self, offset: int) -> None:
        """A commit of ``offset`` failed: forget it, so the current point is committed again."""
        if self.committed == offset:
            self.committed = None

    def oldest_open_since(self) -> float | None:
        """When the lowest open offset was opened (the age of the commit blocker)."""
        if not self.open:
            return None
        return next(iter(self.open.values()))
