"""The ordering gate: who may start, per mode. Property-tested against its promises."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.ordering import OrderingGate

TP = ("t", 0)


@dataclass(frozen=True)
class Item:
    offset: int
    key: bytes | None


def key_of(item: Item) -> bytes | None:
    return item.key


def items(keys: list[bytes | None]) -> deque[Item]:
    return deque(Item(offset, key) for offset, key in enumerate(keys))


def test_unordered_takes_up_to_room_in_offset_order() -> None:
    gate, waiting = OrderingGate(), items([b"a", b"a", b"b"])
    chosen = gate.select("unordered", TP, waiting, 2, key_of)
    assert [i.offset for i in chosen] == [0, 1]
    assert [i.offset for i in waiting] == [2]


def test_partition_mode_runs_one_at_a_time() -> None:
    gate, waiting = OrderingGate(), items([b"a", b"b", b"c"])
    first = gate.select("partition", TP, waiting, 10, key_of)
    assert [i.offset for i in first] == [0]
    gate.started(TP, first[0].key)
    assert gate.select("partition", TP, waiting, 10, key_of) == []
    gate.finished(TP, first[0].key)
    assert [i.offset for i in gate.select("partition", TP, waiting, 10, key_of)] == [1]


def test_key_mode_parallel_across_keys_serial_within_a_key() -> None:
    gate, waiting = OrderingGate(), items([b"a", b"a", b"b", None, None, b"c"])
    chosen = gate.select("key", TP, waiting, 10, key_of)
    assert [i.offset for i in chosen] == [0, 2, 3, 5]  # the first of each key, nulls as one key
    assert [i.offset for i in waiting] == [1, 4]


def test_key_mode_a_busy_key_blocks_its_later_records_even_with_room() -> None:
    gate, waiting = OrderingGate(), items([b"a", b"b"])
    gate.started(TP, b"a")
    assert [i.offset for i in gate.select("key", TP, waiting, 10, key_of)] == [1]
    assert [i.offset for i in waiting] == [0]


def test_room_zero_selects_nothing_in_every_mode() -> None:
    for mode in ("unordered", "key", "partition"):
        waiting = items([b"a"])
        assert OrderingGate().select(mode, TP, waiting, 0, key_of) == []
        assert len(waiting) == 1


def test_forget_clears_busy_state() -> None:
    gate = OrderingGate()
    gate.started(TP, b"a")
    gate.forget(TP)
    assert not gate.busy(TP, b"a") and gate.running(TP) == 0


@settings(max_examples=300, deadline=None)
@given(
    keys=st.lists(st.sampled_from([b"a", b"b", b"c", None]), min_size=1, max_size=40),
    mode=st.sampled_from(["key", "partition", "unordered"]),
    room=st.integers(min_value=1, max_value=6),
    finish_order=st.randoms(use_true_random=False),
)
def test_simulated_runs_keep_the_promises_of_each_mode(
    keys: list[bytes | None], mode: str, room: int, finish_order: object
) -> None:
    """Run everything to completion with random finishing order; check each mode's promise."""
    import random

    assert isinstance(finish_order, random.Random)
    gate, waiting = OrderingGate(), items(keys)
    running: list[Item] = []
    started: list[Item] = []
    while waiting or running:
        for item in gate.select(mode, TP, waiting, room - len(running), key_of):
            if mode == "key":  # never two records of one key at once
                assert all(r.key != item.key for r in running)
            if mode == "partition":
                assert not running
            gate.started(TP, item.key)
            running.append(item)
            started.append(item)
        assert len(running) <= room
        assert running, "the gate must make progress when nothing runs"
        done = running.pop(finish_order.randrange(len(running)))
        gate.finished(TP, done.key)
    assert sorted(i.offset for i in started) == list(range(len(keys)))  # all ran, once
    if mode in ("key", "partition"):
        by_key: dict[bytes | None, list[int]] = {}
        for item in started:
            by_key.setdefault(item.key if mode == "key" else b"", []).append(item.offset)
        assert all(offsets == sorted(offsets) for offsets in by_key.values())
