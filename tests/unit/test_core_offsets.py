"""Commit points: PartitionOffsets and the WorkEngine's offsets and epochs.

The commit point never passes unfinished work and never moves back (DESIGN semantics 1-2, 4);
a finish from an older assignment (epoch) changes nothing.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from bridge.core.engine import WorkEngine
from bridge.core.offsets import PartitionOffsets
from bridge.core.policy import RoutePolicy
from bridge.core.vocabulary import TP

T0: TP = ("orders", 0)
T1: TP = ("orders", 1)
POLICY = RoutePolicy()


def engine_with(*tps: TP) -> tuple[WorkEngine[None], dict[TP, int]]:
    engine: WorkEngine[None] = WorkEngine()
    return engine, {tp: engine.assign(tp, POLICY) for tp in tps}


def offsets_of(engine: WorkEngine[None], tp: TP) -> PartitionOffsets:
    part = engine.partition(tp)
    assert part is not None
    return part.offsets


def point(engine: WorkEngine[None], tp: TP) -> int | None:
    part = engine.partition(tp)
    return None if part is None else part.offsets.commit_point()


def open_count(engine: WorkEngine[None], tp: TP) -> int:
    part = engine.partition(tp)
    return 0 if part is None else part.open_count


# -- PartitionOffsets alone ----------------------------------------------------------------


def test_partition_offsets_alone() -> None:
    state = PartitionOffsets()
    assert state.commit_point() is None
    assert state.committable() is None
    assert state.oldest_open_since() is None
    assert state.add(7, 1.5)
    assert not state.add(6, 2.0)
    assert not state.add(7, 2.0)
    assert state.commit_point() == 7
    assert state.oldest_open_since() == 1.5
    assert state.finish(7)
    assert not state.finish(7)
    assert not state.finish(99)
    assert state.commit_point() == 8
    assert state.oldest_open_since() is None


def test_partition_offsets_committable_mark_and_unmark() -> None:
    state = PartitionOffsets()
    state.add(3, 0.0)
    assert state.committable() == 3  # nothing marked yet: the point is offered
    state.mark_committed(3)
    assert state.committable() is None  # not past what was marked
    state.mark_committed(1)  # a lower one never replaces a higher one
    assert state.committed == 3
    state.finish(3)
    assert state.committable() == 4
    state.mark_committed(4)
    state.unmark_committed(3)  # a failure of an older commit: the newer mark stands
    assert state.committed == 4
    assert state.committable() is None
    state.unmark_committed(4)  # the commit of 4 failed: offered again
    assert state.committed is None
    assert state.committable() == 4


# -- the engine: commit points across partitions and assignments ---------------------------


def test_commit_point_is_none_before_any_record() -> None:
    engine, _ = engine_with(T0)
    assert point(engine, T0) is None
    assert engine.committable() == {}
    assert offsets_of(engine, T0).oldest_open_since() is None


def test_commit_point_waits_for_lowest_open_offset_across_gaps() -> None:
    engine, epochs = engine_with(T0)
    epoch = epochs[T0]
    for offset, now in ((10, 1.0), (11, 2.0), (15, 3.0), (40, 4.0)):
        assert engine.open(T0, offset, now) == epoch
    assert point(engine, T0) == 10
    assert engine.finish(T0, 11, epoch)
    assert engine.finish(T0, 40, epoch)
    assert point(engine, T0) == 10
    assert offsets_of(engine, T0).oldest_open_since() == 1.0
    assert engine.finish(T0, 10, epoch)
    assert point(engine, T0) == 15
    assert offsets_of(engine, T0).oldest_open_since() == 3.0
    assert engine.finish(T0, 15, epoch)
    # nothing open: one past the highest offset seen, not past the gap
    assert point(engine, T0) == 41
    assert engine.committable() == {T0: 41}
    assert engine.open_total == 0


def test_open_refuses_offsets_not_beyond_what_was_seen_and_unowned_partitions() -> None:
    engine: WorkEngine[None] = WorkEngine()
    assert engine.open(T0, 0, 0.0) is None  # not assigned
    epoch = engine.assign(T0, POLICY)
    assert engine.open(T0, 5, 0.0) == epoch
    assert engine.open(T0, 5, 1.0) is None  # duplicate
    assert engine.open(T0, 3, 1.0) is None  # behind
    assert open_count(engine, T0) == 1
    assert engine.open_total == 1
    assert point(engine, T0) == 5


def test_finish_twice_or_unknown_offset_or_other_partition_is_false() -> None:
    engine, epochs = engine_with(T0)
    epoch = epochs[T0]
    engine.open(T0, 0, 0.0)
    engine.open(T0, 1, 0.0)
    assert engine.finish(T0, 1, epoch)
    assert not engine.finish(T0, 1, epoch)
    assert not engine.finish(T0, 7, epoch)
    assert not engine.finish(T1, 0, epoch)  # not owned
    assert engine.open_total == 1


def test_finish_with_stale_epoch_after_reassign_is_ignored() -> None:
    engine, epochs = engine_with(T0)
    old = epochs[T0]
    engine.open(T0, 5, 0.0)
    dropped = engine.drop(T0)
    assert dropped is not None
    assert list(dropped.offsets.open) == [5]
    assert engine.open_total == 0
    new = engine.assign(T0, POLICY)
    assert new != old
    assert engine.open(T0, 5, 1.0) == new  # redelivered to the new assignment
    assert not engine.finish(T0, 5, old)
    assert open_count(engine, T0) == 1
    assert point(engine, T0) == 5
    assert engine.finish(T0, 5, new)
    assert point(engine, T0) == 6


def test_committable_mark_and_unmark_committed() -> None:
    engine, epochs = engine_with(T0, T1)
    engine.mark_committed(T0, 100)  # what Kafka had committed before this assignment
    engine.open(T0, 100, 0.0)
    engine.open(T1, 0, 0.0)
    # T0's point (100) is not past what is already committed (100)
    assert engine.committable() == {T1: 0}
    engine.finish(T0, 100, epochs[T0])
    assert engine.committable() == {T0: 101, T1: 0}
    assert engine.committable([T1, ("other", 0)]) == {T1: 0}  # unowned ones are skipped
    engine.mark_committed(T0, 101)
    assert offsets_of(engine, T0).committed == 101
    engine.mark_committed(T0, 50)  # a lower one never replaces a higher one
    assert offsets_of(engine, T0).committed == 101
    assert engine.committable() == {T1: 0}
    engine.unmark_committed(T0, 101)  # that commit failed: the point is offered again
    assert engine.committable() == {T0: 101, T1: 0}


def test_commit_bookkeeping_of_an_unowned_partition_is_ignored() -> None:
    """A commit callback may arrive after the partition was revoked."""
    engine, _ = engine_with(T0)
    engine.mark_committed(T1, 5)
    engine.unmark_committed(T1, 5)
    assert engine.partitions() == [T0]
    assert engine.partition(T1) is None
    assert engine.committable([T1]) == {}


def test_drop_returns_open_offsets_in_order_and_forgets_partition() -> None:
    engine, epochs = engine_with(T0, T1)
    for offset in (2, 4, 8):
        engine.open(T0, offset, 0.0)
    engine.open(T1, 0, 0.0)
    engine.finish(T0, 4, epochs[T0])
    dropped = engine.drop(T0)
    assert dropped is not None
    assert list(dropped.offsets.open) == [2, 8]
    assert engine.drop(T0) is None
    assert not engine.owns(T0)
    assert engine.owns(T1, epochs[T1])
    assert not engine.owns(T1, epochs[T1] - 1)
    assert engine.partition(T0) is None
    assert engine.partitions() == [T1]
    assert engine.open_total == 1
    assert point(engine, T0) is None


def test_reassign_drops_earlier_state() -> None:
    engine, epochs = engine_with(T0)
    engine.mark_committed(T0, 3)
    engine.open(T0, 3, 0.0)
    engine.open(T0, 4, 0.0)
    epoch = engine.assign(T0, POLICY)
    assert epoch > epochs[T0]
    assert engine.open_total == 0
    assert open_count(engine, T0) == 0
    assert offsets_of(engine, T0).committed is None
    assert point(engine, T0) is None
    assert engine.open(T0, 3, 1.0) == epoch  # offsets seen before may be consumed again


def test_epochs_are_unique_across_partitions() -> None:
    engine: WorkEngine[None] = WorkEngine()
    epochs = [engine.assign(T0, POLICY), engine.assign(T1, POLICY), engine.assign(T0, None)]
    assert len(set(epochs)) == 3
    assert engine.owns(T0, epochs[2])
    assert not engine.owns(T0, epochs[0])
    assert not engine.owns(T0, epochs[1])  # T1's epoch is not T0's


# -- properties: one partition, random interleavings --------------------------------------

Op = tuple[str, int]


@st.composite
def interleavings(draw: st.DrawFn) -> tuple[list[int], list[Op]]:
    """Offsets with random gaps, and an op sequence: add in order, finish in any order, commit."""
    gaps = draw(st.lists(st.integers(min_value=1, max_value=50), min_size=1, max_size=60))
    start = draw(st.integers(min_value=0, max_value=10**12))
    offsets: list[int] = []
    current = start
    for gap in gaps:
        offsets.append(current)
        current += gap
    finish_order = draw(st.permutations(range(len(offsets))))
    ops: list[Op] = [("add", i) for i in range(len(offsets))]
    # insert each finish at a random place after its add; sprinkle commits
    for index in finish_order:
        position = ops.index(("add", index))
        at = draw(st.integers(min_value=position + 1, max_value=len(ops)))
        ops.insert(at, ("finish", index))
    commits = draw(st.lists(st.integers(min_value=0, max_value=len(ops)), max_size=20))
    for at in sorted(commits, reverse=True):
        ops.insert(at, ("commit", 0))
    return offsets, ops


@settings(max_examples=400, deadline=None, database=None)
@given(interleavings())
def test_commit_point_never_passes_open_and_never_moves_back(
    case: tuple[list[int], list[Op]],
) -> None:
    offsets, ops = case
    engine, epochs = engine_with(T0)
    epoch = epochs[T0]
    open_set: set[int] = set()
    highest: int | None = None
    last_point: int | None = None
    last_marked: int | None = None
    for step, (kind, index) in enumerate(ops):
        if kind == "add":
            assert engine.open(T0, offsets[index], float(step)) == epoch
            open_set.add(offsets[index])
            highest = offsets[index]
        elif kind == "finish":
            assert engine.finish(T0, offsets[index], epoch)
            open_set.discard(offsets[index])
        else:
            ready = engine.committable()
            if T0 in ready:
                assert last_marked is None or ready[T0] > last_marked
                engine.mark_committed(T0, ready[T0])
                last_marked = ready[T0]
        current = point(engine, T0)
        if highest is None:
            assert current is None
            continue
        assert current is not None
        if open_set:
            assert current == min(open_set)
        else:
            assert current == highest + 1
        assert all(current <= offset for offset in open_set)
        assert last_point is None or current >= last_point
        last_point = current
        assert open_count(engine, T0) == len(open_set) == engine.open_total
    assert point(engine, T0) == offsets[-1] + 1


@settings(max_examples=200, deadline=None, database=None)
@given(
    st.lists(st.integers(min_value=1, max_value=1000), min_size=1, max_size=40),
    st.data(),
)
def test_stale_epoch_finish_changes_nothing(gaps: list[int], data: st.DataObject) -> None:
    engine, epochs = engine_with(T0)
    offsets = []
    current = 0
    for gap in gaps:
        current += gap
        offsets.append(current)
        engine.open(T0, current, 0.0)
    epoch = engine.assign(T0, POLICY)
    for offset in offsets:
        engine.open(T0, offset, 1.0)
    before = (point(engine, T0), open_count(engine, T0), engine.open_total)
    victims = data.draw(st.lists(st.sampled_from(offsets), unique=True))
    stale_epoch = data.draw(st.sampled_from([0, epochs[T0], epoch + 1]))
    for offset in victims:
        assert not engine.finish(T0, offset, stale_epoch)
    assert (point(engine, T0), open_count(engine, T0), engine.open_total) == before


# -- stateful: several partitions, rebalances, failed commits, against a model --------------


@dataclass
class ModelPartition:
    epoch: int
    open: dict[int, float] = field(default_factory=dict)
    next_offset: int | None = None
    committed: int | None = None
    last_point: int | None = None

    def point(self) -> int | None:
        return min(self.open) if self.open else self.next_offset


PARTITIONS: list[TP] = [("orders", 0), ("orders", 1), ("payments", 0)]


class OffsetMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.engine: WorkEngine[None] = WorkEngine()
        self.model: dict[TP, ModelPartition] = {}
        self.clock = 0.0
        self.old_epochs: dict[TP, list[int]] = {tp: [] for tp in PARTITIONS}

    @initialize()
    def start(self) -> None:
        self.assign(PARTITIONS[0], None)

    def tick(self) -> float:
        self.clock += 1.0
        return self.clock

    @rule(
        tp=st.sampled_from(PARTITIONS),
        committed=st.none() | st.integers(min_value=0, max_value=200),
    )
    def assign(self, tp: TP, committed: int | None) -> None:
        if tp in self.model:
            self.old_epochs[tp].append(self.model[tp].epoch)
        epoch = self.engine.assign(tp, POLICY)
        assert all(epoch > old for olds in self.old_epochs.values() for old in olds)
        if committed is not None:  # what Kafka reported as committed for the new owner
            self.engine.mark_committed(tp, committed)
        self.model[tp] = ModelPartition(epoch=epoch, committed=committed)

    @precondition(lambda self: bool(self.model))
    @rule(data=st.data())
    def revoke(self, data: st.DataObject) -> None:
        tp = data.draw(st.sampled_from(sorted(self.model)))
        state = self.model.pop(tp)
        self.old_epochs[tp].append(state.epoch)
        part = self.engine.drop(tp)
        assert part is not None
        assert list(part.offsets.open) == sorted(state.open)
        assert not self.engine.owns(tp)

    @precondition(lambda self: bool(self.model))
    @rule(data=st.data(), gap=st.integers(min_value=1, max_value=20))
    def add(self, data: st.DataObject, gap: int) -> None:
        tp = data.draw(st.sampled_from(sorted(self.model)))
        state = self.model[tp]
        if state.next_offset is None:
            offset = data.draw(st.integers(min_value=0, max_value=150))
        else:
            offset = state.next_offset - 1 + gap
        now = self.tick()
        assert self.engine.open(tp, offset, now) == state.epoch
        state.open[offset] = now
        state.next_offset = offset + 1

    @precondition(lambda self: any(s.next_offset is not None for s in self.model.values()))
    @rule(data=st.data())
    def add_stale(self, data: st.DataObject) -> None:
        tp = data.draw(st.sampled_from(sorted(t for t, s in self.model.items() if s.next_offset)))
        next_offset = self.model[tp].next_offset
        assert next_offset is not None
        offset = data.draw(
            st.integers(min_value=max(0, next_offset - 30), max_value=next_offset - 1)
        )
        assert self.engine.open(tp, offset, self.tick()) is None

    @precondition(lambda self: any(s.open for s in self.model.values()))
    @rule(data=st.data())
    def finish(self, data: st.DataObject) -> None:
        tp = data.draw(st.sampled_from(sorted(t for t, s in self.model.items() if s.open)))
        state = self.model[tp]
        offset = data.draw(st.sampled_from(sorted(state.open)))
        assert self.engine.finish(tp, offset, state.epoch)
        del state.open[offset]

    @precondition(lambda self: bool(self.model))
    @rule(data=st.data(), offset=st.integers(min_value=0, max_value=400))
    def finish_not_open(self, data: st.DataObject, offset: int) -> None:
        tp = data.draw(st.sampled_from(sorted(self.model)))
        state = self.model[tp]
        if offset in state.open:
            return
        assert not self.engine.finish(tp, offset, state.epoch)

    @precondition(lambda self: any(self.old_epochs[tp] for tp in self.model))
    @rule(data=st.data())
    def finish_stale_epoch(self, data: st.DataObject) -> None:
        tp = data.draw(st.sampled_from(sorted(t for t in self.model if self.old_epochs[t])))
        epoch = data.draw(st.sampled_from(self.old_epochs[tp]))
        state = self.model[tp]
        offset = data.draw(
            st.sampled_from(sorted(state.open)) if state.open else st.integers(0, 300)
        )
        before = (point(self.engine, tp), open_count(self.engine, tp))
        assert not self.engine.finish(tp, offset, epoch)
        assert (point(self.engine, tp), open_count(self.engine, tp)) == before

    @rule(tp=st.sampled_from(PARTITIONS))
    def finish_unowned(self, tp: TP) -> None:
        if tp in self.model:
            return
        for epoch in self.old_epochs[tp]:
            assert not self.engine.finish(tp, 0, epoch)
        assert self.engine.open(tp, 0, self.tick()) is None

    @rule(accepted=st.booleans())
    def commit(self, accepted: bool) -> None:
        ready = self.engine.committable()
        for tp, state in self.model.items():
            current = state.point()
            if current is not None and (state.committed is None or current > state.committed):
                assert ready.get(tp) == current
            else:
                assert tp not in ready
        assert set(ready) <= set(self.model)
        for tp, offset in ready.items():
            self.engine.mark_committed(tp, offset)
            assert offsets_of(self.engine, tp).committed == offset
            if accepted:
                self.model[tp].committed = offset
            else:  # the commit failed: the point is offered again
                self.engine.unmark_committed(tp, offset)
                self.model[tp].committed = None

    @precondition(lambda self: bool(self.model))
    @rule(data=st.data(), back=st.integers(min_value=1, max_value=50))
    def mark_lower(self, data: st.DataObject, back: int) -> None:
        tp = data.draw(st.sampled_from(sorted(self.model)))
        committed = self.model[tp].committed
        if committed is None:
            return
        self.engine.mark_committed(tp, committed - back)
        self.engine.unmark_committed(tp, committed - back)  # not the marked one: no change
        assert offsets_of(self.engine, tp).committed == committed

    # -- invariants ---------------------------------------------------------------------
    @invariant()
    def commit_point_matches_model_and_never_passes_open(self) -> None:
        for tp, state in self.model.items():
            current = point(self.engine, tp)
            assert current == state.point()
            if state.open:
                assert current is not None
                assert current <= min(state.open)
            assert offsets_of(self.engine, tp).oldest_open_since() == (
                state.open[min(state.open)] if state.open else None
            )

    @invariant()
    def commit_point_never_moves_back_within_assignment(self) -> None:
        for tp, state in self.model.items():
            current = point(self.engine, tp)
            if state.last_point is not None:
                assert current is not None
                assert current >= state.last_point
            state.last_point = current

    @invariant()
    def committable_never_at_or_below_marked(self) -> None:
        for tp, offset in self.engine.committable().items():
            marked = offsets_of(self.engine, tp).committed
            assert marked is None or offset > marked

    @invariant()
    def open_total_is_sum_of_open_counts(self) -> None:
        counts = [open_count(self.engine, tp) for tp in PARTITIONS]
        assert self.engine.open_total == sum(counts)
        assert counts == [len(self.model[tp].open) if tp in self.model else 0 for tp in PARTITIONS]
        assert sorted(self.engine.partitions()) == sorted(self.model)
        for tp, state in self.model.items():
            assert self.engine.owns(tp, state.epoch)
            part = self.engine.partition(tp)
            assert part is not None and part.epoch == state.epoch


OffsetMachine.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=60,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestOffsetMachine = OffsetMachine.TestCase


# -- scale: counts of work, not timings -----------------------------------------------------


class CountingOrderedDict(OrderedDict[int, float]):
    """Counts the entries every iteration over the keys visits."""

    visited = 0

    def __iter__(self) -> Iterator[int]:
        for key in super().__iter__():
            self.visited += 1
            yield key


def test_many_open_offsets_stay_cheap() -> None:
    """Reading the commit point visits one entry, however many offsets are open."""
    count = 100_000
    engine, epochs = engine_with(T0)
    opened = CountingOrderedDict()
    offsets_of(engine, T0).open = opened
    for offset in range(count):
        engine.open(T0, offset * 2, 0.0)
    assert point(engine, T0) == 0
    # finish everything but the first, newest first: the point stays pinned at the first
    for offset in range(count - 1, 0, -1):
        assert engine.finish(T0, offset * 2, epochs[T0])
        assert point(engine, T0) == 0
    assert opened.visited == count  # one entry per commit point read, not a scan
    assert engine.open_total == 1 == len(opened)
    assert engine.committable() == {T0: 0}
    engine.finish(T0, 0, epochs[T0])
    assert point(engine, T0) == (count - 1) * 2 + 1
    assert opened.visited == count + 1  # the empty dict is not iterated; one for committable
