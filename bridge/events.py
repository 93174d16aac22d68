"""Observers of bridge events: metrics, logs and progress watch the loop, never steer it.

The loop calls the methods of one :class:`Observers` fan-out; a failing observer is logged and
skipped, never raised into the loop.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from dataclasses import dataclass, field

from bridge.core.vocabulary import TP
from bridge.records import Record

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PartitionState:
    """One partition as the loop sees it, sampled on the loop's thread about once a second."""

    topic: str
    partition: int
    open_records: int  # consumed, not finished (waiting + in flight + dead letter pending)
    in_flight: int  # tasks sent and not final
    committed: int | None
    oldest_open_age: float | None  # seconds since the commit-blocking record was consumed
    paused: bool


@dataclass(frozen=True, slots=True)
class QueueWindow:
    """One Celery queue's dispatch window (see :mod:`bridge.core.queues`), sampled likewise."""

    queue: str
    window: int  # tasks the bridge lets be in flight now
    in_flight: int
    rate: float  # tasks finished per second, moving average


@dataclass(frozen=True)
class DeadLetterState:
    """The dead-letter writer as the loop sees it (``DeadLetterWriter.state()``), sampled on
    the loop's thread about once a second."""

    #: letters not yet acknowledged, by (dead-letter topic, ``writing|retrying|refused``)
    pending: dict[tuple[str, str], int] = field(default_factory=dict)
    #: letters written without their value, by dead-letter topic (since start)
    values_dropped: dict[str, int] = field(default_factory=dict)
    #: producers replaced after a fatal error (since start)
    rebuilds: int = 0
    #: letters not written again because that would loop, by source topic (since start)
    loops_stopped: dict[str, int] = field(default_factory=dict)
    #: why the dead letters are stuck, for ``/readyz``; None when they are not
    problem: str | None = None


class Observer:
    """The one observer base: every event the loop reports, as a no-op, so an observer
    overrides only what it watches (metrics, totals, the lag monitor)."""

    def on_consumed(self, record: Record) -> None:
        pass

    def on_dispatched(self, record: Record, task: str, redispatch: bool) -> None:
        pass

    def on_rate_limited(self, route: str, granted: int, wait: float) -> None:
        """A route's bucket granted ``granted`` tokens; ``wait`` > 0: its records wait that
        long for the next one."""

    def on_task_finished(
        self, record: Record, task: str, outcome: str, duration: float | None
    ) -> None:
        pass

    def on_dead_lettered(self, record: Record, reason: str) -> None:
        pass

    def on_committed(self, tp: TP, offset: int) -> None:
        pass

    def on_rebalance(self, event: str, tps: list[TP]) -> None:
        pass

    def on_paused(self, paused: int) -> None:
        pass

    def on_snapshot(self, partitions: list[PartitionState]) -> None:
        pass

    def on_windows(self, windows: list[QueueWindow]) -> None:
        pass

    def on_offset_reset(self, tp: TP) -> None:
        pass

    def on_unobservable(self, record: Record, task: str) -> None:
        """A lost task was held: its outcome can never be seen (see bridge.worker_probe)."""

    def on_dead_letter_state(self, state: DeadLetterState) -> None:
        """The dead-letter writer's backlog and totals (each loop snapshot)."""


class Observers(Observer):
    """Fans every event out to each observer; an observer's exception is logged, not raised."""

    def __init__(self, observers: list[Observer] | None = None) -> None:
        self._observers: list[Observer] = list(observers or [])

    def add(self, observer: Observer) -> None:
        self._observers.append(observer)

    def _each(self, method: str, *args: object) -> None:
        for observer in self._observers:
            try:
                getattr(observer, method)(*args)
            except Exception:
                log.exception("observer %s failed in %s", type(observer).__name__, method)

    def on_consumed(self, record: Record) -> None:
        self._each("on_consumed", record)

    def on_dispatched(self, record: Record, task: str, redispatch: bool) -> None:
        self._each("on_dispatched", record, task, redispatch)

    def on_rate_limited(self, route: str, granted: int, wait: float) -> None:
        self._each("on_rate_limited", route, granted, wait)

    def on_task_finished(
        self, record: Record, task: str, outcome: str, duration: float | None
    ) -> None:
        self._each("on_task_finished", record, task, outcome, duration)

    def on_dead_lettered(self, record: Record, reason: str) -> None:
        self._each("on_dead_lettered", record, reason)

    def on_committed(self, tp: TP, offset: int) -> None:
        self._each("on_committed", tp, offset)

    def on_rebalance(self, event: str, tps: list[TP]) -> None:
        self._each("on_rebalance", event, tps)

    def on_paused(self, paused: int) -> None:
        self._each("on_paused", paused)

    def on_snapshot(self, partitions: list[PartitionState]) -> None:
        self._each("on_snapshot", partitions)

    def on_windows(self, windows: list[QueueWindow]) -> None:
        self._each("on_windows", windows)

    def on_offset_reset(self, tp: TP) -> None:
        self._each("on_offset_reset", tp)

    def on_unobservable(self, record: Record, task: str) -> None:
        self._each("on_unobservable", record, task)

    def on_dead_letter_state(self, state: DeadLetterState) -> None:
        self._each("on_dead_letter_state", state)


@dataclass
class Totals(Observer):
    """Running totals, for the periodic summary line and ``ckb demo``'s progress."""

    consumed: int = 0
    dispatched: int = 0
    redispatched: int = 0
    dead_lettered: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    committed: dict[TP, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def on_consumed(self, record: Record) -> None:
        self.consumed += 1

    def on_dispatched(self, record: Record, task: str, redispatch: bool) -> None:
        if redispatch:
            self.redispatched += 1
        else:
            self.dispatched += 1

    def on_task_finished(
        self, record: Record, task: str, outcome: str, duration: float | None
    ) -> None:
        self.outcomes[outcome] += 1

    def on_dead_lettered(self, record: Record, reason: str) -> None:
        self.dead_lettered += 1

    def on_committed(self, tp: TP, offset: int) -> None:
        with self._lock:
            self.committed[tp] = offset
