"""The work engine: per-partition work state and every decision the consumer loop carries out.

The loop tells it what happened (records consumed, tasks sent, states reported, dead letters
written, commits made, partitions assigned or revoked) and asks it what to do: which jobs may
be sent now, which tasks are lost, what may be committed, which partitions to pause or resume.
It does no I/O and reads no clock: every call that needs the time is given ``now``.

Invariants (checked by ``tests/unit/test_engine_model.py`` after every step):

- the commit point of a partition never passes an open offset and never moves back;
- a record finishes at most once per assignment; an event of an older assignment is ignored;
- tasks in flight never exceed a partition's ``max_in_flight`` or ``max_in_flight_total``,
  and :meth:`select` never sends past a queue's window;
- a task is lost only after its start, or after workers were seen to take it: a queue that is
  slow or not drained at all never makes a task lost;
- ordering: one task per key (``key``) or per partition (``partition``) at a time;
- after :meth:`select`, no partition holds a waiting job that could have been sent;
- a revoked partition leaves nothing behind.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Generic

from bridge.core.batches import select_batches
from bridge.core.commit_points import CommitPoints
from bridge.core.deadlines import Deadlines, Expiry, never
from bridge.core.flow import FlowChange, Totals, decide_flow
from bridge.core.jobs import Job, T
from bridge.core.partition import PartitionWork, fair_shares
from bridge.core.policy import Limits, RoutePolicy
from bridge.core.queues import QueueProgress
from bridge.core.vocabulary import TP


def _first_id(batch: list[Job[T]]) -> str:
    return f"{batch[0].task_id}+{len(batch)}"


class WorkEngine(CommitPoints[T], Generic[T]):
    def __init__(
        self,
        limits: Limits | None = None,
        batch_id: Callable[[list[Job[T]]], str] = _first_id,
    ) -> None:
        self.limits = limits or Limits()
        #: the task id of a batch (deterministic: the caller derives it from its records)
        self._batch_id = batch_id
        self._parts: dict[TP, PartitionWork[T]] = {}
        #: the partition of every job in flight, by task id
        self._owner: dict[str, PartitionWork[T]] = {}
        self._deadlines = Deadlines()
        #: partitions whose waiting jobs may be sendable: new jobs, freed room, or starved of
        #: total room last time (those are looked at every turn; it costs O(1) each)
        self._ready: set[TP] = set()
        self._epochs = 0
        self._open_total = 0
        self._open_bytes = 0
        self._turn = 0  # select() calls: where its fair round starts
        #: routes whose records may not be sent before a time (a rate limit's empty bucket)
        self._held: dict[str, float] = {}
        self._queues: dict[str, QueueProgress] = {}

    # == assignment ======================================================================
    def assign(self, tp: TP, policy: RoutePolicy | None) -> int:
        """Own ``tp`` afresh (any earlier state is dropped); returns the new epoch."""
        self.drop(tp)
        self._epochs += 1
        cap = policy.max_in_flight if policy else self.limits.max_in_flight_total
        progress = self._queue_named(policy.queue if policy else "")
        self._parts[tp] = PartitionWork(self._epochs, policy, cap, progress)
        return self._epochs

    def drop(self, tp: TP) -> PartitionWork[T] | None:
        """Forget ``tp`` whole (revoked or lost); returns what it held (jobs, pause flag)."""
        part = self._parts.pop(tp, None)
        if part is None:
            return None
        self._open_total -= part.open_count
        self._open_bytes -= part.open_bytes
        for task_id in part.jobs:
            del self._owner[task_id]
            part.progress.left()
        self._ready.discard(tp)
        return part

    def owns(self, tp: TP, epoch: int | None = None) -> bool:
        part = self._parts.get(tp)
        return part is not None and (epoch is None or part.epoch == epoch)

    def partition(self, tp: TP) -> PartitionWork[T] | None:
        return self._parts.get(tp)

    def partitions(self) -> list[TP]:
        return list(self._parts)

    def _owned(self, tp: TP, epoch: int) -> PartitionWork[T] | None:
        part = self._parts.get(tp)
        return part if part is not None and part.epoch == epoch else None

    # == records =========================================================================
    def open(self, tp: TP, offset: int, now: float, size: int = 0) -> int | None:
        """A consumed record of ``size`` bytes: its epoch, or None (partition not owned,
        offset already seen)."""
        part = self._parts.get(tp)
        if part is None or not part.offsets.add(offset, now):
            return None
        self._open_total += 1
        part.opened(offset, size)
        self._open_bytes += size
        return part.epoch

    def rewound(self, tp: TP, offset: int) -> bool:
        """Whether ``offset`` lies behind what ``tp`` already delivered under this assignment:
        the log was truncated or the topic recreated (Kafka never redelivers otherwise)."""
        part = self._parts.get(tp)
        next_offset = None if part is None else part.offsets.next_offset
        return next_offset is not None and offset < next_offset

    def finish(self, tp: TP, offset: int, epoch: int) -> bool:
        """A record is done (task succeeded, dead letter written, skipped); False if stale."""
        part = self._owned(tp, epoch)
        if part is None or not part.offsets.finish(offset):
            return False
        self._open_total -= 1
        self._open_bytes -= part.closed(offset)
        return True

    def enqueue(self, job: Job[T]) -> bool:
        """A decoded record waits for its turn to be sent; False if its partition moved."""
        part = self._owned(job.tp, job.epoch)
        if part is None or part.policy is None:
            return False
        part.waiting.append(job)
        self._ready.add(job.tp)
        return True

    def clear_waiting(self) -> int:
        """Drop every job not yet sent (shutdown): their offsets stay open, uncommitted."""
        dropped = sum(len(part.waiting) for part in self._parts.values())
        for part in self._parts.values():
            part.waiting.clear()
        self._ready.clear()
        return dropped

    # == dispatch ========================================================================
    def select(self, now: float) -> list[Job[T]]:
        """Take the waiting jobs that may be sent now (ordering and caps allowing).

        The caller sends them and reports :meth:`started`, or :meth:`put_back` if the send
        failed, or :meth:`settled` for one that needs no task (its outcome was known).
        """
        chosen: list[Job[T]] = []
        by_queue: dict[str, int] = {}
        for progress in self._queues.values():
            progress.tick(now)
        ready, self._ready = self._ready, set()
        wanting: list[tuple[TP, PartitionWork[T]]] = []
        for tp in sorted(ready):
            part = self._parts.get(tp)
            if part is not None and part.policy is not None and part.waiting:
                if self._held and self._held.get(part.policy.name, 0.0) > now:
                    self._ready.add(tp)  # its route waits (rate limit): looked at again later
                    continue
                wanting.append((tp, part))
        if not wanting:
            return chosen
        # a fair share of each queue's window per partition, starting at a rotating place, so
        # a partition that arrives with many waiting records cannot take a whole window
        self._turn += 1
        start = self._turn % len(wanting)
        shares = fair_shares([part for _, part in wanting])
        for tp, part in wanting[start:] + wanting[:start]:
            assert part.policy is not None
            name = part.policy.queue
            shared_room = min(
                self.limits.max_in_flight_total - len(self._owner) - len(chosen),
                part.progress.room() - by_queue.get(name, 0),
                shares[name],
            )
            room = part.room()
            picked = self._pick(part, min(room, shared_room), now)
            chosen.extend(picked)
            by_queue[name] = by_queue.get(name, 0) + len(picked)
            if part.waiting and shared_room <= room:
                self._ready.add(tp)  # held back by the total cap, the window or its share
        return chosen

    def _pick(self, part: PartitionWork[T], room: int, now: float) -> list[Job[T]]:
        assert part.policy is not None
        if part.policy.batch is None:
            return part.gate.select(part.policy.ordering, part.waiting, room)
        picked = select_batches(part, room, now, self._batch_id)
        if part.waiting:  # a partial batch waits for more records or for max_wait: look again
            self._ready.add(part.waiting[0].tp)
        return picked

    def remember_batch(self, job: Job[T], task_id: str, offsets: frozenset[int]) -> None:
        """An earlier owner sent ``offsets`` of ``job``'s partition as batch ``task_id``: form
        that batch again before any other (see core/batches.py)."""
        part = self._owned(job.tp, job.epoch)
        if part is not None and all(task_id != known for known, _ in part.remembered):
            part.remembered.append((task_id, offsets))
            part.remembered.sort(key=lambda entry: min(entry[1], default=-1))

    def hold(self, route: str, until: float) -> None:
        """Send nothing of ``route`` (a policy's ``name``) before ``until``."""
        self._held[route] = until  # one entry per configured route at most

    def started(self, jobs: Iterable[Job[T]], now: float) -> None:
        """Selected jobs whose tasks were sent (or were already sent by an earlier owner)."""
        for job in jobs:
            part = self._owned(job.tp, job.epoch)
            if part is None or job.task_id in part.jobs:
                continue
            part.jobs[job.task_id] = job
            self._owner[job.task_id] = part
            for key in job.held_keys():
                part.gate.started(key)
            job.first_dispatch = job.last_dispatch = now
            job.dispatches += 1
            job.seq = part.progress.sent()
            self._arm(job, now + part.policy_timeout())

    def settled(self, job: Job[T]) -> None:
        """A selected job needed no task after all: the room it was given is free again."""
        if self.owns(job.tp, job.epoch):
            self._ready.add(job.tp)

    def put_back(self, jobs: Iterable[Job[T]]) -> None:
        """Selected jobs that could not be sent wait again, in offset order."""
        by_tp: dict[TP, list[Job[T]]] = defaultdict(list)
        for job in jobs:
            by_tp[job.tp].extend(job.parts())  # a batch's records wait again, one by one
        for tp, unsent in by_tp.items():
            part = self._owned(tp, unsent[0].epoch)
            if part is not None:
                part.put_back(unsent)
                self._ready.add(tp)

    # == outcomes ========================================================================
    def job(self, task_id: str) -> Job[T] | None:
        part = self._owner.get(task_id)
        return None if part is None else part.jobs[task_id]

    def progress(self, task_id: str, now: float, retry: bool = False) -> Job[T] | None:
        """The task reported progress (STARTED, RETRY): its timeout window starts again."""
        job = self.job(task_id)
        if job is not None:
            job.retries_seen += retry
            job.started = True
            self._arm(job, now + self._owner[task_id].policy_timeout())
        return job

    def complete(self, task_id: str, now: float) -> Job[T] | None:
        """The task reached a final state: out of flight. None if not ours (any more)."""
        part = self._owner.get(task_id)
        job = self._release(task_id)
        if job is not None and part is not None:
            progress = part.progress
            progress.finished(job.seq, now - job.last_dispatch, now)
            self._prune(progress)
        return job

    def _release(self, task_id: str) -> Job[T] | None:
        part = self._owner.pop(task_id, None)
        if part is None:
            return None
        job = part.jobs.pop(task_id)
        for key in job.held_keys():
            part.gate.finished(key)
        part.progress.left()
        self._ready.add(job.tp)
        return job

    def expire(self, now: float, hold: Callable[[Job[T]], bool] = never) -> Expiry[T]:
        """Tasks with no final state by their deadline.

        Those with re-sends left are re-armed and returned to be sent again (report
        :meth:`resent`); the others are taken out of flight, to be dead-lettered. A lost task
        that ``hold`` names (its outcome can never be seen) is neither: it stays in flight,
        re-armed, and is returned in ``held``.
        """
        expiry: Expiry[T] = Expiry()
        for task_id in self._deadlines.due(now, self._is_current):
            part = self._owner[task_id]
            job = part.jobs[task_id]
            timeout = part.policy_timeout()
            if not job.started:  # lost only once a worker took it and the timeout passed
                taken = part.progress.taken_at(job.seq)
                if taken is None or taken + timeout > now:
                    self._arm(job, now + timeout if taken is None else taken + timeout)
                    continue
            assert part.policy is not None  # only routed partitions send tasks
            if hold(job):
                self._arm(job, now + timeout)
                expiry.held.append(job)
            elif job.dispatches <= part.policy.max_redispatch:
                self._arm(job, now + timeout)
                expiry.resend.append(job)
            else:
                self._release(task_id)
                expiry.timed_out.append(job)
        return expiry

    def retry_later(self, job: Job[T], when: float) -> None:
        """A lost task could not be sent again now: ask :meth:`expire` about it at ``when``."""
        if self.job(job.task_id) is job:
            self._arm(job, when)

    def resent(self, job: Job[T], now: float) -> None:
        """A lost task was sent again: one more dispatch, a fresh timeout window."""
        part = self._owner.get(job.task_id)
        if part is not None and part.jobs[job.task_id] is job:
            job.dispatches += 1
            job.last_dispatch = now
            job.started = False
            job.seq = part.progress.resequence()
            self._arm(job, now + part.policy_timeout())

    def _arm(self, job: Job[T], deadline: float) -> None:
        job.deadline = deadline
        self._deadlines.arm(job.task_id, deadline, len(self._owner), self._is_current)

    # == queues ==========================================================================
    def _queue_named(self, name: str) -> QueueProgress:
        progress = self._queues.get(name)
        if progress is None:
            limits = self.limits
            progress = self._queues[name] = QueueProgress(
                limits.max_queue_time, limits.window_floor, limits.max_in_flight_total
            )
        return progress

    def observe_depth(self, queue: str, depth: int, now: float) -> None:
        """The broker holds ``depth`` messages in ``queue`` (read by the loop)."""
        progress = self._queues.get(queue)
        if progress is None:
            return
        progress.observe_depth(depth, now)
        self._prune(progress)

    def _prune(self, progress: QueueProgress) -> None:
        """Keep a queue's marks proportional to its tasks in flight (amortised O(1))."""
        if progress.marks > 2 * progress.in_flight + 1024:
            progress.keep_only(
                job.seq
                for part in self._parts.values()
                if part.progress is progress
                for job in part.jobs.values()
            )

    def queues(self) -> dict[str, QueueProgress]:
        """Each Celery queue the engine sent to: window, rate, tasks in flight."""
        return dict(self._queues)

    def _is_current(self, task_id: str, deadline: float) -> bool:
        job = self.job(task_id)
        return job is not None and job.deadline == deadline

    # == flow control ====================================================================
    def flow(self) -> FlowChange:
        """Partitions to pause and to resume now (see :func:`bridge.core.flow.decide_flow`)."""
        return decide_flow(self._parts, Totals(self._open_total, self._open_bytes), self.limits)

    # == sizes ===========================================================================
    @property
    def open_total(self) -> int:
        return self._open_total

    @property
    def open_bytes(self) -> int:
        """Bytes of all open records (what ``max_in_flight_bytes_total`` caps)."""
        return self._open_bytes

    @property
    def in_flight(self) -> int:
        return len(self._owner)

    def in_flight_of(self, tps: Iterable[TP]) -> int:
        return sum(len(part.jobs) for tp in tps if (part := self._parts.get(tp)) is not None)

    @property
    def paused_count(self) -> int:
        return sum(part.paused for part in self._parts.values())

    def ready_partitions(self) -> frozenset[TP]:
        """Partitions :meth:`select` will look at next (for tests of the no-stall invariant)."""
        return frozenset(self._ready)

    @property
    def waiting_count(self) -> int:
        return sum(len(part.waiting) for part in self._parts.values())
