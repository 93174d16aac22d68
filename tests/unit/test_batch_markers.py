"""The marker values of a batch's records (bridge/batch_markers.py)."""

from __future__ import annotations

from typing import Any

from bridge.batch_markers import earlier_batches, member_markers, parse
from bridge.core.jobs import Job


def batch(task_id: str, offsets: list[int]) -> Job[Any]:
    members: list[Job[Any]] = [Job(("t", 0), o, None, 1, f"id-{o}", None) for o in offsets]
    return Job(("t", 0), offsets[0], None, 1, task_id, None, members=members)


def test_each_record_s_marker_names_the_batch_and_all_its_records() -> None:
    markers = member_markers(batch("b-1", [3, 4, 6]))
    assert markers == dict.fromkeys(["id-3", "id-4", "id-6"], "batch:b-1:3,4,6")
    assert parse(markers["id-3"]) == ("b-1", frozenset({3, 4, 6}))


def test_values_that_are_not_a_batch_s_are_ignored() -> None:
    for value in ("1", "batch:", "batch:b-1:", "batch::3", "batch:b-1:3,x", "other:b:1"):
        assert parse(value) is None, value


def test_earlier_batches_are_the_other_batches_named_by_the_records_lowest_first() -> None:
    new = batch("new", [3, 4, 5, 6])
    batch_of = {
        **member_markers(batch("b-2", [5, 6, 7])),
        **member_markers(batch("b-1", [2, 3, 4])),
        "id-9": "1",
    }
    assert earlier_batches(new, batch_of) == [
        ("b-1", frozenset({2, 3, 4})),
        ("b-2", frozenset({5, 6, 7})),
    ]
    assert earlier_batches(new, member_markers(new)) == []  # its own id: nothing earlier
