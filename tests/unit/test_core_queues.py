"""QueueProgress: a Celery queue's dispatch window and which of its tasks workers have taken.

The engine-level behaviour (select within the window, loss only once taken) is in
``test_core_engine.py`` and ``test_core_deadlines.py``; these check the measurements.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.core.queues import ALPHA, BUCKET, SERVICE_MEMORY, QueueProgress


def queue(floor: int = 4, cap: int = 1000, max_queue_time: float = 5.0) -> QueueProgress:
    return QueueProgress(max_queue_time, floor, cap)


def test_sequence_numbers_and_tasks_in_flight() -> None:
    progress = queue()
    assert [progress.sent(), progress.sent(), progress.sent()] == [0, 1, 2]
    assert progress.in_flight == 3
    assert progress.resequence() == 3  # a re-send joins the back, still one task in flight
    assert (progress.in_flight, progress.next_seq) == (3, 4)
    for _ in range(3):
        progress.left()
    assert progress.in_flight == 0
    progress.left()  # never below zero
    assert progress.in_flight == 0
    assert progress.room() == 4


def test_the_window_is_the_floor_until_a_rate_is_measured() -> None:
    progress = queue(floor=4)
    assert (progress.rate, progress.window()) == (0.0, 4)
    progress.tick(0.0)  # the first tick only starts the first measurement
    progress.tick(BUCKET - 0.01)
    assert (progress.rate, progress.window()) == (0.0, 4)
    progress.sent()
    assert progress.room() == 3


def test_the_rate_is_a_moving_average_of_finishes_per_bucket() -> None:
    progress = queue(floor=1, max_queue_time=5.0)
    progress.tick(0.0)
    for _ in range(10):
        progress.finished(progress.sent(), 0.1, 0.2)
    progress.tick(BUCKET)
    first = ALPHA * 10 / BUCKET
    assert progress.rate == pytest.approx(first)
    # rate * (max_queue_time + the shortest service time seen)
    assert progress.window() == int(first * (5.0 + 0.1))
    progress.tick(2 * BUCKET)  # an empty bucket halves the average, records no service time
    assert progress.rate == pytest.approx((1 - ALPHA) * first)
    assert progress.window() == int((1 - ALPHA) * first * (5.0 + 0.1))


def test_the_window_uses_the_shortest_service_time_and_stays_within_floor_and_cap() -> None:
    progress = queue(floor=2, cap=30, max_queue_time=1.0)
    progress.tick(0.0)
    for took in (3.0, 0.5, 2.0):
        progress.finished(progress.sent(), took, 0.1)
    progress.tick(BUCKET)
    assert progress.rate == pytest.approx(ALPHA * 3 / BUCKET)
    assert progress.window() == max(2, int(progress.rate * (1.0 + 0.5)))
    for _ in range(100):
        progress.finished(progress.sent(), 0.01, BUCKET + 0.1)
    progress.tick(2 * BUCKET)
    assert progress.window() == 30  # the cap
    assert progress.room() == 30 - progress.in_flight  # negative: the window shrank below it


def test_a_long_idle_queue_skips_ahead_and_forgets_its_rate() -> None:
    progress = queue(floor=3)
    progress.tick(0.0)
    for _ in range(50):
        progress.finished(progress.sent(), 0.01, 0.1)
    progress.tick(BUCKET)
    assert progress.window() > 3
    progress.tick(BUCKET * (SERVICE_MEMORY + 2) + 1000.0)  # idle far longer than remembered
    assert (progress.rate, progress.window()) == (0.0, 3)
    # the next measurement starts at the last tick, not 2000 buckets back
    progress.finished(progress.sent(), 0.01, BUCKET * (SERVICE_MEMORY + 2) + 1000.1)
    progress.tick(BUCKET * (SERVICE_MEMORY + 3) + 1000.0)
    assert progress.rate == pytest.approx(ALPHA * 1 / BUCKET)


def test_a_short_pause_keeps_counting_bucket_by_bucket() -> None:
    progress = queue(floor=1)
    progress.tick(0.0)
    for _ in range(8):
        progress.finished(progress.sent(), 0.01, 0.1)
    progress.tick(3 * BUCKET)  # one full bucket, then two empty ones
    assert progress.rate == pytest.approx(ALPHA * (1 - ALPHA) ** 2 * 8 / BUCKET)


def test_taken_marks_from_finishes_and_depth() -> None:
    progress = queue()
    seqs = [progress.sent() for _ in range(5)]
    assert all(progress.taken_at(seq) is None for seq in seqs)
    progress.observe_depth(5, 1.0)  # all still queued
    assert progress.marks == 0
    progress.observe_depth(3, 2.0)  # the first two were taken
    assert [progress.taken_at(seq) for seq in seqs] == [2.0, 2.0, None, None, None]
    progress.finished(seqs[3], 0.5, 3.0)  # everything before it was taken by then
    assert [progress.taken_at(seq) for seq in seqs] == [2.0, 2.0, 3.0, None, None]
    progress.observe_depth(4, 4.0)  # says less than known: changes nothing
    progress.finished(seqs[1], 0.5, 4.0)
    assert progress.marks == 2
    assert progress.taken_at(seqs[2]) == 3.0
    progress.observe_depth(0, 5.0)
    assert progress.taken_at(seqs[4]) == 5.0


def test_forget_before_drops_only_marks_no_later_task_can_ask_about() -> None:
    progress = queue()
    for _ in range(10):
        progress.sent()
    for depth, now in ((9, 1.0), (8, 2.0), (7, 3.0), (6, 4.0)):
        progress.observe_depth(depth, now)
    assert progress.marks == 4  # seqs 0, 1, 2, 3 taken at 1, 2, 3, 4
    progress.forget_before(2)
    assert progress.marks == 2
    assert (progress.taken_at(2), progress.taken_at(3), progress.taken_at(4)) == (3.0, 4.0, None)
    progress.forget_before(progress.next_seq)
    assert progress.marks == 0


def test_keep_only_keeps_the_marks_tasks_in_flight_ask_about() -> None:
    progress = queue()
    for _ in range(10):
        progress.sent()
    for depth, now in ((9, 1.0), (8, 2.0), (7, 3.0), (6, 4.0), (3, 5.0)):
        progress.observe_depth(depth, now)  # seqs 0, 1, 2, 3 and 6 taken
    progress.keep_only([1, 2, 4, 9])
    assert progress.marks == 3  # 1 and 2 have their own; 4 asks the mark of 6; 9 has none
    assert [progress.taken_at(seq) for seq in (1, 2, 4, 9)] == [2.0, 3.0, 5.0, None]
    progress.keep_only([])
    assert progress.marks == 0


@settings(max_examples=200, deadline=None, database=None)
@given(
    depths=st.lists(st.integers(min_value=0, max_value=40), max_size=40),
    data=st.data(),
)
def test_keep_only_answers_taken_at_as_before_for_the_kept_tasks(
    depths: list[int], data: st.DataObject
) -> None:
    progress = queue()
    for _ in range(40):
        progress.sent()
    for now, depth in enumerate(depths):
        progress.observe_depth(depth, float(now))
    seqs = data.draw(st.lists(st.integers(min_value=0, max_value=45), max_size=12))
    before = [progress.taken_at(seq) for seq in seqs]
    progress.keep_only(seqs)
    assert [progress.taken_at(seq) for seq in seqs] == before
    assert progress.marks <= len(set(seqs))
