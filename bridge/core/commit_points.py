"""The engine's commit points: what may be committed per partition, and what was.

A mixin of :class:`bridge.core.engine.WorkEngine`, kept apart because committing is one idea
of its own: the points come from each partition's open offsets
(:class:`bridge.core.offsets.PartitionOffsets`), never from the tasks.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Generic

from bridge.core.jobs import T
from bridge.core.partition import PartitionWork
from bridge.core.vocabulary import TP


class CommitPoints(Generic[T]):
    _parts: dict[TP, PartitionWork[T]]

    def committable(self, tps: Iterable[TP] | None = None, again: bool = False) -> dict[TP, int]:
        """Commit points that moved past what was last marked committed (``again``: every
        current point, moved or not: a broker that lost a commit gets it back)."""
        points: dict[TP, int] = {}
        for tp in self._parts if tps is None else tps:
            part = self._parts.get(tp)
            if part is None:
                continue
            point = part.offsets.commit_point() if again else part.offsets.committable()
            if point is not None:
                points[tp] = point
        return points

    def mark_committed(self, tp: TP, offset: int) -> None:
        part = self._parts.get(tp)
        if part is not None:
            part.offsets.mark_committed(offset)

    def unmark_committed(self, tp: TP, offset: int) -> None:
        """A commit failed: the point is offered again by :meth:`committable`."""
        part = self._parts.get(tp)
        if part is not None:
            part.offsets.unmark_committed(offset)
