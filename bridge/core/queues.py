"""What the bridge learns about one Celery queue from its own tasks' outcomes.

Two questions are answered here, both without seeing the workers:

- *How much to keep in flight* (the window). By Little's law the tasks in flight equal the
  finishing rate times the time each spends in the system. The bridge wants no more queued
  ahead of the workers than they start within ``max_queue_time``, so it keeps
  ``rate * (max_queue_time + service time)`` in flight, where the service time is the
  shortest dispatch-to-final time seen lately (a task that did not queue). When the workers
  are idle, the measured rate is bounded by the window itself and the window grows by a factor
  ``(max_queue_time + service) / service`` per measurement; when they are the bottleneck, the
  queue holds about ``max_queue_time`` of work. Never below ``floor`` nor above ``cap``.
- *Whether the workers have taken a task* (loss detection without a STARTED state). Tasks get
  a sequence number as they are sent to the queue. A Celery queue is FIFO, so a task is known
  to be taken by a worker once a task sent after it has finished, or once the broker's queue
  holds fewer messages than were sent after it (``depth``; other producers' messages only
  make this more cautious). From then on it has ``task_timeout`` to finish before it counts
  as lost. A queue nobody drains has no such moment: its tasks are never declared lost,
  however long they wait.
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Iterable

#: seconds per throughput measurement
BUCKET = 0.5
#: weight of the newest measurement in the moving average of the finishing rate
ALPHA = 0.5
#: how many measurements the shortest service time is remembered for (30 s)
SERVICE_MEMORY = 60


class QueueProgress:
    def __init__(self, max_queue_time: float, floor: int, cap: int) -> None:
        self.max_queue_time = max_queue_time
        self.floor = floor
        self.cap = cap
        self.in_flight = 0
        self._next_seq = 0
        #: (highest sequence known taken, since when); both ascending
        self._marks: list[tuple[int, float]] = []
        self._taken = -1
        self.rate = 0.0  # tasks finished per second, moving average
        self._bucket_start: float | None = None
        self._bucket_count = 0
        self._bucket_service = float("inf")
        self._service: deque[float] = deque(maxlen=SERVICE_MEMORY)

    # -- events -------------------------------------------------------------------
    def sent(self) -> int:
        """A task was sent to the queue: its sequence number."""
        self.in_flight += 1
        self._next_seq += 1
        return self._next_seq - 1

    def left(self) -> None:
        """A task stopped counting (finished, lost or forgotten)."""
        self.in_flight = max(0, self.in_flight - 1)

    def resequence(self) -> int:
        """A task in flight was sent again: it joins the back of the queue."""
        self._next_seq += 1
        return self._next_seq - 1

    def finished(self, seq: int, took: float, now: float) -> None:
        """A task sent with ``seq`` reached a final state ``took`` seconds after dispatch."""
        self.tick(now)
        self._bucket_count += 1
        self._bucket_service = min(self._bucket_service, took)
        self._mark_taken(seq - 1, now)  # everything sent before it was taken

    def observe_depth(self, depth: int, now: float) -> None:
        """The broker holds ``depth`` messages in this queue: all but the last ``depth`` sent
        were taken by workers."""
        self._mark_taken(self._next_seq - 1 - depth, now)

    def _mark_taken(self, seq: int, now: float) -> None:
        if seq > self._taken:
            self._taken = seq
            self._marks.append((seq, now))

    def tick(self, now: float) -> None:
        """Close the measurements that ended before ``now``."""
        if self._bucket_start is None:
            self._bucket_start = now
            return
        while now - self._bucket_start >= BUCKET:
            self.rate = ALPHA * (self._bucket_count / BUCKET) + (1 - ALPHA) * self.rate
            if self._bucket_service != float("inf"):
                self._service.append(self._bucket_service)
            self._bucket_start += BUCKET
            self._bucket_count = 0
            self._bucket_service = float("inf")
            if now - self._bucket_start >= BUCKET * SERVICE_MEMORY:  # idle for long: skip ahead
                self.rate = 0.0
                self._bucket_start = now

    # -- answers ------------------------------------------------------------------
    def window(self) -> int:
        """How many tasks of this queue may be in flight now (``max_queue_time`` 0: no window,
        only the caps)."""
        if self.max_queue_time <= 0:
            return self.cap
        service = min(self._service, default=0.0)
        wanted = int(self.rate * (self.max_queue_time + service))
        return max(self.floor, min(self.cap, wanted))

    def room(self) -> int:
        return self.window() - self.in_flight

    def taken_at(self, seq: int) -> float | None:
        """Since when the task sent with ``seq`` is known taken by a worker; None: not yet."""
        index = bisect.bisect_left(self._marks, (seq, float("-inf")))
        return self._marks[index][1] if index < len(self._marks) else None

    def keep_only(self, seqs: Iterable[int]) -> None:
        """Keep just the marks that answer :meth:`taken_at` for ``seqs`` (the tasks in flight):
        at most one each, however many tasks finished since the oldest of them was sent."""
        marks = self._marks
        wanted = {bisect.bisect_left(marks, (seq, float("-inf"))) for seq in seqs}
        self._marks = [marks[index] for index in sorted(wanted) if index < len(marks)]

    def forget_before(self, seq: int) -> None:
        """Drop marks no task in flight can ask about (every one in flight has ``>= seq``)."""
        del self._marks[: bisect.bisect_left(self._marks, (seq, float("-inf")))]

    @property
    def next_seq(self) -> int:
        return self._next_seq

    @property
    def marks(self) -> int:
        return len(self._marks)
