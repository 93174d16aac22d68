"""What the engine needs to know of the settings, as plain frozen values.

The loop builds these from the pydantic settings once; the engine never sees pydantic.
"""

from __future__ import annotations

from dataclasses import dataclass

from bridge.core.vocabulary import Ordering


@dataclass(frozen=True, slots=True)
class BatchPolicy:
    """How records become batches (see :mod:`bridge.core.batches`)."""

    max_records: int = 100
    max_wait: float = 0.5
    max_bytes: int = 2**20


@dataclass(frozen=True, slots=True)
class RoutePolicy:
    """The per-route limits and timers that decide when a record's task may run."""

    ordering: Ordering = Ordering.UNORDERED
    max_in_flight: int = 1000  # tasks in flight per partition
    task_timeout: float = 300.0  # seconds without a final state before a task counts as lost
    max_redispatch: int = 2  # re-sends of a lost task before it is dead-lettered
    queue: str = ""  # the Celery queue its tasks go to ("": the app's default queue)
    #: record bytes (value, key, headers) open per partition before it pauses
    max_in_flight_bytes: int = 64 * 2**20
    #: the route's name (its topic or pattern): what :meth:`WorkEngine.hold` holds
    name: str = ""
    #: records sent as one task (see :mod:`bridge.core.batches`); None: one task per record
    batch: BatchPolicy | None = None


@dataclass(frozen=True, slots=True)
class Limits:
    """Caps over all partitions."""

    max_in_flight_total: int = 10_000
    #: a paused partition resumes once its open records (and the total) fell to this share
    resume_ratio: float = 0.5
    #: seconds of queued work kept ahead of a queue's workers (see :mod:`bridge.core.queues`)
    max_queue_time: float = 5.0
    #: tasks a queue may always have in flight, whatever its measured rate
    window_floor: int = 32
    #: record bytes open over all partitions before they all pause
    max_in_flight_bytes_total: int = 256 * 2**20
