"""Model-based test of the work engine (DESIGN.md semantics 1-4, 6): random records,
completions (out of order, duplicated, stale), failures, timeouts, re-sends, assigns, revokes,
lost partitions and restarts; the invariants are checked after every step.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from bridge.core.engine import FlowChange, WorkEngine
from bridge.core.jobs import Job
from bridge.core.policy import Limits, RoutePolicy
from bridge.core.vocabulary import TP, Ordering

ROUTED: list[TP] = [("orders", 0), ("orders", 1), ("orders", 2)]
UNROUTED: TP = ("stray", 0)
ALL = [*ROUTED, UNROUTED]
KEYS = [None, b"a", b"b", b"c"]


@dataclass
class Broker:
    """What Kafka keeps across owners and restarts: the committed offset of each partition."""

    committed: dict[TP, int] = field(default_factory=dict)
    #: offsets finished (task succeeded or dead letter written) in any ownership
    finished: dict[TP, set[int]] = field(default_factory=lambda: {tp: set() for tp in ALL})


@dataclass
class Ownership:
    epoch: int
    next_offset: int
    open: set[int] = field(default_factory=set)
    finished: set[int] = field(default_factory=set)


def size_of(offset: int) -> int:
    """A record's size in the model: 0 (no value) to 60 bytes, so byte caps are reached."""
    return (offset * 7) % 61


class EngineMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.broker = Broker()
        self.now = 0.0
        self.owned: dict[TP, Ownership] = {}
        #: dead letters being written: (tp, offset, epoch)
        self.dead_letters: list[tuple[TP, int, int]] = []
        #: task ids of partitions dropped or of an engine thrown away (stale completions)
        self.stale: list[str] = []
        self.engine: WorkEngine[None] = WorkEngine()

    @initialize(
        ordering=st.sampled_from(list(Ordering)),
        per_partition=st.integers(1, 4),
        floor=st.integers(1, 6),
        total=st.integers(1, 8),
        redispatch=st.integers(0, 2),
        ratio=st.sampled_from([0.25, 0.5, 1.0]),
    )
    def setup(
        self,
        ordering: Ordering,
        per_partition: int,
        floor: int,
        total: int,
        redispatch: int,
        ratio: float,
    ) -> None:
        self.policy = RoutePolicy(
            ordering, per_partition, 10.0, redispatch, max_in_flight_bytes=per_partition * 40
        )
        self.limits = Limits(
            total,
            ratio,
            max_queue_time=1.0,
            window_floor=floor,
            max_in_flight_bytes_total=total * 30,
        )
        self.engine = WorkEngine(self.limits)

    # -- assignment ------------------------------------------------------------------
    @precondition(lambda self: len(self.owned) < len(ALL))
    @rule(data=st.data())
    def assign(self, data: st.DataObject) -> None:
        tp = data.draw(st.sampled_from([tp for tp in ALL if tp not in self.owned]))
        epoch = self.engine.assign(tp, None if tp == UNROUTED else self.policy)
        self.owned[tp] = Ownership(epoch, self.broker.committed.get(tp, 0))

    @precondition(lambda self: bool(self.owned))
    @rule(data=st.data(), lost=st.booleans())
    def revoke(self, data: st.DataObject, lost: bool) -> None:
        tp = data.draw(st.sampled_from(sorted(self.owned)))
        if not lost:  # a revoke commits what finished; a loss does not
            self._commit(self.engine.committable([tp]), accepted=True)
        part = self.engine.drop(tp)
        assert part is not None
        self.stale.extend(part.jobs)
        del self.owned[tp]
        assert not self.engine.owns(tp)
        assert all(self.engine.job(task_id) is None for task_id in part.jobs)

    @rule(die=st.integers(0, 4))
    def restart(self, die: int) -> None:
        """The process dies: a new engine, nothing committed beyond what Kafka has."""
        if die:
            return  # rarer than the other rules
        for tp in list(self.owned):
            part = self.engine.partition(tp)
            assert part is not None
            self.stale.extend(part.jobs)
        self.owned.clear()
        self.dead_letters.clear()  # their writes die with the process (never acknowledged)
        self.engine = WorkEngine(self.limits)

    # -- records ---------------------------------------------------------------------
    @rule(tp=st.sampled_from(ALL))
    def consume_unowned(self, tp: TP) -> None:
        if tp not in self.owned:
            assert self.engine.open(tp, 0, self.now) is None

    @precondition(lambda self: bool(self.owned))
    @rule(data=st.data(), keys=st.lists(st.sampled_from(KEYS), min_size=1, max_size=5))
    def consume(self, data: st.DataObject, keys: list[bytes | None]) -> None:
        tp = data.draw(st.sampled_from(sorted(self.owned)))
        own = self.owned[tp]
        for key in keys:
            offset = own.next_offset
            own.next_offset += 1
            epoch = self.engine.open(tp, offset, self.now, size_of(offset))
            assert epoch == own.epoch
            assert self.engine.open(tp, offset, self.now) is None  # a duplicate delivery
            own.open.add(offset)
            bad = data.draw(st.integers(0, 9)) == 0
            if bad or tp == UNROUTED:  # undecodable or unrouted: a dead letter, no task
                self.dead_letters.append((tp, offset, epoch))
            else:
                job = Job(tp, offset, key, epoch, f"{tp[0]}:{tp[1]}:{offset}", None)
                assert self.engine.enqueue(job)

    @rule(data=st.data())
    def dead_letter_written(self, data: st.DataObject) -> None:
        if not self.dead_letters:
            return
        tp, offset, epoch = self.dead_letters.pop(
            data.draw(st.integers(0, len(self.dead_letters) - 1))
        )
        self._finish(tp, offset, epoch)

    def _finish(self, tp: TP, offset: int, epoch: int) -> None:
        own = self.owned.get(tp)
        expected = own is not None and own.epoch == epoch and offset in own.open
        assert self.engine.finish(tp, offset, epoch) == expected
        if expected:
            assert own is not None
            own.open.discard(offset)
            own.finished.add(offset)
            self.broker.finished[tp].add(offset)
        assert not self.engine.finish(tp, offset, epoch)  # once per ownership

    # -- tasks -----------------------------------------------------------------------
    @rule(outcome=st.sampled_from(["sent", "refused", "known"]))
    def send(self, outcome: str) -> None:
        queue = self.engine.queues().get("")
        window = None if queue is None else (queue.window(), queue.in_flight)
        jobs = self.engine.select(self.now)
        for job in jobs:
            assert self.engine.owns(job.tp, job.epoch)
        if window is not None and jobs:  # never past the window (it may have moved on tick)
            assert window[1] + len(jobs) <= max(window[0], self.engine.queues()[""].window())
        if outcome == "refused":
            self.engine.put_back(jobs)
        elif outcome == "known":  # an earlier run's SUCCESS was found: no task sent
            for job in jobs:
                self.engine.settled(job)
                self._finish(job.tp, job.offset, job.epoch)
        else:
            self.engine.started(jobs, self.now)
        self._check_caps()

    @rule(data=st.data(), success=st.booleans())
    def complete(self, data: st.DataObject, success: bool) -> None:
        running = self._running()
        if not running:
            return
        job = data.draw(st.sampled_from(running))
        assert self.engine.complete(job.task_id, self.now) is job
        assert self.engine.complete(job.task_id, self.now) is None  # a duplicate report
        if success:
            self._finish(job.tp, job.offset, job.epoch)
        else:
            self.dead_letters.append((job.tp, job.offset, job.epoch))

    @rule(data=st.data())
    def stale_report(self, data: st.DataObject) -> None:
        if not self.stale:
            return
        task_id = data.draw(st.sampled_from(self.stale))
        if self.engine.job(task_id) is None:  # the record may be in flight again, re-sent
            assert self.engine.complete(task_id, self.now) is None
            assert self.engine.progress(task_id, self.now) is None

    @rule(data=st.data(), retry=st.booleans())
    def progress(self, data: st.DataObject, retry: bool) -> None:
        running = self._running()
        if running:
            job = data.draw(st.sampled_from(running))
            retries = job.retries_seen
            assert self.engine.progress(job.task_id, self.now, retry) is job
            assert job.retries_seen == retries + retry
            assert job.deadline == self.now + self.policy.task_timeout
            assert job.started

    @rule(depth=st.integers(0, 6))
    def broker_queue_depth(self, depth: int) -> None:
        """The loop read how many messages wait in the Celery queue."""
        self.engine.observe_depth("", depth, self.now)

    @rule(dt=st.sampled_from([0.5, 5.0, 11.0]), resend=st.booleans())
    def tick(self, dt: float, resend: bool) -> None:
        self.now += dt
        queue = self.engine.queues().get("")
        expiry = self.engine.expire(self.now)
        for job in [*expiry.resend, *expiry.timed_out]:
            # lost only after a start, or once workers took it, and the timeout passed
            assert queue is not None
            taken = queue.taken_at(job.seq)
            assert job.started or (
                taken is not None and taken + self.policy.task_timeout <= self.now
            ), "a task still in the queue was declared lost"
        for job in expiry.resend:
            assert job.dispatches <= self.policy.max_redispatch
            assert self.engine.job(job.task_id) is job  # still in flight
            if resend:
                self.engine.resent(job, self.now)
        for job in expiry.timed_out:
            assert job.dispatches > self.policy.max_redispatch
            assert self.engine.job(job.task_id) is None  # released
            self.dead_letters.append((job.tp, job.offset, job.epoch))
        assert not self.engine.expire(self.now).timed_out  # each deadline once

    # -- commits and flow ------------------------------------------------------------
    @rule(accepted=st.booleans())
    def commit(self, accepted: bool) -> None:
        self._commit(self.engine.committable(), accepted)

    def _commit(self, points: dict[TP, int], accepted: bool) -> None:
        for tp, point in points.items():
            own = self.owned[tp]
            assert point <= min(own.open, default=own.next_offset), "commit ahead of open work"
            previous = self.broker.committed.get(tp, 0)
            assert point >= previous, "commit moved back"
            self.engine.mark_committed(tp, point)
            if accepted:
                self.broker.committed[tp] = point
            else:
                self.engine.unmark_committed(tp, point)
                assert tp in self.engine.committable([tp])  # offered again

    @rule()
    def flow(self) -> None:
        change = self.engine.flow()
        assert not set(change.pause) & set(change.resume)
        assert self.engine.flow() == FlowChange(), "flow() flaps: a second call changes more"
        total, size = self.engine.open_total, self.engine.open_bytes
        limits, ratio = self.limits, self.limits.resume_ratio
        total_full = total >= limits.max_in_flight_total or size >= limits.max_in_flight_bytes_total
        for tp in self.owned:
            part = self.engine.partition(tp)
            assert part is not None
            own_full = part.open_count >= part.cap or part.open_bytes >= part.byte_cap
            if total_full or own_full:
                assert part.paused, f"{tp} at its cap is not paused"
            drained = (
                not own_full
                and part.open_count <= part.cap * ratio
                and part.open_bytes <= part.byte_cap * ratio
            )
            total_low = (
                total <= limits.max_in_flight_total * ratio
                and size <= limits.max_in_flight_bytes_total * ratio
            )
            # each partition resumes on its own terms: its own cap, or the total's if that
            # was what paused it
            if part.paused and not total_full and drained:
                assert part.paused_by_total and not total_low, f"{tp} may resume, stays paused"

    # -- invariants ------------------------------------------------------------------
    def _running(self) -> list[Job[None]]:
        jobs = []
        for tp in self.owned:
            part = self.engine.partition(tp)
            assert part is not None
            jobs.extend(part.jobs.values())
        return jobs

    def _check_caps(self) -> None:
        assert self.engine.in_flight <= self.limits.max_in_flight_total
        for tp in self.owned:
            part = self.engine.partition(tp)
            assert part is not None
            assert len(part.jobs) <= (part.policy.max_in_flight if part.policy else 0)
            keys = [job.key for job in part.jobs.values()]
            if self.policy.ordering is Ordering.KEY:
                assert len(keys) == len(set(keys)), "two tasks of one key at once"
            if self.policy.ordering is Ordering.PARTITION:
                assert len(keys) <= 1

    @invariant()
    def never_committed_ahead(self) -> None:
        for tp, committed in self.broker.committed.items():
            missing = set(range(committed)) - self.broker.finished[tp]
            assert not missing, f"{tp} committed {committed} before finishing {sorted(missing)}"

    @invariant()
    def counts_match_the_model(self) -> None:
        assert self.engine.open_total == sum(len(own.open) for own in self.owned.values())
        sizes = [size_of(offset) for own in self.owned.values() for offset in own.open]
        assert self.engine.open_bytes == sum(sizes)
        assert set(self.engine.partitions()) == set(self.owned)
        assert self.engine.in_flight == len(self._running())
        self._check_caps()

    @invariant()
    def no_sendable_job_is_overlooked(self) -> None:
        """A partition with a job that could be sent now is among those select() looks at."""
        ready = self.engine.ready_partitions()
        total_room = self.limits.max_in_flight_total - self.engine.in_flight
        queue = self.engine.queues().get("")
        if queue is not None:
            total_room = min(total_room, queue.room())
        for tp in self.owned:
            part = self.engine.partition(tp)
            assert part is not None
            if part.policy is None or not part.waiting or min(part.room(), total_room) <= 0:
                continue
            if _gate_allows_one(part.policy.ordering, part):
                assert tp in ready, f"{tp} could send but would never be looked at"

    @precondition(lambda self: bool(self.owned))
    @rule()
    def finished_work_can_be_committed(self) -> None:
        for tp, own in self.owned.items():
            if not own.open and own.next_offset > self.broker.committed.get(tp, 0):
                points = self.engine.committable([tp])
                committed = self.engine.partition(tp)
                assert committed is not None
                if committed.offsets.committed != own.next_offset:
                    assert points == {tp: own.next_offset}


def _gate_allows_one(mode: Ordering, part: object) -> bool:
    from bridge.core.partition import PartitionWork

    assert isinstance(part, PartitionWork)
    if mode is Ordering.UNORDERED:
        return True
    if mode is Ordering.PARTITION:
        return part.gate.running == 0
    seen: set[bytes | None] = set()
    for job in part.waiting:
        if job.key not in seen and not part.gate.busy[job.key]:
            return True
        seen.add(job.key)
    return False


EngineMachine.TestCase.settings = settings(
    max_examples=1000,
    stateful_step_count=80,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestEngineModel = EngineMachine.TestCase
