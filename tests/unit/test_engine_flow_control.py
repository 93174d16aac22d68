"""Flow control in the engine: per-partition resume, the dispatch window that follows the
workers, and loss detection that never mistakes a slow queue for lost tasks (issue 12)."""

from __future__ import annotations

from bridge.core.engine import WorkEngine
from bridge.core.jobs import Job
from bridge.core.policy import Limits, RoutePolicy
from bridge.core.queues import BUCKET, QueueProgress
from bridge.core.vocabulary import TP

POLICY = RoutePolicy(max_in_flight=1000, task_timeout=10.0, max_redispatch=1)


def fill(engine: WorkEngine[None], tp: TP, count: int, now: float = 0.0) -> list[Job[None]]:
    part = engine.partition(tp)
    assert part is not None
    jobs = []
    for _ in range(count):
        offset = part.offsets.next_offset or 0
        epoch = engine.open(tp, offset, now)
        assert epoch is not None
        job = Job(tp, offset, None, epoch, f"{tp[0]}-{tp[1]}-{offset}", None)
        assert engine.enqueue(job)
        jobs.append(job)
    return jobs


def test_a_partition_paused_at_its_own_cap_resumes_when_it_drained_whatever_the_others_hold():
    engine: WorkEngine[None] = WorkEngine(Limits(max_in_flight_total=100, resume_ratio=0.5))
    hot, cold = ("t", 0), ("t", 1)
    engine.assign(hot, RoutePolicy(max_in_flight=10))
    engine.assign(cold, RoutePolicy(max_in_flight=1000))
    hot_jobs = fill(engine, hot, 10)
    fill(engine, cold, 60)  # the others hold more than resume_ratio of the total
    assert engine.flow().pause == [hot]
    engine.started(engine.select(0.0), 0.0)
    for job in hot_jobs[:6]:
        engine.complete(job.task_id, 1.0)
        engine.finish(job.tp, job.offset, job.epoch)
    change = engine.flow()
    assert change.resume == [hot], "a hot partition stayed paused behind the others' records"


def test_a_partition_paused_by_the_total_cap_waits_for_the_total_to_drain():
    engine: WorkEngine[None] = WorkEngine(Limits(max_in_flight_total=20, resume_ratio=0.5))
    a, b = ("t", 0), ("t", 1)
    engine.assign(a, RoutePolicy(max_in_flight=100))
    engine.assign(b, RoutePolicy(max_in_flight=100))
    fill(engine, a, 5)
    b_jobs = fill(engine, b, 15)
    assert sorted(engine.flow().pause) == [a, b]
    engine.started(engine.select(0.0), 0.0)
    for job in b_jobs[:4]:  # 16 open: not full, not yet down to half
        engine.complete(job.task_id, 1.0)
        engine.finish(job.tp, job.offset, job.epoch)
    assert engine.flow().resume == []
    for job in b_jobs[4:10]:  # 10 open: half of the total cap
        engine.complete(job.task_id, 1.0)
        engine.finish(job.tp, job.offset, job.epoch)
    assert sorted(engine.flow().resume) == [a, b]


def test_the_window_grows_while_workers_keep_up_and_settles_near_max_queue_time():
    queue = QueueProgress(max_queue_time=5.0, floor=4, cap=10_000)
    assert queue.window() == 4
    now, service = 0.0, 0.05  # workers that finish each task in 50 ms, 2 at a time
    windows = []
    for _ in range(40):
        # a closed loop: the window's tasks run two at a time, 40 per second at most
        finished = min(queue.window(), int(2 / service * BUCKET))
        for _ in range(finished):
            seq = queue.sent()
            queue.left()
            queue.finished(seq, service, now)
        now += BUCKET
        queue.tick(now)
        windows.append(queue.window())
    assert windows[0] > 4  # grows from the floor as soon as a rate is measured
    # settles at rate * (max_queue_time + service): 40/s * 5.05 s
    assert 150 <= windows[-1] <= 250, windows


def test_the_window_falls_back_to_the_floor_when_nothing_finishes():
    queue = QueueProgress(max_queue_time=5.0, floor=8, cap=10_000)
    for n in range(100):
        queue.finished(queue.sent(), 0.01, n * 0.01)
    queue.tick(1.0)
    assert queue.window() > 8
    queue.tick(60.0)  # workers stopped
    assert queue.window() == 8


def test_a_task_counts_as_taken_once_a_later_one_finished_or_the_broker_queue_is_shorter():
    queue = QueueProgress(max_queue_time=5.0, floor=8, cap=100)
    first, second, third = queue.sent(), queue.sent(), queue.sent()
    assert queue.taken_at(first) is None
    queue.observe_depth(3, 1.0)  # all three still queued
    assert queue.taken_at(first) is None
    queue.observe_depth(2, 2.0)  # the first was taken
    assert (queue.taken_at(first), queue.taken_at(second)) == (2.0, None)
    queue.finished(third, 0.5, 3.0)  # the last finished: everything before it was taken
    assert (queue.taken_at(second), queue.taken_at(third)) == (3.0, None)
    queue.forget_before(second)
    assert queue.taken_at(second) == 3.0


def test_queued_tasks_behind_slow_workers_are_never_declared_lost():
    engine: WorkEngine[None] = WorkEngine(Limits(window_floor=50))
    tp = ("t", 0)
    engine.assign(tp, POLICY)
    fill(engine, tp, 50)
    sent = engine.select(0.0)
    engine.started(sent, 0.0)
    engine.observe_depth("", 48, 1.0)  # workers took two; 48 wait in the broker
    for now in (10.5, 30.0, 300.0):
        expiry = engine.expire(now)
        lost = {job.seq for job in [*expiry.resend, *expiry.timed_out]}
        # only the two a worker took and that did not finish in task_timeout can be lost
        assert lost <= {0, 1}, "a queued task was declared lost"
    engine.observe_depth("", 48, 301.0)  # nothing moves: an outage, not lost tasks
    assert {job.seq for job in engine.expire(400.0).resend} <= {0, 1}
    assert engine.in_flight == 50 - len(engine.expire(500.0).timed_out)


def test_a_task_taken_by_a_worker_that_died_is_lost_after_task_timeout():
    engine: WorkEngine[None] = WorkEngine(Limits(window_floor=10))
    tp = ("t", 0)
    engine.assign(tp, POLICY)
    fill(engine, tp, 2)
    engine.started(engine.select(0.0), 0.0)
    engine.observe_depth("", 0, 1.0)  # both taken (then the worker was killed)
    assert engine.expire(10.5).resend == []  # 10 s from when they were taken, not sent
    lost = engine.expire(11.0).resend
    assert len(lost) == 2
    for job in lost:
        engine.resent(job, 11.0)
    assert all(not job.started and job.dispatches == 2 for job in lost)
    # the copies are queued again: not lost while they wait
    engine.observe_depth("", 2, 12.0)
    assert engine.expire(30.0).timed_out == []


def test_a_started_task_counts_from_its_start():
    engine: WorkEngine[None] = WorkEngine(Limits(window_floor=10))
    tp = ("t", 0)
    engine.assign(tp, POLICY)
    (job,) = fill(engine, tp, 1)
    engine.started(engine.select(0.0), 0.0)
    engine.progress(job.task_id, 50.0)  # STARTED after 50 s in the queue
    assert engine.expire(59.0).resend == []
    assert engine.expire(60.0).resend == [job]


def test_max_queue_time_zero_turns_the_window_off() -> None:
    queue = QueueProgress(max_queue_time=0, floor=4, cap=100)
    assert queue.window() == 100  # no measurement needed: only the caps bound it


def test_a_lost_task_the_caller_holds_stays_in_flight_and_comes_back_each_timeout() -> None:
    engine: WorkEngine[None] = WorkEngine(Limits(window_floor=10))
    tp = ("t", 0)
    engine.assign(tp, POLICY)
    (job,) = fill(engine, tp, 1)
    engine.started(engine.select(0.0), 0.0)
    engine.progress(job.task_id, 1.0)
    for now in (11.0, 21.0):
        expiry = engine.expire(now, hold=lambda j: j is job)
        assert (expiry.held, expiry.resend, expiry.timed_out) == ([job], [], [])
        assert engine.job(job.task_id) is job and job.dispatches == 1


def test_partitions_share_a_queue_s_window_fairly() -> None:
    engine: WorkEngine[None] = WorkEngine(Limits(window_floor=32))
    busy, late = ("t", 0), ("t", 1)
    engine.assign(busy, POLICY)
    engine.assign(late, POLICY)
    fill(engine, busy, 100)
    fill(engine, late, 100)
    sent = engine.select(0.0)
    per_partition = {tp: sum(1 for job in sent if job.tp == tp) for tp in (busy, late)}
    assert per_partition == {busy: 16, late: 16}, "one partition took the whole window"
    assert engine.ready_partitions() == {busy, late}  # both still have records to send


def test_committable_again_offers_points_that_did_not_move() -> None:
    engine: WorkEngine[None] = WorkEngine()
    tp = ("t", 0)
    engine.assign(tp, POLICY)
    (job,) = fill(engine, tp, 1)
    engine.finish(tp, job.offset, job.epoch)
    engine.mark_committed(tp, 1)
    assert engine.committable() == {}
    assert engine.committable(again=True) == {tp: 1}
    assert engine.committable([("t", 9)], again=True) == {}


# == byte budgets (issue 10): memory is capped by record bytes, not only by record count ==


def open_sized(engine: WorkEngine[None], tp: TP, sizes: list[int]) -> list[Job[None]]:
    part = engine.partition(tp)
    assert part is not None
    jobs = []
    for size in sizes:
        offset = part.offsets.next_offset or 0
        epoch = engine.open(tp, offset, 0.0, size)
        assert epoch is not None
        job = Job(tp, offset, None, epoch, f"{tp[0]}-{tp[1]}-{offset}", None)
        engine.enqueue(job)
        jobs.append(job)
    return jobs


def finish(engine: WorkEngine[None], jobs: list[Job[None]]) -> None:
    engine.started(engine.select(0.0), 0.0)
    for job in jobs:
        engine.complete(job.task_id, 1.0)
        engine.finish(job.tp, job.offset, job.epoch)


def test_a_partition_pauses_at_its_byte_budget_and_resumes_below_half_of_it() -> None:
    engine: WorkEngine[None] = WorkEngine(Limits(resume_ratio=0.5))
    tp = ("t", 0)
    engine.assign(tp, RoutePolicy(max_in_flight=1000, max_in_flight_bytes=1000))
    jobs = open_sized(engine, tp, [300, 300, 300])
    assert engine.flow().pause == []  # 900 bytes: under the budget
    jobs += open_sized(engine, tp, [300])
    assert engine.flow().pause == [tp]  # 1200 bytes, only 4 records
    finish(engine, jobs[:2])
    assert engine.flow().resume == []  # 600 bytes: not yet half
    finish(engine, jobs[2:3])
    assert engine.flow().resume == [tp]
    assert engine.open_bytes == 300


def test_the_total_byte_budget_pauses_every_partition() -> None:
    engine: WorkEngine[None] = WorkEngine(Limits(max_in_flight_bytes_total=1000))
    a, b = ("t", 0), ("t", 1)
    engine.assign(a, RoutePolicy())
    engine.assign(b, RoutePolicy())
    a_jobs = open_sized(engine, a, [300, 300])
    b_jobs = open_sized(engine, b, [500])
    assert sorted(engine.flow().pause) == [a, b]
    finish(engine, b_jobs)
    assert engine.flow().resume == []  # 600 bytes left: not yet half of the total budget
    finish(engine, a_jobs[:1])
    assert sorted(engine.flow().resume) == [a, b]


def test_one_record_bigger_than_the_budget_passes_alone_and_nothing_is_stuck() -> None:
    engine: WorkEngine[None] = WorkEngine(Limits())
    tp = ("t", 0)
    engine.assign(tp, RoutePolicy(max_in_flight_bytes=100))
    jobs = open_sized(engine, tp, [5000])
    assert engine.flow().pause == [tp]
    assert [job.offset for job in engine.select(0.0)] == [0]  # it is still sent
    engine.started(jobs, 0.0)
    engine.complete(jobs[0].task_id, 1.0)
    engine.finish(tp, 0, jobs[0].epoch)
    assert engine.flow().resume == [tp]
    assert engine.open_bytes == 0


def test_a_revoke_releases_the_partition_s_bytes() -> None:
    engine: WorkEngine[None] = WorkEngine(Limits())
    tp = ("t", 0)
    engine.assign(tp, RoutePolicy())
    open_sized(engine, tp, [10, 20])
    engine.drop(tp)
    assert engine.open_bytes == 0


def test_a_held_route_sends_nothing_until_its_time_and_other_routes_go_on() -> None:
    engine: WorkEngine[None] = WorkEngine(Limits())
    limited, free = ("a", 0), ("b", 0)
    engine.assign(limited, RoutePolicy(name="a"))
    engine.assign(free, RoutePolicy(name="b"))
    fill(engine, limited, 2)
    fill(engine, free, 2)
    engine.hold("a", until=5.0)
    assert {job.tp for job in engine.select(1.0)} == {free}
    assert engine.select(4.9) == []
    assert [job.tp for job in engine.select(5.0)] == [limited, limited]
