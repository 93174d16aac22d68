"""OffsetTracker: the commit point never passes unfinished work (DESIGN semantics 1-2, 4)."""

from __future__ import annotations

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

from bridge.offsets import OffsetTracker, PartitionOffsets

TP = ("orders", 0)
TP2 = ("orders", 1)


# -- examples ---------------------------------------------------------------------------


def test_commit_point_is_none_before_any_record() -> None:
    tracker = OffsetTracker()
    tracker.assign(TP, epoch=1)
    assert tracker.commit_point(TP) is None
    assert tracker.committable() == {}
    assert tracker.oldest_open_since(TP) is None


def test_commit_point_waits_for_lowest_open_offset_across_gaps() -> None:
    tracker = OffsetTracker()
    tracker.assign(TP, epoch=1)
    for offset, now in ((10, 1.0), (11, 2.0), (15, 3.0), (40, 4.0)):
        assert tracker.add(TP, offset, now)
    assert tracker.commit_point(TP) == 10
    assert tracker.finish(TP, 11, epoch=1)
    assert tracker.finish(TP, 40, epoch=1)
    assert tracker.commit_point(TP) == 10
    assert tracker.oldest_open_since(TP) == 1.0
    assert tracker.finish(TP, 10, epoch=1)
    assert tracker.commit_point(TP) == 15
    assert tracker.oldest_open_since(TP) == 3.0
    assert tracker.finish(TP, 15, epoch=1)
    # nothing open: one past the highest offset seen, not past the gap
    assert tracker.commit_point(TP) == 41
    assert tracker.open_total == 0


def test_add_rejects_offsets_not_beyond_what_was_seen_and_unowned_partitions() -> None:
    tracker = OffsetTracker()
    assert not tracker.add(TP, 0, 0.0)  # not assigned
    tracker.assign(TP, epoch=1)
    assert tracker.add(TP, 5, 0.0)
    assert not tracker.add(TP, 5, 1.0)  # duplicate
    assert not tracker.add(TP, 3, 1.0)  # behind
    assert tracker.open_count(TP) == 1
    assert tracker.open_total == 1
    assert tracker.commit_point(TP) == 5


def test_finish_twice_or_unknown_offset_is_false() -> None:
    tracker = OffsetTracker()
    tracker.assign(TP, epoch=1)
    tracker.add(TP, 0, 0.0)
    tracker.add(TP, 1, 0.0)
    assert tracker.finish(TP, 1, epoch=1)
    assert not tracker.finish(TP, 1, epoch=1)
    assert not tracker.finish(TP, 7, epoch=1)
    assert not tracker.finish(TP2, 0, epoch=1)
    assert tracker.open_total == 1


def test_finish_with_stale_epoch_after_reassign_is_ignored() -> None:
    tracker = OffsetTracker()
    tracker.assign(TP, epoch=1)
    tracker.add(TP, 5, 0.0)
    assert tracker.revoke(TP) == [5]
    assert tracker.open_total == 0
    tracker.assign(TP, epoch=2)
    tracker.add(TP, 5, 1.0)  # redelivered to the new assignment
    assert not tracker.finish(TP, 5, epoch=1)
    assert tracker.open_count(TP) == 1
    assert tracker.commit_point(TP) == 5
    assert tracker.finish(TP, 5, epoch=2)
    assert tracker.commit_point(TP) == 6


def test_committable_and_mark_committed() -> None:
    tracker = OffsetTracker()
    tracker.assign(TP, epoch=1, committed=100)
    tracker.assign(TP2, epoch=1)
    tracker.add(TP, 100, 0.0)
    tracker.add(TP2, 0, 0.0)
    # TP's point (100) is not past what is already committed (100)
    assert tracker.committable() == {TP2: 0}
    tracker.finish(TP, 100, epoch=1)
    assert tracker.committable() == {TP: 101, TP2: 0}
    assert tracker.committable([TP2, ("other", 0)]) == {TP2: 0}
    tracker.mark_committed(TP, 101)
    assert tracker.committed(TP) == 101
    tracker.mark_committed(TP, 50)  # a lower one never replaces a higher one
    assert tracker.committed(TP) == 101
    assert tracker.committable() == {TP2: 0}


def test_revoke_returns_open_offsets_in_order_and_forgets_partition() -> None:
    tracker = OffsetTracker()
    tracker.assign(TP, epoch=3)
    tracker.assign(TP2, epoch=3)
    for offset in (2, 4, 8):
        tracker.add(TP, offset, 0.0)
    tracker.add(TP2, 0, 0.0)
    tracker.finish(TP, 4, epoch=3)
    assert tracker.revoke(TP) == [2, 8]
    assert tracker.revoke(TP) == []
    assert not tracker.owns(TP)
    assert tracker.owns(TP2, 3)
    assert not tracker.owns(TP2, 2)
    assert tracker.epoch(TP) is None
    assert tracker.partitions() == [TP2]
    assert tracker.open_total == 1
    assert tracker.commit_point(TP) is None


def test_reassign_drops_earlier_state() -> None:
    tracker = OffsetTracker()
    tracker.assign(TP, epoch=1, committed=3)
    tracker.add(TP, 3, 0.0)
    tracker.add(TP, 4, 0.0)
    tracker.assign(TP, epoch=2, committed=3)
    assert tracker.open_total == 0
    assert tracker.open_count(TP) == 0
    assert tracker.epoch(TP) == 2
    assert tracker.commit_point(TP) is None
    assert tracker.add(TP, 3, 1.0)  # offsets seen before may be consumed again


def test_partition_offsets_alone() -> None:
    state = PartitionOffsets(epoch=1)
    assert state.add(7, 1.5)
    assert not state.add(6, 2.0)
    assert state.commit_point() == 7
    assert state.oldest_open_since() == 1.5
    assert state.finish(7)
    assert not state.finish(7)
    assert state.commit_point() == 8


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
    tracker = OffsetTracker()
    tracker.assign(TP, epoch=1)
    open_set: set[int] = set()
    highest: int | None = None
    last_point: int | None = None
    last_marked: int | None = None
    for step, (kind, index) in enumerate(ops):
        if kind == "add":
            assert tracker.add(TP, offsets[index], float(step))
            open_set.add(offsets[index])
            highest = offsets[index]
        elif kind == "finish":
            assert tracker.finish(TP, offsets[index], epoch=1)
            open_set.discard(offsets[index])
        else:
            ready = tracker.committable()
            if TP in ready:
                assert last_marked is None or ready[TP] > last_marked
                tracker.mark_committed(TP, ready[TP])
                last_marked = ready[TP]
        point = tracker.commit_point(TP)
        if highest is None:
            assert point is None
            continue
        assert point is not None
        if open_set:
            assert point == min(open_set)
        else:
            assert point == highest + 1
        assert all(point <= offset for offset in open_set)
        assert last_point is None or point >= last_point
        last_point = point
        assert tracker.open_count(TP) == len(open_set) == tracker.open_total
    assert tracker.commit_point(TP) == offsets[-1] + 1


@settings(max_examples=200, deadline=None, database=None)
@given(
    st.lists(st.integers(min_value=1, max_value=1000), min_size=1, max_size=40),
    st.data(),
)
def test_stale_epoch_finish_changes_nothing(gaps: list[int], data: st.DataObject) -> None:
    tracker = OffsetTracker()
    tracker.assign(TP, epoch=1)
    offsets = []
    current = 0
    for gap in gaps:
        current += gap
        offsets.append(current)
        tracker.add(TP, current, 0.0)
    tracker.assign(TP, epoch=2)
    for offset in offsets:
        tracker.add(TP, offset, 1.0)
    before = (tracker.commit_point(TP), tracker.open_count(TP), tracker.open_total)
    victims = data.draw(st.lists(st.sampled_from(offsets), unique=True))
    stale_epoch = data.draw(st.sampled_from([0, 1, 3]))
    for offset in victims:
        assert not tracker.finish(TP, offset, epoch=stale_epoch)
    assert (tracker.commit_point(TP), tracker.open_count(TP), tracker.open_total) == before


# -- stateful: several partitions, rebalances, against a sorted-set model ------------------


@dataclass
class ModelPartition:
    epoch: int
    open: dict[int, float] = field(default_factory=dict)
    next_offset: int | None = None
    committed: int | None = None
    last_point: int | None = None

    def point(self) -> int | None:
        return min(self.open) if self.open else self.next_offset


PARTITIONS = [("orders", 0), ("orders", 1), ("payments", 0)]


class OffsetMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.tracker = OffsetTracker()
        self.model: dict[tuple[str, int], ModelPartition] = {}
        self.next_epoch = 1
        self.clock = 0.0
        self.old_epochs: dict[tuple[str, int], list[int]] = {tp: [] for tp in PARTITIONS}

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
    def assign(self, tp: tuple[str, int], committed: int | None) -> None:
        if tp in self.model:
            self.old_epochs[tp].append(self.model[tp].epoch)
        epoch = self.next_epoch
        self.next_epoch += 1
        self.tracker.assign(tp, epoch, committed)
        self.model[tp] = ModelPartition(epoch=epoch, committed=committed)

    @precondition(lambda self: bool(self.model))
    @rule(data=st.data())
    def revoke(self, data: st.DataObject) -> None:
        tp = data.draw(st.sampled_from(sorted(self.model)))
        state = self.model.pop(tp)
        self.old_epochs[tp].append(state.epoch)
        assert self.tracker.revoke(tp) == sorted(state.open)
        assert not self.tracker.owns(tp)

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
        assert self.tracker.add(tp, offset, now)
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
        assert not self.tracker.add(tp, offset, self.tick())

    @precondition(lambda self: any(s.open for s in self.model.values()))
    @rule(data=st.data())
    def finish(self, data: st.DataObject) -> None:
        tp = data.draw(st.sampled_from(sorted(t for t, s in self.model.items() if s.open)))
        state = self.model[tp]
        offset = data.draw(st.sampled_from(sorted(state.open)))
        assert self.tracker.finish(tp, offset, state.epoch)
        del state.open[offset]

    @precondition(lambda self: bool(self.model))
    @rule(data=st.data(), offset=st.integers(min_value=0, max_value=400))
    def finish_not_open(self, data: st.DataObject, offset: int) -> None:
        tp = data.draw(st.sampled_from(sorted(self.model)))
        state = self.model[tp]
        if offset in state.open:
            return
        assert not self.tracker.finish(tp, offset, state.epoch)

    @precondition(lambda self: any(self.old_epochs[tp] for tp in self.model))
    @rule(data=st.data())
    def finish_stale_epoch(self, data: st.DataObject) -> None:
        tp = data.draw(st.sampled_from(sorted(t for t in self.model if self.old_epochs[t])))
        epoch = data.draw(st.sampled_from(self.old_epochs[tp]))
        state = self.model[tp]
        offset = data.draw(
            st.sampled_from(sorted(state.open)) if state.open else st.integers(0, 300)
        )
        before = (self.tracker.commit_point(tp), self.tracker.open_count(tp))
        assert not self.tracker.finish(tp, offset, epoch)
        assert (self.tracker.commit_point(tp), self.tracker.open_count(tp)) == before

    @rule(tp=st.sampled_from(PARTITIONS))
    def finish_unowned(self, tp: tuple[str, int]) -> None:
        if tp in self.model:
            return
        assert not self.tracker.finish(tp, 0, self.next_epoch - 1)
        assert not self.tracker.add(tp, 0, self.tick())

    @rule()
    def commit(self) -> None:
        ready = self.tracker.committable()
        for tp, state in self.model.items():
            point = state.point()
            if point is not None and (state.committed is None or point > state.committed):
                assert ready.get(tp) == point
            else:
                assert tp not in ready
        assert set(ready) <= set(self.model)
        for tp, offset in ready.items():
            self.tracker.mark_committed(tp, offset)
            self.model[tp].committed = offset
            assert self.tracker.committed(tp) == offset

    @precondition(lambda self: bool(self.model))
    @rule(data=st.data(), back=st.integers(min_value=1, max_value=50))
    def mark_lower(self, data: st.DataObject, back: int) -> None:
        tp = data.draw(st.sampled_from(sorted(self.model)))
        committed = self.model[tp].committed
        if committed is None:
            return
        self.tracker.mark_committed(tp, committed - back)
        assert self.tracker.committed(tp) == committed

    # -- invariants ---------------------------------------------------------------------
    @invariant()
    def commit_point_matches_model_and_never_passes_open(self) -> None:
        for tp, state in self.model.items():
            point = self.tracker.commit_point(tp)
            assert point == state.point()
            if state.open:
                assert point is not None
                assert point <= min(state.open)
            assert self.tracker.oldest_open_since(tp) == (
                state.open[min(state.open)] if state.open else None
            )

    @invariant()
    def commit_point_never_moves_back_within_assignment(self) -> None:
        for tp, state in self.model.items():
            point = self.tracker.commit_point(tp)
            if state.last_point is not None:
                assert point is not None
                assert point >= state.last_point
            state.last_point = point

    @invariant()
    def committable_never_at_or_below_marked(self) -> None:
        for tp, point in self.tracker.committable().items():
            marked = self.tracker.committed(tp)
            assert marked is None or point > marked

    @invariant()
    def open_total_is_sum_of_open_counts(self) -> None:
        counts = [self.tracker.open_count(tp) for tp in PARTITIONS]
        assert self.tracker.open_total == sum(counts)
        assert counts == [len(self.model[tp].open) if tp in self.model else 0 for tp in PARTITIONS]
        assert sorted(self.tracker.partitions()) == sorted(self.model)
        for tp, state in self.model.items():
            assert self.tracker.owns(tp, state.epoch)
            assert self.tracker.epoch(tp) == state.epoch


OffsetMachine.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=60,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestOffsetMachine = OffsetMachine.TestCase


def test_many_open_offsets_stay_cheap() -> None:
    count = 100_000
    tracker = OffsetTracker()
    tracker.assign(TP, epoch=1)
    for offset in range(count):
        tracker.add(TP, offset * 2, 0.0)
    # finish everything but the first, newest first: the point stays pinned at the first
    for offset in range(count - 1, 0, -1):
        tracker.finish(TP, offset * 2, epoch=1)
    assert tracker.commit_point(TP) == 0
    assert tracker.open_total == 1
    tracker.finish(TP, 0, epoch=1)
    assert tracker.commit_point(TP) == (count - 1) * 2 + 1
