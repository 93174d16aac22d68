"""InFlightTable: dispatched tasks by id, counted per partition, with lazily deleted deadlines."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.dispatcher import TaskRequest
from bridge.inflight import InFlightTable, Job
from bridge.records import Record
from bridge.settings import Route

ROUTE = Route(topic="orders", task="tasks.examples.process_order", task_timeout=10)


def make_job(
    task_id: str, topic: str = "orders", partition: int = 0, offset: int = 0, timeout: float = 10
) -> Job:
    route = ROUTE if timeout == 10 else Route(topic=topic, task=ROUTE.task, task_timeout=timeout)
    record = Record(
        topic=topic,
        partition=partition,
        offset=offset,
        key=None,
        value=b"{}",
        headers=(),
        timestamp_ms=1_700_000_000_000,
    )
    request = TaskRequest(
        task_id=task_id,
        name=route.task,
        args=[{}],
        kwargs={},
        queue=None,
        headers={},
        label=record.coordinates(),
    )
    return Job(record=record, route=route, epoch=1, request=request)


def test_counts_per_partition_and_len() -> None:
    table = InFlightTable()
    for i in range(3):
        table.add(make_job(f"a{i}", partition=0, offset=i), now=0.0)
    for i in range(2):
        table.add(make_job(f"b{i}", partition=1, offset=i), now=0.0)
    table.add(make_job("c0", topic="payments", partition=0), now=0.0)
    assert table.count(("orders", 0)) == 3
    assert table.count(("orders", 1)) == 2
    assert table.count(("payments", 0)) == 1
    assert table.count(("orders", 9)) == 0
    assert len(table) == 6
    assert sorted(table.ids()) == ["a0", "a1", "a2", "b0", "b1", "c0"]
    table.pop("a1")
    assert table.count(("orders", 0)) == 2
    table.pop("b0")
    table.pop("b1")
    assert table.count(("orders", 1)) == 0
    assert len(table) == 3


def test_add_sets_first_dispatch_and_deadline() -> None:
    table = InFlightTable()
    job = make_job("t1")
    table.add(job, now=100.0)
    assert job.first_dispatch == 100.0
    assert job.deadline == 110.0
    assert job.dispatches == 1
    assert table.get("t1") is job


def test_re_adding_same_job_counts_a_dispatch_not_a_record() -> None:
    table = InFlightTable()
    job = make_job("t1")
    table.add(job, now=0.0)
    table.add(job, now=12.0)  # re-dispatch after a timeout
    assert len(table) == 1
    assert table.count(("orders", 0)) == 1
    assert job.dispatches == 2
    assert job.first_dispatch == 0.0
    assert job.deadline == 22.0
    assert job.attempts == 2


def test_attempts_counts_retries_seen() -> None:
    job = make_job("t1")
    assert job.attempts == 1  # never dispatched still counts one run
    job.dispatches = 1
    job.retries_seen = 3
    assert job.attempts == 4


def test_expired_returns_each_job_once_per_deadline() -> None:
    table = InFlightTable()
    early = make_job("early", offset=0)
    late = make_job("late", offset=1)
    table.add(early, now=0.0)
    table.add(late, now=5.0)
    assert table.expired(9.99) == []
    assert table.expired(10.0) == [early]
    assert table.expired(10.0) == []
    assert table.expired(14.0) == []
    assert table.expired(1000.0) == [late]
    assert table.expired(2000.0) == []
    # expiry reports, it does not remove
    assert len(table) == 2


def test_expired_orders_by_deadline() -> None:
    table = InFlightTable()
    jobs = [make_job(f"t{i}", offset=i) for i in range(5)]
    for job, start in zip(jobs, [4.0, 0.0, 3.0, 1.0, 2.0], strict=True):
        table.add(job, now=start)
    assert [job.request.task_id for job in table.expired(100.0)] == ["t1", "t3", "t4", "t2", "t0"]


def test_extend_re_arms_the_deadline() -> None:
    table = InFlightTable()
    job = make_job("t1")
    table.add(job, now=0.0)
    table.extend(job, now=5.0)  # progress (STARTED/RETRY) seen
    assert job.deadline == 15.0
    assert table.expired(10.0) == []  # the old deadline no longer fires
    assert table.expired(15.0) == [job]
    table.extend(job, now=20.0)
    assert table.expired(29.0) == []
    assert table.expired(30.0) == [job]
    assert table.expired(31.0) == []


def test_pop_removes() -> None:
    table = InFlightTable()
    job = make_job("t1")
    table.add(job, now=0.0)
    assert table.pop("t1") is job
    assert table.pop("t1") is None
    assert table.get("t1") is None
    assert "t1" not in table.ids()
    assert table.expired(100.0) == []
    assert len(table) == 0


def test_pop_then_add_again_tracks_afresh() -> None:
    table = InFlightTable()
    job = make_job("t1")
    table.add(job, now=0.0)
    table.pop("t1")
    again = make_job("t1")
    table.add(again, now=50.0)
    assert again.first_dispatch == 50.0
    assert table.count(("orders", 0)) == 1
    assert table.expired(10.0) == []  # the first life's deadline is dead
    assert table.expired(60.0) == [again]


def test_drop_partitions() -> None:
    table = InFlightTable()
    kept = make_job("keep", partition=0)
    gone = [make_job(f"gone{i}", partition=1, offset=i) for i in range(3)]
    other = make_job("other", topic="payments", partition=1)
    for job in [kept, *gone, other]:
        table.add(job, now=0.0)
    dropped = table.drop_partitions({("orders", 1), ("payments", 1)})
    assert {job.request.task_id for job in dropped} == {"gone0", "gone1", "gone2", "other"}
    assert table.count(("orders", 1)) == 0
    assert table.count(("payments", 1)) == 0
    assert table.count(("orders", 0)) == 1
    assert table.ids() == ["keep"]
    assert table.expired(100.0) == [kept]
    assert table.drop_partitions({("orders", 1)}) == []


def test_expired_once_even_when_extended_twice_at_same_instant() -> None:
    table = InFlightTable()
    job = make_job("t1")
    table.add(job, now=0.0)
    table.extend(job, now=0.0)  # e.g. STARTED reported within the same clock tick
    assert table.expired(10.0) == [job]


def heap_bound(live: int) -> int:
    """Compaction runs when the heap outgrows twice the live jobs plus a fixed slack."""
    return 2 * (live + 1) + 1025


def test_heap_stays_proportional_to_live_jobs_when_jobs_finish() -> None:
    table = InFlightTable()
    for i in range(20_000):
        table.add(make_job(f"t{i}", offset=i), now=float(i))
        table.pop(f"t{i}")
        assert len(table._deadlines) <= heap_bound(len(table))
    assert len(table) == 0
    assert len(table._deadlines) <= heap_bound(0)


def test_heap_stays_proportional_to_live_jobs_when_jobs_are_re_armed() -> None:
    table = InFlightTable()
    jobs = [make_job(f"t{i}", offset=i) for i in range(50)]
    for job in jobs:
        table.add(job, now=0.0)
    for step in range(1, 400):
        for job in jobs:
            table.extend(job, now=float(step))
    assert len(table._deadlines) <= heap_bound(len(jobs))
    # compaction kept the live deadlines: every job expires exactly once
    assert sorted(j.request.task_id for j in table.expired(10_000.0)) == sorted(
        j.request.task_id for j in jobs
    )


@settings(max_examples=150, deadline=None, database=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["add", "extend", "pop", "expire"]),
            st.integers(min_value=0, max_value=7),
            st.integers(min_value=1, max_value=6),
        ),
        max_size=80,
    )
)
def test_expired_matches_a_simple_model(ops: list[tuple[str, int, int]]) -> None:
    """Time strictly increases (same-instant re-arming has its own test above)."""
    table = InFlightTable()
    jobs = {i: make_job(f"t{i}", partition=i % 2, offset=i, timeout=5) for i in range(8)}
    deadlines: dict[int, float] = {}  # live job -> armed deadline
    now = 0.0
    for kind, index, advance in ops:
        now += advance
        if kind == "add" or (kind == "extend" and index in deadlines):
            if kind == "add" and index not in deadlines:
                jobs[index] = make_job(f"t{index}", partition=index % 2, offset=index, timeout=5)
            getattr(table, kind)(jobs[index], now)
            deadlines[index] = now + 5
        elif kind == "pop":
            assert (table.pop(f"t{index}") is not None) == (index in deadlines)
            deadlines.pop(index, None)
        elif kind == "expire":
            due = sorted(i for i, d in deadlines.items() if d <= now)
            got = [job.request.task_id for job in table.expired(now)]
            assert len(got) == len(set(got))
            assert sorted(got) == sorted(f"t{i}" for i in due)
            for i in due:
                deadlines[i] = float("inf")  # reported; fires again only when re-armed
        assert len(table) == len(deadlines)
        for partition in (0, 1):
            assert table.count(("orders", partition)) == sum(
                1 for i in deadlines if i % 2 == partition
            )
