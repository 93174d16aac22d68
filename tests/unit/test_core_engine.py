"""The WorkEngine's decisions, example by example: what may be sent, caps, flow control, sizes.

``tests/unit/test_engine_model.py`` checks the same invariants over random runs; these pin
down each decision on its own, and the vocabulary the engine speaks.
"""

from __future__ import annotations

from collections.abc import Iterable

from bridge.core.engine import FlowChange, WorkEngine
from bridge.core.jobs import Job
from bridge.core.partition import PartitionWork
from bridge.core.policy import Limits, RoutePolicy
from bridge.core.queues import QueueProgress
from bridge.core.vocabulary import (
    FAILED,
    TP,
    Ordering,
    Outcome,
    Reason,
    TaskState,
    default_dlq_topic,
)

T0: TP = ("orders", 0)
T1: TP = ("orders", 1)
STRAY: TP = ("stray", 0)


def new_engine(total: int = 10_000, ratio: float = 0.5, floor: int = 10_000) -> WorkEngine[None]:
    """An engine whose queue window is never the limit, unless ``floor`` says so."""
    return WorkEngine(Limits(total, ratio, window_floor=floor))


def policy(
    ordering: Ordering = Ordering.UNORDERED, max_in_flight: int = 1000, redispatch: int = 2
) -> RoutePolicy:
    return RoutePolicy(ordering, max_in_flight, 10.0, redispatch)


def consume(
    engine: WorkEngine[None], tp: TP, count: int, keys: list[bytes | None] | None = None
) -> list[Job[None]]:
    """Open and enqueue ``count`` records of ``tp``; returns their jobs."""
    part = engine.partition(tp)
    assert part is not None
    made = []
    for i in range(count):
        offset = part.offsets.next_offset or 0
        epoch = engine.open(tp, offset, 0.0)
        assert epoch is not None
        job = Job(tp, offset, keys[i] if keys else None, epoch, f"{tp[0]}-{tp[1]}-{offset}", None)
        assert engine.enqueue(job)
        made.append(job)
    return made


def coordinates(jobs: Iterable[Job[None]]) -> list[tuple[TP, int]]:
    return sorted((job.tp, job.offset) for job in jobs)


def waiting(engine: WorkEngine[None], tp: TP) -> list[int]:
    part = engine.partition(tp)
    assert part is not None
    return [job.offset for job in part.waiting]


# -- enqueue --------------------------------------------------------------------------------


def test_enqueue_to_an_unrouted_partition_is_refused() -> None:
    engine = new_engine()
    epoch = engine.assign(STRAY, None)
    assert engine.open(STRAY, 0, 0.0) == epoch  # its records are still tracked...
    assert not engine.enqueue(Job(STRAY, 0, None, epoch, "x", None))  # ...never sent
    assert engine.waiting_count == 0
    assert engine.ready_partitions() == frozenset()
    part = engine.partition(STRAY)
    assert part is not None and part.room() == 0


def test_enqueue_to_a_stale_or_unowned_partition_is_refused() -> None:
    engine = new_engine()
    old = engine.assign(T0, policy())
    new = engine.assign(T0, policy())
    assert not engine.enqueue(Job(T0, 0, None, old, "x", None))
    assert not engine.enqueue(Job(T1, 0, None, new, "y", None))
    assert engine.enqueue(Job(T0, 0, None, new, "z", None))
    assert engine.waiting_count == 1
    assert engine.ready_partitions() == {T0}


# -- select and the caps ----------------------------------------------------------------------


def test_select_respects_the_per_partition_cap() -> None:
    engine = new_engine()
    engine.assign(T0, policy(max_in_flight=2))
    made = consume(engine, T0, 5)
    chosen = engine.select(0.0)
    assert chosen == made[:2]
    engine.started(chosen, 0.0)
    assert engine.in_flight == 2
    assert engine.select(0.0) == []
    assert engine.ready_partitions() == frozenset()  # full: not looked at until room frees
    engine.complete(made[0].task_id, 1.0)
    assert engine.ready_partitions() == {T0}
    assert engine.select(0.0) == [made[2]]
    assert waiting(engine, T0) == [3, 4]


def test_select_respects_the_total_cap_and_looks_again_at_starved_partitions() -> None:
    engine = new_engine(3)
    engine.assign(T0, policy())
    engine.assign(T1, policy())
    consume(engine, T0, 5)
    consume(engine, T1, 5)
    chosen = engine.select(0.0)
    assert len(chosen) == 3
    engine.started(chosen, 0.0)
    assert engine.in_flight == 3
    assert engine.waiting_count == 7
    # both still wait only because of the total cap: looked at again every turn
    assert engine.ready_partitions() == {T0, T1}
    assert engine.select(0.0) == []
    assert engine.ready_partitions() == {T0, T1}
    engine.complete(chosen[0].task_id, 1.0)
    assert len(engine.select(0.0)) == 1


def test_select_skips_a_ready_partition_with_nothing_waiting() -> None:
    engine = new_engine()
    engine.assign(T0, policy())
    (job,) = consume(engine, T0, 1)
    engine.started(engine.select(0.0), 0.0)
    engine.complete(job.task_id, 1.0)
    assert engine.ready_partitions() == {T0}
    assert engine.select(0.0) == []
    assert engine.ready_partitions() == frozenset()


def test_select_follows_the_route_ordering() -> None:
    engine = new_engine()
    engine.assign(T0, policy(Ordering.KEY))
    engine.assign(T1, policy(Ordering.PARTITION))
    consume(engine, T0, 4, [b"a", b"a", b"b", None])
    consume(engine, T1, 3)
    chosen = engine.select(0.0)
    assert coordinates(chosen) == [(T0, 0), (T0, 2), (T0, 3), (T1, 0)]
    engine.started(chosen, 0.0)
    assert engine.select(0.0) == []  # key a and partition T1 are busy
    engine.complete(f"{T0[0]}-{T0[1]}-0", 1.0)
    engine.complete(f"{T1[0]}-{T1[1]}-0", 1.0)
    assert coordinates(engine.select(0.0)) == [(T0, 1), (T1, 1)]


# -- started, settled, put_back ---------------------------------------------------------------


def test_started_ignores_a_job_of_a_dropped_or_reassigned_partition() -> None:
    engine = new_engine()
    engine.assign(T0, policy())
    engine.assign(T1, policy())
    (gone,) = consume(engine, T0, 1)
    (moved,) = consume(engine, T1, 1)
    assert len(engine.select(0.0)) == 2
    engine.drop(T0)
    engine.assign(T1, policy())  # a new epoch: the job belongs to the old one
    engine.started([gone, moved], 5.0)
    assert engine.in_flight == 0
    assert engine.job(gone.task_id) is None and engine.job(moved.task_id) is None
    assert (gone.dispatches, gone.deadline, moved.dispatches) == (0, 0.0, 0)
    assert engine.expire(1000.0).resend == []


def test_settled_marks_the_partition_ready() -> None:
    """A job that needed no task frees the room it was given: the next one may go."""
    engine = new_engine()
    engine.assign(T0, policy(Ordering.PARTITION))
    first, second = consume(engine, T0, 2)
    assert engine.select(0.0) == [first]
    assert engine.ready_partitions() == frozenset()
    engine.settled(first)
    assert engine.ready_partitions() == {T0}
    assert engine.select(0.0) == [second]


def test_settled_of_a_stale_job_changes_nothing() -> None:
    engine = new_engine()
    engine.assign(T0, policy())
    (job,) = consume(engine, T0, 1)
    assert engine.select(0.0) == [job]
    engine.assign(T0, policy())
    engine.settled(job)
    assert engine.ready_partitions() == frozenset()


def test_put_back_keeps_offset_order() -> None:
    engine = new_engine()
    engine.assign(T0, policy(max_in_flight=3))
    engine.assign(T1, policy())
    made = consume(engine, T0, 5)
    (other,) = consume(engine, T1, 1)
    assert coordinates(engine.select(0.0)) == [(T0, 0), (T0, 1), (T0, 2), (T1, 0)]
    engine.started([made[1]], 0.0)
    engine.put_back([made[2], other, made[0]])  # send refused, in any order
    assert waiting(engine, T0) == [0, 2, 3, 4]
    assert waiting(engine, T1) == [0]
    assert engine.ready_partitions() == {T0, T1}
    assert coordinates(engine.select(0.0)) == [(T0, 0), (T0, 2), (T1, 0)]  # T0: room for two


def test_put_back_of_a_stale_job_is_dropped() -> None:
    engine = new_engine()
    engine.assign(T0, policy())
    (job,) = consume(engine, T0, 1)
    assert engine.select(0.0) == [job]
    engine.assign(T0, policy())
    engine.put_back([job])
    assert engine.waiting_count == 0
    assert engine.ready_partitions() == frozenset()
    engine.put_back([])
    assert engine.waiting_count == 0


def test_partition_work_put_back_merges_in_offset_order() -> None:
    part: PartitionWork[None] = PartitionWork(1, policy(), 10, QueueProgress(5.0, 32, 10))
    part.waiting.extend(Job(T0, offset, None, 1, str(offset), None) for offset in (3, 7))
    part.put_back([Job(T0, offset, None, 1, str(offset), None) for offset in (9, 1, 5)])
    assert [job.offset for job in part.waiting] == [1, 3, 5, 7, 9]


def test_clear_waiting_drops_unsent_jobs_and_keeps_their_offsets_open() -> None:
    engine = new_engine()
    engine.assign(T0, policy(max_in_flight=1))
    engine.assign(T1, policy())
    consume(engine, T0, 3)
    consume(engine, T1, 2)
    engine.started(engine.select(0.0), 0.0)  # one of T0 and both of T1 in flight
    assert engine.waiting_count == 2
    assert engine.clear_waiting() == 2
    assert engine.waiting_count == 0
    assert engine.ready_partitions() == frozenset()
    assert engine.select(0.0) == []
    assert engine.open_total == 5  # uncommitted: consumed again after a restart
    assert engine.committable() == {T0: 0, T1: 0}
    assert engine.in_flight == 3
    assert engine.clear_waiting() == 0


# -- flow control -----------------------------------------------------------------------------


def open_records(engine: WorkEngine[None], tp: TP, count: int) -> None:
    part = engine.partition(tp)
    assert part is not None
    for _ in range(count):
        assert engine.open(tp, part.offsets.next_offset or 0, 0.0) is not None


def finish_records(engine: WorkEngine[None], tp: TP, count: int) -> None:
    part = engine.partition(tp)
    assert part is not None
    for offset in list(part.offsets.open)[:count]:
        assert engine.finish(tp, offset, part.epoch)


def test_flow_pauses_a_partition_at_its_cap_and_resumes_it_when_drained() -> None:
    engine = new_engine(100, 0.5)
    engine.assign(T0, policy(max_in_flight=4))
    engine.assign(T1, policy(max_in_flight=4))
    open_records(engine, T0, 3)
    assert engine.flow() == FlowChange()
    open_records(engine, T0, 1)
    assert engine.flow() == FlowChange(pause=[T0])
    assert engine.paused_count == 1
    assert engine.flow() == FlowChange()  # already paused
    finish_records(engine, T0, 1)
    assert engine.flow() == FlowChange()  # 3 open: above half the cap
    finish_records(engine, T0, 1)
    assert engine.flow() == FlowChange(resume=[T0])
    assert engine.paused_count == 0


def test_flow_pauses_every_partition_at_the_total_cap() -> None:
    engine = new_engine(6, 0.5)
    for tp in (T0, T1, STRAY):
        engine.assign(tp, policy(max_in_flight=100) if tp != STRAY else None)
    open_records(engine, T0, 6)
    change = engine.flow()
    assert sorted(change.pause) == sorted([T0, T1, STRAY])  # even the idle ones
    assert engine.paused_count == 3
    finish_records(engine, T0, 2)
    assert engine.flow() == FlowChange()  # 4 open: under the cap, above the resume level
    finish_records(engine, T0, 1)
    assert sorted(engine.flow().resume) == sorted([T0, T1, STRAY])


def test_flow_caps_an_unrouted_partition_at_the_total_cap() -> None:
    engine = new_engine(10, 0.5)
    engine.assign(STRAY, None)
    part = engine.partition(STRAY)
    assert part is not None and part.cap == 10
    open_records(engine, STRAY, 9)
    assert engine.flow() == FlowChange()
    open_records(engine, STRAY, 1)
    assert engine.flow() == FlowChange(pause=[STRAY])


def test_flow_with_resume_ratio_one_does_not_flap_at_the_cap() -> None:
    engine = new_engine(100, 1.0)
    engine.assign(T0, policy(max_in_flight=2))
    open_records(engine, T0, 2)
    assert engine.flow() == FlowChange(pause=[T0])
    assert engine.flow() == FlowChange()  # at the cap: stays paused
    finish_records(engine, T0, 1)
    assert engine.flow() == FlowChange(resume=[T0])
    assert engine.flow() == FlowChange()


def test_a_partition_paused_at_its_own_cap_resumes_without_waiting_for_the_total() -> None:
    engine = new_engine(10, 0.5)
    engine.assign(T0, policy(max_in_flight=4))
    engine.assign(T1, policy())
    open_records(engine, T0, 4)
    assert engine.flow() == FlowChange(pause=[T0])
    open_records(engine, T1, 4)  # the total (8) is above its resume level (5), not full
    finish_records(engine, T0, 2)
    assert engine.flow() == FlowChange(resume=[T0])


def test_a_partition_paused_by_the_total_that_reaches_its_own_cap_follows_its_own_cap() -> None:
    engine = new_engine(10, 0.5)
    engine.assign(T0, policy(max_in_flight=4))
    engine.assign(T1, policy())
    open_records(engine, T1, 10)
    assert sorted(engine.flow().pause) == [T0, T1]  # both by the total
    part = engine.partition(T0)
    assert part is not None and part.paused_by_total
    open_records(engine, T0, 4)  # records fetched before the pause took effect
    assert engine.flow() == FlowChange()
    assert not part.paused_by_total  # its own cap holds it now
    finish_records(engine, T1, 5)  # total 9: not full, not low
    finish_records(engine, T0, 1)
    assert engine.flow() == FlowChange()  # T0 at 3 of 4: not drained to half
    finish_records(engine, T0, 1)
    assert engine.flow() == FlowChange(resume=[T0])  # T1 waits for the total to drain
    finish_records(engine, T1, 2)  # total 5
    assert engine.flow() == FlowChange(resume=[T1])


def test_a_reassigned_partition_starts_unpaused() -> None:
    engine = new_engine(100)
    engine.assign(T0, policy(max_in_flight=1))
    open_records(engine, T0, 1)
    engine.flow()
    assert engine.paused_count == 1
    dropped = engine.drop(T0)
    assert dropped is not None and dropped.paused  # the caller learns it was paused
    engine.assign(T0, policy(max_in_flight=1))
    assert engine.paused_count == 0
    assert engine.flow() == FlowChange()


# -- queues: the dispatch window, depth, marks ----------------------------------------------


def test_select_never_sends_past_the_queue_window() -> None:
    engine = new_engine(floor=2)
    engine.assign(T0, policy())
    engine.assign(T1, policy())  # the same Celery queue: one window for both
    consume(engine, T0, 3)
    consume(engine, T1, 3)
    chosen = engine.select(0.0)
    assert len(chosen) == 2
    engine.started(chosen, 0.0)
    assert engine.queues()[""].in_flight == 2
    assert engine.select(0.0) == []
    assert engine.ready_partitions() == {T0, T1}  # starved by the window: looked at again
    engine.complete(chosen[0].task_id, 0.1)
    assert len(engine.select(0.1)) == 1


def test_each_queue_has_its_own_window() -> None:
    engine = new_engine(floor=2)
    engine.assign(T0, RoutePolicy(queue="fast"))
    engine.assign(T1, RoutePolicy(queue="slow"))
    consume(engine, T0, 3)
    consume(engine, T1, 3)
    chosen = engine.select(0.0)
    assert coordinates(chosen) == [(T0, 0), (T0, 1), (T1, 0), (T1, 1)]
    engine.started(chosen, 0.0)
    queues = engine.queues()
    assert sorted(queues) == ["fast", "slow"]
    assert (queues["fast"].in_flight, queues["slow"].in_flight) == (2, 2)
    queues.clear()  # a copy: the engine's own table is untouched
    assert sorted(engine.queues()) == ["fast", "slow"]


def test_the_window_follows_the_finishing_rate() -> None:
    engine = new_engine(floor=1)
    engine.assign(T0, policy())
    consume(engine, T0, 1000)
    for i in range(40):  # 2 s of one task at a time, each done in 10 ms
        now = i * 0.05
        chosen = engine.select(now)
        engine.started(chosen, now)
        assert engine.queues()[""].in_flight <= engine.queues()[""].window()
        for job in chosen:
            engine.complete(job.task_id, now + 0.01)
    queue = engine.queues()[""]
    assert queue.rate > 0
    assert queue.window() > 1  # grew from the floor with the measured rate
    assert queue.in_flight == 0


def test_observe_depth_of_a_queue_never_sent_to_is_ignored() -> None:
    engine = new_engine()
    engine.observe_depth("elsewhere", 0, 1.0)
    assert engine.queues() == {}


def test_dropping_a_partition_frees_its_tasks_room_in_the_queue_window() -> None:
    engine = new_engine(floor=2)
    engine.assign(T0, policy())
    engine.assign(T1, policy())
    consume(engine, T0, 2)
    engine.started(engine.select(0.0), 0.0)
    consume(engine, T1, 1)
    assert engine.select(0.0) == []  # the window is full
    engine.drop(T0)
    assert engine.queues()[""].in_flight == 0
    assert coordinates(engine.select(0.0)) == [(T1, 0)]  # T1 was kept ready meanwhile


def send_and_finish(engine: WorkEngine[None], tp: TP, now: float) -> None:
    """One record of ``tp`` sent at ``now`` and finished half a second later."""
    consume(engine, tp, 1)
    (job,) = engine.select(now)
    engine.started([job], now)
    assert engine.complete(job.task_id, now + 0.5) is job


def test_taken_marks_are_pruned_to_what_tasks_in_flight_can_ask() -> None:
    engine = new_engine()
    engine.assign(T0, policy())
    engine.assign(T1, RoutePolicy(queue="other"))  # an old task of another queue...
    engine.assign(STRAY, None)
    consume(engine, T1, 1)
    engine.started(engine.select(0.0), 0.0)
    queue_peak = 0
    for i in range(3000):  # every completion marks the tasks before it taken
        send_and_finish(engine, T0, 1.0 + i)
        queue = engine.queues()[""]
        queue_peak = max(queue_peak, queue.marks)
        assert queue.marks <= 2 * queue.in_flight + 1025  # ...does not pin this queue's marks
    # marks pile up to the slack, then are pruned: far fewer than the 3000 completions
    assert queue_peak >= 1024
    assert engine.queues()[""].marks < 1024
    assert engine.queues()["other"].in_flight == 1


def test_taken_marks_stay_proportional_while_an_old_task_is_in_flight() -> None:
    """A long task in flight must not pin every mark made after it was sent."""
    engine = new_engine()
    engine.assign(T0, policy())
    engine.assign(T1, policy())
    consume(engine, T1, 1)
    (old,) = engine.select(0.0)
    engine.started([old], 0.0)  # a long task: seq 0, in flight throughout
    for i in range(3000):
        send_and_finish(engine, T0, 1.0 + i)
        queue = engine.queues()[""]
        assert queue.marks <= 2 * queue.in_flight + 1025
    assert engine.queues()[""].taken_at(old.seq) == 1.5  # and its own mark is kept


def test_rewound_tells_a_truncated_log_from_new_records() -> None:
    engine = new_engine()
    assert not engine.rewound(T0, 0)  # not owned
    epoch = engine.assign(T0, policy())
    assert not engine.rewound(T0, 0)  # nothing delivered yet
    assert engine.open(T0, 10, 0.0) == epoch
    assert engine.rewound(T0, 3)
    assert engine.rewound(T0, 10)
    assert not engine.rewound(T0, 11)
    assert not engine.rewound(T0, 50)


# -- sizes and ownership ----------------------------------------------------------------------


def test_sizes_follow_the_work() -> None:
    engine = new_engine()
    assert (engine.open_total, engine.in_flight, engine.waiting_count, engine.paused_count) == (
        0,
        0,
        0,
        0,
    )
    engine.assign(T0, policy(max_in_flight=2))
    engine.assign(T1, policy())
    consume(engine, T0, 3)
    consume(engine, T1, 1)
    engine.started(engine.select(0.0), 0.0)
    assert (engine.open_total, engine.in_flight, engine.waiting_count) == (4, 3, 1)
    assert engine.in_flight_of([T0]) == 2
    assert engine.in_flight_of([T1, STRAY]) == 1
    assert engine.in_flight_of([]) == 0
    assert sorted(engine.partitions()) == [T0, T1]
    dropped = engine.drop(T0)
    assert dropped is not None and len(dropped.jobs) == 2 and len(dropped.waiting) == 1
    assert (engine.open_total, engine.in_flight, engine.waiting_count) == (1, 1, 0)


def test_owns_checks_the_epoch_only_when_given() -> None:
    engine = new_engine()
    assert not engine.owns(T0)
    epoch = engine.assign(T0, policy())
    assert engine.owns(T0)
    assert engine.owns(T0, epoch)
    assert not engine.owns(T0, epoch + 1)
    assert engine.partition(T0) is not None
    assert engine.partition(T1) is None


def test_defaults() -> None:
    engine: WorkEngine[None] = WorkEngine()
    assert engine.limits == Limits(max_in_flight_total=10_000, resume_ratio=0.5)
    assert RoutePolicy() == RoutePolicy(Ordering.UNORDERED, 1000, 300.0, 2)
    engine.assign(T0, RoutePolicy())
    part = engine.partition(T0)
    assert part is not None
    assert (part.cap, part.room(), part.paused, part.open_count) == (1000, 1000, False, 0)


# -- vocabulary -------------------------------------------------------------------------------


def test_task_state_parse_known_unknown_and_non_str() -> None:
    assert TaskState.parse("SUCCESS") is TaskState.SUCCESS
    assert TaskState.parse("RETRY") is TaskState.RETRY
    assert TaskState.parse("success") is None  # states are upper case
    assert TaskState.parse("BOGUS") is None
    assert TaskState.parse(None) is None
    assert TaskState.parse(3) is None
    assert TaskState.parse(b"SUCCESS") is None


def test_task_state_final() -> None:
    assert {state for state in TaskState if state.final} == {
        TaskState.SUCCESS,
        TaskState.FAILURE,
        TaskState.REVOKED,
    }
    # every final state but success maps to a dead-letter reason and an outcome
    assert FAILED == {
        TaskState.FAILURE: (Reason.TASK_FAILED, Outcome.FAILURE),
        TaskState.REVOKED: (Reason.TASK_REVOKED, Outcome.REVOKED),
    }


def test_words_are_their_string_values() -> None:
    assert default_dlq_topic("orders") == "orders.dlq"
    assert Ordering("key") is Ordering.KEY
    assert {"no_route": 1}[Reason.NO_ROUTE] == 1  # a metric label or header as it is
    assert f"{Outcome.TIMEOUT}" == "timeout"
