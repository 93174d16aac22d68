"""What the engine holds, as the plain values observers get about once a second."""

from __future__ import annotations

from typing import Any

from bridge.core.engine import WorkEngine
from bridge.events import PartitionState, QueueWindow


def partition_states(engine: WorkEngine[Any], now: float) -> list[PartitionState]:
    states = []
    for tp in engine.partitions():
        part = engine.partition(tp)
        assert part is not None
        since = part.offsets.oldest_open_since()
        states.append(
            PartitionState(
                topic=tp[0],
                partition=tp[1],
                open_records=part.open_count,
                in_flight=len(part.jobs),
                committed=part.offsets.committed,
                oldest_open_age=None if since is None else now - since,
                paused=part.paused,
            )
        )
    return states


def queue_windows(engine: WorkEngine[Any]) -> list[QueueWindow]:
    """Per Celery queue: the dispatch window, tasks in flight, measured finishing rate."""
    return [
        QueueWindow(name or "default", q.window(), q.in_flight, q.rate)
        for name, q in engine.queues().items()
    ]
