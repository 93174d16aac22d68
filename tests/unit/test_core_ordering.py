"""The ordering gate of a partition: who may start, per mode. Property-tested."""

from __future__ import annotations

import random
from collections import deque

from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.core.engine import WorkEngine
from bridge.core.jobs import Job
from bridge.core.ordering import PartitionGate
from bridge.core.policy import RoutePolicy
from bridge.core.vocabulary import TP, Ordering

T0: TP = ("t", 0)


def jobs(keys: list[bytes | None]) -> deque[Job[None]]:
    return deque(Job(T0, offset, key, 1, f"t{offset}", None) for offset, key in enumerate(keys))


def offsets(chosen: deque[Job[None]] | list[Job[None]]) -> list[int]:
    return [job.offset for job in chosen]


def test_unordered_takes_up_to_room_in_offset_order() -> None:
    gate, waiting = PartitionGate(), jobs([b"a", b"a", b"b"])
    assert offsets(gate.select(Ordering.UNORDERED, waiting, 2)) == [0, 1]
    assert offsets(waiting) == [2]


def test_unordered_runs_one_key_many_times_at_once() -> None:
    gate, waiting = PartitionGate(), jobs([b"a", b"a"])
    for job in gate.select(Ordering.UNORDERED, waiting, 5):
        gate.started(job.key)
    assert (gate.running, gate.busy[b"a"]) == (2, 2)
    gate.finished(b"a")
    assert (gate.running, gate.busy[b"a"]) == (1, 1)
    gate.finished(b"a")
    assert (gate.running, dict(gate.busy)) == (0, {})  # no idle key is kept


def test_partition_mode_runs_one_at_a_time() -> None:
    gate, waiting = PartitionGate(), jobs([b"a", b"b", b"c"])
    first = gate.select(Ordering.PARTITION, waiting, 10)
    assert offsets(first) == [0]
    gate.started(first[0].key)
    assert gate.select(Ordering.PARTITION, waiting, 10) == []
    gate.finished(first[0].key)
    assert offsets(gate.select(Ordering.PARTITION, waiting, 10)) == [1]
    assert offsets(waiting) == [2]


def test_key_mode_parallel_across_keys_serial_within_a_key() -> None:
    gate, waiting = PartitionGate(), jobs([b"a", b"a", b"b", None, None, b"c"])
    chosen = gate.select(Ordering.KEY, waiting, 10)
    assert offsets(chosen) == [0, 2, 3, 5]  # the first of each key, nulls as one key
    assert offsets(waiting) == [1, 4]


def test_key_mode_a_busy_key_blocks_its_later_records_even_with_room() -> None:
    gate, waiting = PartitionGate(), jobs([b"a", b"b"])
    gate.started(b"a")
    assert offsets(gate.select(Ordering.KEY, waiting, 10)) == [1]
    assert offsets(waiting) == [0]


def test_key_mode_stops_at_room_and_keeps_offset_order() -> None:
    gate, waiting = PartitionGate(), jobs([b"a", b"b", b"c", b"a"])
    assert offsets(gate.select(Ordering.KEY, waiting, 2)) == [0, 1]
    assert offsets(waiting) == [2, 3]


def test_room_zero_or_nothing_waiting_selects_nothing_in_every_mode() -> None:
    for mode in Ordering:
        waiting = jobs([b"a"])
        assert PartitionGate().select(mode, waiting, 0) == []
        assert PartitionGate().select(mode, waiting, -1) == []
        assert len(waiting) == 1
        assert PartitionGate().select(mode, deque(), 5) == []


def test_a_reassigned_partition_starts_with_an_idle_gate() -> None:
    """The gate lives in the partition's work: a revoke drops its busy keys with it."""
    engine: WorkEngine[None] = WorkEngine()
    policy = RoutePolicy(ordering=Ordering.KEY)
    epoch = engine.assign(T0, policy)
    engine.open(T0, 0, 0.0)
    job = Job(T0, 0, b"a", epoch, "t0", None)
    engine.enqueue(job)
    engine.started(engine.select(0.0), 0.0)
    part = engine.partition(T0)
    assert part is not None and part.gate.busy[b"a"] == 1
    engine.drop(T0)
    epoch = engine.assign(T0, policy)
    part = engine.partition(T0)
    assert part is not None
    assert (part.gate.running, dict(part.gate.busy)) == (0, {})
    engine.open(T0, 0, 1.0)
    again = Job(T0, 0, b"a", epoch, "t0", None)
    assert engine.enqueue(again)
    assert engine.select(0.0) == [again]


@settings(max_examples=300, deadline=None, database=None)
@given(
    keys=st.lists(st.sampled_from([b"a", b"b", b"c", None]), min_size=1, max_size=40),
    mode=st.sampled_from(list(Ordering)),
    room=st.integers(min_value=1, max_value=6),
    finish_order=st.randoms(use_true_random=False),
)
def test_simulated_runs_keep_the_promises_of_each_mode(
    keys: list[bytes | None], mode: Ordering, room: int, finish_order: random.Random
) -> None:
    """Run everything to completion with random finishing order; check each mode's promise."""
    gate, waiting = PartitionGate(), jobs(keys)
    running: list[Job[None]] = []
    started: list[Job[None]] = []
    while waiting or running:
        for job in gate.select(mode, waiting, room - len(running)):
            if mode is Ordering.KEY:  # never two records of one key at once
                assert all(r.key != job.key for r in running)
            if mode is Ordering.PARTITION:
                assert not running
            gate.started(job.key)
            running.append(job)
            started.append(job)
        assert len(running) <= room
        assert gate.running == len(running)
        assert running, "the gate must make progress when nothing runs"
        done = running.pop(finish_order.randrange(len(running)))
        gate.finished(done.key)
    assert sorted(offsets(started)) == list(range(len(keys)))  # all ran, once
    assert (gate.running, dict(gate.busy)) == (0, {})
    if mode is not Ordering.UNORDERED:
        by_key: dict[bytes | None, list[int]] = {}
        for job in started:
            by_key.setdefault(job.key if mode is Ordering.KEY else b"", []).append(job.offset)
        assert all(order == sorted(order) for order in by_key.values())
