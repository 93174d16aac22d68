"""Tasks in flight: the WorkEngine's table by task id, counted per partition, and its deadlines.

The deadlines sit in a heap with lazy deletion (:class:`Deadlines`); :meth:`WorkEngine.expire`
turns the due ones into re-sends or time-outs.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.core.deadlines import Deadlines
from bridge.core.engine import WorkEngine
from bridge.core.jobs import Job
from bridge.core.policy import Limits, RoutePolicy
from bridge.core.vocabulary import TP

T0: TP = ("orders", 0)
T1: TP = ("orders", 1)
P0: TP = ("payments", 0)
POLICY = RoutePolicy(task_timeout=10.0, max_redispatch=2)
#: queue windows are not the subject here: never the limit
LIMITS = Limits(window_floor=10_000)


def engine_with(*tps: TP, policy: RoutePolicy = POLICY) -> tuple[WorkEngine[None], dict[TP, int]]:
    engine: WorkEngine[None] = WorkEngine(LIMITS)
    return engine, {tp: engine.assign(tp, policy) for tp in tps}


def make_job(task_id: str, tp: TP = T0, offset: int = 0, epoch: int = 1) -> Job[None]:
    return Job(tp, offset, None, epoch, task_id, None)


def start(
    engine: WorkEngine[None],
    epochs: dict[TP, int],
    task_id: str,
    tp: TP,
    now: float,
    running: bool = True,
) -> Job[None]:
    """Open, enqueue, select and send one record; returns its job, now in flight.

    ``running``: a worker reports STARTED at once, so the task's timeout runs from ``now``
    (a task not known to be taken by a worker is never lost: see the queue tests below).
    """
    part = engine.partition(tp)
    assert part is not None
    offset = part.offsets.next_offset or 0
    assert engine.open(tp, offset, now) == epochs[tp]
    job = make_job(task_id, tp, offset, epochs[tp])
    assert engine.enqueue(job)
    assert engine.select(now) == [job]
    engine.started([job], now)
    if running:
        assert engine.progress(task_id, now) is job
    return job


def ids(jobs: list[Job[None]]) -> list[str]:
    return [job.task_id for job in jobs]


# -- the table ------------------------------------------------------------------------------


def test_counts_per_partition_and_in_flight() -> None:
    engine, epochs = engine_with(T0, T1, P0)
    for i in range(3):
        start(engine, epochs, f"a{i}", T0, 0.0)
    for i in range(2):
        start(engine, epochs, f"b{i}", T1, 0.0)
    start(engine, epochs, "c0", P0, 0.0)
    assert engine.in_flight_of([T0]) == 3
    assert engine.in_flight_of([T1]) == 2
    assert engine.in_flight_of([P0]) == 1
    assert engine.in_flight_of([T0, P0]) == 4
    assert engine.in_flight_of([("orders", 9)]) == 0  # not owned
    assert engine.in_flight == 6
    assert sorted(task_id for tp in (T0, T1, P0) for task_id in _jobs(engine, tp)) == [
        "a0",
        "a1",
        "a2",
        "b0",
        "b1",
        "c0",
    ]
    assert engine.complete("a1", 1.0) is not None
    assert engine.in_flight_of([T0]) == 2
    engine.complete("b0", 1.0)
    engine.complete("b1", 1.0)
    assert engine.in_flight_of([T1]) == 0
    assert engine.in_flight == 3


def _jobs(engine: WorkEngine[None], tp: TP) -> list[str]:
    part = engine.partition(tp)
    assert part is not None
    return list(part.jobs)


def test_started_sets_first_dispatch_and_deadline() -> None:
    engine, epochs = engine_with(T0)
    job = start(engine, epochs, "t1", T0, 100.0, running=False)
    assert job.first_dispatch == job.last_dispatch == 100.0
    assert job.deadline == 110.0
    assert job.dispatches == 1
    assert job.attempts == 1
    assert (job.seq, job.started) == (0, False)  # the first task sent to its queue
    second = start(engine, epochs, "t2", T0, 101.0, running=False)
    assert second.seq == 1
    assert engine.job("t1") is job
    assert engine.job("nope") is None


def test_starting_a_job_already_in_flight_counts_nothing() -> None:
    """started() twice (e.g. the send was already done by an earlier owner) is one record."""
    engine, epochs = engine_with(T0)
    job = start(engine, epochs, "t1", T0, 0.0)
    engine.started([job], 5.0)
    assert engine.in_flight == 1
    assert job.dispatches == 1
    assert job.first_dispatch == 0.0
    assert job.deadline == 10.0


def test_resent_counts_a_dispatch_not_a_record() -> None:
    engine, epochs = engine_with(T0)
    job = start(engine, epochs, "t1", T0, 0.0)
    engine.resent(job, 12.0)  # re-dispatch after a timeout
    assert engine.in_flight == 1
    assert engine.in_flight_of([T0]) == 1
    assert job.dispatches == 2
    assert (job.first_dispatch, job.last_dispatch) == (0.0, 12.0)
    assert job.deadline == 22.0
    assert job.attempts == 2
    # it joins the back of its queue, not yet started again
    assert (job.seq, job.started) == (1, False)


def test_resent_of_a_job_no_longer_in_flight_changes_nothing() -> None:
    engine, epochs = engine_with(T0)
    job = start(engine, epochs, "t1", T0, 0.0)
    engine.complete("t1", 1.0)
    engine.resent(job, 5.0)
    assert (job.dispatches, job.deadline, job.last_dispatch, job.seq) == (1, 10.0, 0.0, 0)
    assert job.started
    assert engine.job("t1") is None
    assert engine.expire(1000.0).resend == []
    # a different job object under the same task id is not the one in flight either
    again = start(engine, epochs, "t1", T0, 20.0)
    engine.resent(job, 25.0)
    assert (again.dispatches, again.deadline) == (1, 30.0)
    assert (job.dispatches, job.deadline) == (1, 10.0)


def test_attempts_counts_retries_seen() -> None:
    job = make_job("t1")
    assert job.attempts == 1  # never dispatched still counts one run
    job.dispatches = 1
    job.retries_seen = 3
    assert job.attempts == 4


def test_progress_with_retry_counts_a_retry_and_re_arms() -> None:
    engine, epochs = engine_with(T0)
    job = start(engine, epochs, "t1", T0, 0.0, running=False)
    assert engine.progress("t1", 4.0) is job  # STARTED
    assert (job.retries_seen, job.deadline, job.started) == (0, 14.0, True)
    assert engine.progress("t1", 6.0, retry=True) is job  # RETRY
    assert (job.retries_seen, job.deadline, job.attempts) == (1, 16.0, 2)
    assert engine.progress("unknown", 7.0, retry=True) is None


def test_expire_reports_each_deadline_once_and_re_arms_for_a_resend() -> None:
    engine, epochs = engine_with(T0)
    early = start(engine, epochs, "early", T0, 0.0)
    late = start(engine, epochs, "late", T0, 5.0)
    assert engine.expire(9.99).resend == []
    assert engine.expire(10.0).resend == [early]
    assert early.deadline == 20.0  # re-armed: one fresh window for the re-send
    assert engine.expire(10.0).resend == []
    assert engine.expire(14.0).resend == []
    assert engine.expire(15.0).resend == [late]
    assert engine.expire(19.99).resend == []
    # both windows passed: each is reported once, in deadline order
    assert engine.expire(1000.0).resend == [early, late]
    assert (early.deadline, late.deadline) == (1010.0, 1010.0)
    # a resend is still in flight, not released
    assert engine.in_flight == 2
    assert engine.job("early") is early


def test_expire_times_out_once_re_sends_are_used_up() -> None:
    engine, epochs = engine_with(T0, policy=RoutePolicy(task_timeout=10.0, max_redispatch=1))
    job = start(engine, epochs, "t1", T0, 0.0)
    first = engine.expire(10.0)
    assert (first.resend, first.timed_out) == ([job], [])
    engine.resent(job, 10.0)
    assert job.dispatches == 2
    engine.progress("t1", 10.0)  # a worker started the re-sent task at once
    second = engine.expire(20.0)
    assert (second.resend, second.timed_out) == ([], [job])
    assert engine.job("t1") is None  # released, to be dead-lettered
    assert engine.in_flight == 0
    assert engine.ready_partitions() == {T0}  # its room is free again
    assert engine.expire(1000.0).timed_out == []


def test_expire_without_re_sends_times_out_at_the_first_deadline() -> None:
    engine, epochs = engine_with(T0, policy=RoutePolicy(task_timeout=10.0, max_redispatch=0))
    job = start(engine, epochs, "t1", T0, 0.0)
    expiry = engine.expire(10.0)
    assert (expiry.resend, expiry.timed_out) == ([], [job])
    assert engine.complete("t1", 1.0) is None


def test_expire_orders_by_deadline() -> None:
    engine, epochs = engine_with(T0)
    for i, begin in enumerate([4.0, 0.0, 3.0, 1.0, 2.0]):
        start(engine, epochs, f"t{i}", T0, begin)
    assert ids(engine.expire(100.0).resend) == ["t1", "t3", "t4", "t2", "t0"]


def test_progress_re_arms_the_deadline() -> None:
    engine, epochs = engine_with(T0)
    job = start(engine, epochs, "t1", T0, 0.0)
    engine.progress("t1", 5.0)  # STARTED seen
    assert job.deadline == 15.0
    assert engine.expire(10.0).resend == []  # the old deadline no longer fires
    assert engine.expire(15.0).resend == [job]
    engine.progress("t1", 20.0)
    assert engine.expire(29.0).resend == []
    assert engine.expire(30.0).resend == [job]
    assert engine.expire(31.0).resend == []


def test_complete_removes() -> None:
    engine, epochs = engine_with(T0)
    job = start(engine, epochs, "t1", T0, 0.0)
    assert engine.complete("t1", 1.0) is job
    assert engine.complete("t1", 1.0) is None
    assert engine.job("t1") is None
    assert _jobs(engine, T0) == []
    expiry = engine.expire(100.0)
    assert (expiry.resend, expiry.timed_out) == ([], [])
    assert engine.in_flight == 0


def test_complete_then_start_again_tracks_afresh() -> None:
    engine, epochs = engine_with(T0)
    start(engine, epochs, "t1", T0, 0.0)
    engine.complete("t1", 1.0)
    again = start(engine, epochs, "t1", T0, 50.0)
    assert again.first_dispatch == 50.0
    assert engine.in_flight_of([T0]) == 1
    assert engine.expire(10.0).resend == []  # the first life's deadline is dead
    assert engine.expire(60.0).resend == [again]


def test_drop_forgets_the_jobs_of_a_partition() -> None:
    engine, epochs = engine_with(T0, T1, ("payments", 1))
    kept = start(engine, epochs, "keep", T0, 0.0)
    for i in range(3):
        start(engine, epochs, f"gone{i}", T1, 0.0)
    start(engine, epochs, "other", ("payments", 1), 0.0)
    dropped = [engine.drop(T1), engine.drop(("payments", 1))]
    assert {task_id for part in dropped if part for task_id in part.jobs} == {
        "gone0",
        "gone1",
        "gone2",
        "other",
    }
    assert engine.in_flight_of([T1, ("payments", 1)]) == 0
    assert engine.in_flight_of([T0]) == 1
    assert engine.in_flight == 1
    assert engine.job("gone0") is None
    assert engine.complete("gone1", 1.0) is None  # a late report of a dropped task
    assert engine.expire(100.0).resend == [kept]  # dropped deadlines expire lazily, unseen
    assert engine.drop(T1) is None


def test_expired_once_even_when_re_armed_twice_at_the_same_instant() -> None:
    engine, epochs = engine_with(T0)
    job = start(engine, epochs, "t1", T0, 0.0)
    engine.progress("t1", 0.0)  # e.g. STARTED reported within the same clock tick
    assert engine.expire(10.0).resend == [job]


# -- lost only once taken: a task still in its Celery queue never times out ----------------


def test_a_task_still_in_its_queue_is_never_lost() -> None:
    engine, epochs = engine_with(T0)
    job = start(engine, epochs, "t1", T0, 0.0, running=False)
    for now in (10.0, 100.0, 10_000.0):
        expiry = engine.expire(now)
        assert (expiry.resend, expiry.timed_out) == ([], [])
        assert job.deadline == now + 10.0  # asked about again one timeout later
    assert engine.job("t1") is job
    assert job.dispatches == 1


def test_a_task_behind_the_messages_still_queued_is_not_taken() -> None:
    engine, epochs = engine_with(T0)
    start(engine, epochs, "t1", T0, 0.0, running=False)
    engine.observe_depth("", 1, 5.0)  # one message waits: the one we sent
    assert engine.expire(100.0).resend == []


def test_a_task_taken_by_a_worker_is_lost_one_timeout_after_it_was_taken() -> None:
    engine, epochs = engine_with(T0)
    job = start(engine, epochs, "t1", T0, 0.0, running=False)
    engine.observe_depth("", 0, 12.0)  # the queue is empty: every task sent was taken
    assert engine.expire(15.0).resend == []  # due at 10, but taken at 12: lost at 22
    assert job.deadline == 22.0
    assert engine.expire(21.9).resend == []
    assert engine.expire(22.0).resend == [job]


def test_a_later_task_finishing_shows_the_earlier_ones_were_taken() -> None:
    engine, epochs = engine_with(T0)
    first = start(engine, epochs, "a", T0, 0.0, running=False)
    start(engine, epochs, "b", T0, 1.0, running=False)
    engine.complete("b", 3.0)  # a Celery queue is FIFO: "a" was taken before "b" finished
    assert engine.expire(12.9).resend == []
    assert engine.expire(13.0).resend == [first]


def test_a_re_sent_task_is_taken_again_only_from_the_back_of_the_queue() -> None:
    engine, epochs = engine_with(T0)
    job = start(engine, epochs, "t1", T0, 0.0, running=False)
    engine.observe_depth("", 0, 1.0)
    assert engine.expire(11.0).resend == [job]
    engine.resent(job, 11.0)
    assert engine.expire(21.0).resend == []  # the earlier "taken" was of its first send
    assert job.deadline == 31.0
    engine.observe_depth("", 0, 25.0)
    assert engine.expire(31.0).resend == []
    assert engine.expire(35.0).resend == [job]


def test_retry_later_asks_again_at_the_given_time() -> None:
    """The re-send of a lost task failed (broker away): expire() offers it again later."""
    engine, epochs = engine_with(T0)
    job = start(engine, epochs, "t1", T0, 0.0)
    assert engine.expire(10.0).resend == [job]
    engine.retry_later(job, 12.0)
    assert job.deadline == 12.0
    assert engine.expire(11.9).resend == []
    assert engine.expire(12.0).resend == [job]
    assert job.dispatches == 1  # nothing was sent
    assert job.deadline == 22.0
    engine.complete("t1", 13.0)
    engine.retry_later(job, 50.0)  # no longer in flight: nothing to ask about
    assert job.deadline == 22.0
    assert engine.expire(50.0).resend == []


# -- Deadlines alone ------------------------------------------------------------------------


def test_deadlines_due_in_deadline_order_each_once() -> None:
    current = {"a": 3.0, "b": 1.0, "c": 2.0, "d": 9.0}

    def is_current(task_id: str, deadline: float) -> bool:
        return current.get(task_id) == deadline

    heap = Deadlines()
    for task_id, deadline in current.items():
        heap.arm(task_id, deadline, len(current), is_current)
    heap.arm("b", 1.0, len(current), is_current)  # re-armed at the same instant
    assert len(heap) == 5
    assert heap.due(0.5, is_current) == []
    assert heap.due(3.0, is_current) == ["b", "c", "a"]
    assert heap.due(3.0, is_current) == []
    assert len(heap) == 1


def test_deadlines_skip_entries_that_are_no_longer_current() -> None:
    current = {"a": 1.0, "b": 2.0}

    def is_current(task_id: str, deadline: float) -> bool:
        return current.get(task_id) == deadline

    heap = Deadlines()
    heap.arm("a", 1.0, 2, is_current)
    heap.arm("b", 2.0, 2, is_current)
    del current["a"]  # finished
    current["b"] = 5.0  # re-armed later
    heap.arm("b", 5.0, 1, is_current)
    assert heap.due(4.0, is_current) == []  # both stale entries popped, nothing reported
    assert len(heap) == 1
    assert heap.due(5.0, is_current) == ["b"]


def heap_bound(live: int) -> int:
    """Compaction runs when the heap outgrows twice the live tasks plus a fixed slack."""
    return 2 * (live + 1) + 1025


def test_deadlines_compaction_keeps_only_current_entries() -> None:
    current = {"live": 7.0}

    def is_current(task_id: str, deadline: float) -> bool:
        return current.get(task_id) == deadline

    heap = Deadlines()
    heap.arm("live", 7.0, 1, is_current)
    for i in range(1025):  # stale entries up to 2 * live + 1024: kept, for now
        heap.arm(f"gone{i}", float(i), 1, is_current)
    assert len(heap) == 1026
    heap.arm("gone", 0.0, 1, is_current)  # one more: compacted to the current entries
    assert len(heap) == 1
    assert heap.due(100.0, is_current) == ["live"]


def test_heap_stays_proportional_to_live_tasks_when_tasks_finish() -> None:
    engine, epochs = engine_with(T0)
    peak = 0
    for i in range(20_000):
        start(engine, epochs, f"t{i}", T0, float(i))
        engine.complete(f"t{i}", float(i))
        peak = max(peak, len(engine._deadlines))
        assert len(engine._deadlines) <= heap_bound(engine.in_flight)
    assert engine.in_flight == 0
    assert len(engine._deadlines) <= heap_bound(0)
    assert peak > 1024  # compaction did run (the heap grew to the slack, then shrank)


def test_heap_stays_proportional_to_live_tasks_when_tasks_are_re_armed() -> None:
    engine, epochs = engine_with(T0, policy=RoutePolicy(max_in_flight=50, task_timeout=10.0))
    jobs = [start(engine, epochs, f"t{i}", T0, 0.0) for i in range(50)]
    for step in range(1, 400):
        for job in jobs:
            engine.progress(job.task_id, float(step))
        assert len(engine._deadlines) <= heap_bound(len(jobs))
    # compaction kept the live deadlines: every task expires exactly once
    assert sorted(ids(engine.expire(10_000.0).resend)) == sorted(ids(jobs))


# -- a model: start, progress, complete, expire (and re-send) in any order -------------------

MODEL_POLICY = RoutePolicy(task_timeout=5.0, max_redispatch=1)


def expire_against_the_model(
    engine: WorkEngine[None],
    now: float,
    deadlines: dict[int, float],
    dispatches: dict[int, int],
    resend: bool,
) -> None:
    """Expire; check the due tasks are reported once each, as re-sends or time-outs."""
    due = sorted(i for i, d in deadlines.items() if d <= now)
    expiry = engine.expire(now)
    got = ids(expiry.resend) + ids(expiry.timed_out)
    assert len(got) == len(set(got))
    assert sorted(got) == sorted(f"t{i}" for i in due)
    for i in due:
        if dispatches[i] > MODEL_POLICY.max_redispatch:
            assert f"t{i}" in ids(expiry.timed_out)
            del deadlines[i]
            continue
        assert f"t{i}" in ids(expiry.resend)
        deadlines[i] = now + 5
        if resend:
            job = engine.job(f"t{i}")
            assert job is not None
            engine.resent(job, now)
            engine.progress(job.task_id, now)  # and a worker starts it at once
            dispatches[i] += 1


@settings(max_examples=150, deadline=None, database=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["start", "progress", "complete", "expire"]),
            st.integers(min_value=0, max_value=7),
            st.integers(min_value=1, max_value=6),
        ),
        max_size=80,
    ),
    st.booleans(),
)
def test_expire_matches_a_simple_model(ops: list[tuple[str, int, int]], resend: bool) -> None:
    """Time strictly increases (same-instant re-arming has its own test above)."""
    engine: WorkEngine[None] = WorkEngine()
    tps = [T0, T1]
    epochs = {tp: engine.assign(tp, MODEL_POLICY) for tp in tps}
    deadlines: dict[int, float] = {}  # live task -> armed deadline
    dispatches: dict[int, int] = {}
    now = 0.0
    for kind, index, advance in ops:
        now += advance
        task_id = f"t{index}"
        if kind == "start" and index not in deadlines:
            start(engine, epochs, task_id, tps[index % 2], now)
            deadlines[index], dispatches[index] = now + 5, 1
        elif kind == "progress":
            assert (engine.progress(task_id, now) is not None) == (index in deadlines)
            if index in deadlines:
                deadlines[index] = now + 5
        elif kind == "complete":
            assert (engine.complete(task_id, now) is not None) == (index in deadlines)
            deadlines.pop(index, None)
        elif kind == "expire":
            expire_against_the_model(engine, now, deadlines, dispatches, resend)
        assert engine.in_flight == len(deadlines)
        for partition, tp in enumerate(tps):
            assert engine.in_flight_of([tp]) == sum(1 for i in deadlines if i % 2 == partition)
        for i, deadline in deadlines.items():
            job = engine.job(f"t{i}")
            assert job is not None
            assert (job.deadline, job.dispatches) == (deadline, dispatches[i])
