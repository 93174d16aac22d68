"""How waiting jobs become batches (bridge/core/batches.py)."""

from __future__ import annotations

from collections import deque
from typing import Any

from bridge.core.batches import take_batches
from bridge.core.jobs import Job
from bridge.core.ordering import PartitionGate
from bridge.core.policy import BatchPolicy
from bridge.core.vocabulary import Ordering


def waiting(keys: list[bytes | None]) -> deque[Job[Any]]:
    return deque(Job(("t", 0), i, key, 1, f"id-{i}", None) for i, key in enumerate(keys))


def offsets(batches: list[list[Job[Any]]]) -> list[list[int]]:
    return [[job.offset for job in batch] for batch in batches]


def test_max_bytes_closes_a_batch_and_a_record_larger_than_it_goes_alone() -> None:
    sizes = {0: 400, 1: 400, 2: 400, 3: 5000, 4: 10}
    jobs = waiting([None] * 5)
    policy = BatchPolicy(max_records=10, max_bytes=1000)
    batches = take_batches(
        Ordering.UNORDERED, PartitionGate(), jobs, 10, policy, sizes.__getitem__, waited=True
    )
    assert offsets(batches) == [[0, 1], [2], [3], [4]]


def test_unordered_takes_whole_batches_and_leaves_a_partial_one_until_it_waited() -> None:
    jobs = waiting([None] * 7)
    policy = BatchPolicy(max_records=3)
    batches = take_batches(
        Ordering.UNORDERED, PartitionGate(), jobs, 10, policy, lambda _: 0, waited=False
    )
    assert offsets(batches) == [[0, 1, 2], [3, 4, 5]]
    assert [job.offset for job in jobs] == [6]


def test_room_bounds_the_batches() -> None:
    jobs = waiting([None] * 9)
    batches = take_batches(
        Ordering.UNORDERED, PartitionGate(), jobs, 2, BatchPolicy(3), lambda _: 0, waited=True
    )
    assert offsets(batches) == [[0, 1, 2], [3, 4, 5]]
    assert (
        take_batches(Ordering.UNORDERED, PartitionGate(), jobs, 0, BatchPolicy(3), len, True) == []
    )


def test_key_batches_skip_busy_keys_and_never_let_a_key_overtake_itself() -> None:
    gate = PartitionGate()
    gate.started(b"a")
    jobs = waiting([b"a", b"b", b"a", b"c", b"b"])
    batches = take_batches(Ordering.KEY, gate, jobs, 5, BatchPolicy(10), lambda _: 0, waited=True)
    assert offsets(batches) == [[1, 3, 4]]  # both b records, in order, and c; a is busy
    assert [job.offset for job in jobs] == [0, 2]


def test_partition_batches_go_one_at_a_time() -> None:
    gate = PartitionGate()
    jobs = waiting([None] * 4)
    first = take_batches(Ordering.PARTITION, gate, jobs, 5, BatchPolicy(3), lambda _: 0, True)
    assert offsets(first) == [[0, 1, 2]]
    gate.started(None)
    assert take_batches(Ordering.PARTITION, gate, jobs, 5, BatchPolicy(3), lambda _: 0, True) == []


def test_the_engine_sends_a_batch_as_one_job_with_its_members() -> None:
    from bridge.core.engine import WorkEngine
    from bridge.core.policy import Limits, RoutePolicy

    engine: WorkEngine[None] = WorkEngine(Limits())
    tp = ("t", 0)
    epoch = engine.assign(tp, RoutePolicy(batch=BatchPolicy(max_records=2)))
    for offset in range(2):
        engine.open(tp, offset, 0.0)
        engine.enqueue(Job(tp, offset, None, epoch, f"id-{offset}", None))
    (batch,) = engine.select(0.0)
    assert [job.offset for job in batch.parts()] == [0, 1]
    assert batch.task_id == "id-0+2"  # the default id: the first record's, and the size


def test_a_partial_batch_waits_for_max_wait_and_then_goes_without_a_new_record() -> None:
    from bridge.core.engine import WorkEngine
    from bridge.core.policy import Limits, RoutePolicy

    engine: WorkEngine[None] = WorkEngine(Limits())
    tp = ("t", 0)
    epoch = engine.assign(tp, RoutePolicy(batch=BatchPolicy(max_records=5, max_wait=1.0)))
    for offset in range(2):
        engine.open(tp, offset, 0.0)
        engine.enqueue(Job(tp, offset, None, epoch, f"id-{offset}", None))
    assert engine.select(0.5) == []  # two of five, 0.5 s of 1 s waited: not yet
    assert engine.select(0.9) == []  # asked again with no new event: still looking
    (batch,) = engine.select(1.0)  # max_wait reached: the partial batch goes
    assert [job.offset for job in batch.parts()] == [0, 1]


def _engine_with_batches(ordering: Ordering = Ordering.UNORDERED, records: int = 10) -> Any:
    from bridge.core.engine import WorkEngine
    from bridge.core.policy import Limits, RoutePolicy

    engine: WorkEngine[None] = WorkEngine(Limits())
    tp = ("t", 0)
    policy = RoutePolicy(ordering=ordering, batch=BatchPolicy(max_records=10, max_wait=1.0))
    epoch = engine.assign(tp, policy)
    for offset in range(records):
        engine.open(tp, offset, 0.0)
        engine.enqueue(Job(tp, offset, bytes([offset % 2]), epoch, f"id-{offset}", None))
    return engine


def test_a_batch_an_earlier_owner_sent_is_formed_again_exactly_before_any_new_one() -> None:
    """The earlier owner sent records 0-6 as batch "old" at max_wait; this owner sees 0-9 at
    once. Its first batch is "old" with 0-6 again (watched, not sent twice), then 7-9."""
    engine = _engine_with_batches()
    (first,) = engine.select(0.0)
    assert [job.offset for job in first.parts()] == list(range(10))  # what it would send
    engine.remember_batch(first, "old", frozenset(range(7)))
    engine.put_back([first])
    (again,) = engine.select(0.0)
    assert again.task_id == "old"
    assert [job.offset for job in again.parts()] == list(range(7))
    engine.started([again], 0.0)
    assert engine.select(0.5) == []  # 7-9: a partial batch, not due before max_wait
    (rest,) = engine.select(1.0)
    assert [job.offset for job in rest.parts()] == [7, 8, 9]


def test_a_remembered_batch_waits_for_its_records_not_yet_consumed() -> None:
    engine = _engine_with_batches(records=5)
    (first,) = engine.select(1.0)  # 0-4, at max_wait
    engine.remember_batch(first, "old", frozenset(range(8)))  # it held 0-7
    engine.put_back([first])
    assert engine.select(5.0) == []  # 5-7 not consumed yet: nothing goes, nothing new
    tp, epoch = first.tp, first.epoch
    for offset in range(5, 8):
        engine.open(tp, offset, 5.0)
        engine.enqueue(Job(tp, offset, None, epoch, f"id-{offset}", None))
    (again,) = engine.select(5.0)
    assert (again.task_id, [job.offset for job in again.parts()]) == ("old", list(range(8)))


def test_remembered_records_that_ended_on_intake_do_not_hold_the_batch_back() -> None:
    engine = _engine_with_batches(records=3)
    (first,) = engine.select(1.0)
    engine.remember_batch(first, "gone", frozenset({0}))
    engine.remember_batch(first, "old", frozenset({1, 2, 3}))  # 3 was dead-lettered on intake
    engine.remember_batch(first, "old", frozenset({1, 2, 3}))  # told twice: kept once
    engine.put_back([first])
    assert engine.finish(first.tp, 3, first.epoch) is False  # never opened here...
    engine.open(first.tp, 3, 1.0)
    assert engine.finish(first.tp, 3, first.epoch)  # ...ended without a job
    (gone, old) = engine.select(1.0), None
    assert [job.task_id for job in gone] == ["gone"]
    engine.started(gone, 1.0)
    (old,) = engine.select(1.0)
    assert (old.task_id, [job.offset for job in old.parts()]) == ("old", [1, 2])


def test_a_remembered_batch_keeps_the_route_ordering() -> None:
    engine = _engine_with_batches(Ordering.PARTITION, records=4)
    (first,) = engine.select(1.0)
    engine.remember_batch(first, "a", frozenset({0, 1}))
    engine.remember_batch(first, "b", frozenset({2, 3}))
    engine.put_back([first])
    (a,) = engine.select(1.0)
    engine.started([a], 1.0)
    assert engine.select(1.0) == []  # partition ordering: b waits for a
    engine.complete("a", 1.0)
    (b,) = engine.select(1.0)
    assert b.task_id == "b"


def test_a_remembered_batch_waits_while_a_key_it_holds_is_busy() -> None:
    engine = _engine_with_batches(Ordering.KEY, records=4)
    (first,) = engine.select(1.0)
    engine.remember_batch(first, "a", frozenset({0}))  # key 0
    engine.remember_batch(first, "b", frozenset({2}))  # key 0 again
    engine.put_back([first])
    (a,) = engine.select(1.0)
    engine.started([a], 1.0)
    assert engine.select(1.0) == []
    engine.complete("a", 1.0)
    (b,) = engine.select(1.0)
    assert b.task_id == "b"


def test_a_remembered_batch_whose_records_all_ended_is_dropped_and_new_batches_go() -> None:
    engine = _engine_with_batches(records=3)
    (first,) = engine.select(1.0)
    engine.put_back([first])
    tp, epoch = first.tp, first.epoch
    engine.open(tp, 3, 1.0)
    assert engine.finish(tp, 3, epoch)  # dead-lettered on intake: no job
    engine.remember_batch(first, "ended", frozenset({3}))
    (batch,) = engine.select(1.0)
    assert [job.offset for job in batch.parts()] == [0, 1, 2]
    assert engine.partition(tp).remembered == []
