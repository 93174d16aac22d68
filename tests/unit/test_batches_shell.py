"""Batch tasks (issue 13) through the loop with a fake consumer: how records become batches,
and how a batch's outcome becomes every record's."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from bridge.batch_markers import BatchMemberMarks
from bridge.dispatch_ledger import Known
from tests.unit.test_loop_shell import TOPIC, FakeLedger, Shell, make_shell


def batched(ledger: FakeLedger | None = None, **batch: Any) -> Shell:
    batch = {"max_records": 3, "max_wait": 0.5, **batch}
    return make_shell(ledger=ledger, batch=batch, **_route_extra(batch))


def _route_extra(batch: dict[str, Any]) -> dict[str, Any]:
    return {}


def produce(shell: Shell, partition: int, values: list[bytes]) -> None:
    for value in values:
        shell.consumer.produce(partition, 1, value=value)


def n(i: int) -> bytes:
    return json.dumps({"n": i}).encode()


def test_a_full_batch_goes_at_once_and_the_rest_after_max_wait() -> None:
    shell = batched()
    shell.assign(0)
    produce(shell, 0, [n(i) for i in range(5)])
    shell.turn(2)
    (first,) = shell.dispatcher.sent
    assert first.args == [[{"n": 0}, {"n": 1}, {"n": 2}]]
    assert (first.headers["ckb_batch_first_offset"], first.headers["ckb_batch_last_offset"]) == (
        0,
        2,
    )
    assert first.headers["ckb_batch_size"] == 3
    assert first.headers["ckb_topic"] == TOPIC and first.headers["ckb_partition"] == 0
    shell.turn(3)
    assert len(shell.dispatcher.sent) == 1, "two records wait for a fuller batch"
    shell.clock.now += 0.5
    shell.turn()
    assert shell.dispatcher.sent[1].args == [[{"n": 3}, {"n": 4}]]


def test_a_successful_batch_finishes_all_its_records() -> None:
    shell = batched()
    shell.assign(0)
    produce(shell, 0, [n(i) for i in range(3)])
    shell.turn(2)
    shell.finish(shell.dispatcher.sent[0])
    shell.turn()
    shell.commit_now()
    assert shell.consumer.committed[(TOPIC, 0)] == 3
    assert shell.dispatched == [False] * 3  # each record counted as dispatched once


def test_a_failed_batch_dead_letters_every_record_once_with_the_batch_s_id() -> None:
    shell = batched()
    shell.assign(0)
    produce(shell, 0, [n(i) for i in range(3)])
    shell.turn(2)
    (request,) = shell.dispatcher.sent
    shell.finish(request, "FAILURE")
    shell.turn()
    letters = shell.dead_letters.letters
    assert [record.offset for record, _, _, _ in letters] == [0, 1, 2]
    for _, failure, _, _ in letters:
        assert failure.reason == "task_failed"
        assert (failure.batch_task_id, failure.batch_size) == (request.task_id, 3)
    shell.dead_letters.acknowledge_all()
    shell.commit_now()
    assert shell.consumer.committed[(TOPIC, 0)] == 3


def test_a_record_that_does_not_decode_leaves_the_batch_alone() -> None:
    shell = batched()
    shell.assign(0)
    produce(shell, 0, [n(0), b"{not json", n(2)])
    shell.turn(2)
    (request,) = shell.dispatcher.sent
    assert request.args == [[{"n": 0}, {"n": 2}]]
    assert request.headers["ckb_batch_size"] == 2
    ((record, failure, _, _),) = shell.dead_letters.letters
    assert (record.offset, failure.reason) == (1, "decode_error")
    shell.finish(request)
    shell.turn()
    shell.dead_letters.acknowledge_all()
    shell.commit_now()
    assert shell.consumer.committed[(TOPIC, 0)] == 3


def test_batch_ids_are_deterministic_from_their_first_and_last_records() -> None:
    ids = []
    for _ in range(2):
        shell = batched()
        shell.assign(0)
        produce(shell, 0, [n(i) for i in range(3)])
        shell.turn(2)
        ids.append(shell.dispatcher.sent[0].task_id)
    assert ids[0] == ids[1]


def test_partition_ordering_sends_one_batch_at_a_time() -> None:
    shell = batched(max_records=2)
    shell = make_shell(batch={"max_records": 2, "max_wait": 0.5}, ordering="partition")
    shell.assign(0)
    produce(shell, 0, [n(i) for i in range(4)])
    shell.turn(3)
    assert len(shell.dispatcher.sent) == 1
    shell.finish(shell.dispatcher.sent[0])
    shell.turn(2)
    assert [r.args for r in shell.dispatcher.sent] == [
        [[{"n": 0}, {"n": 1}]],
        [[{"n": 2}, {"n": 3}]],
    ]


def test_key_ordering_never_holds_one_key_in_two_running_batches() -> None:
    shell = make_shell(batch={"max_records": 10, "max_wait": 0.0}, ordering="key")
    shell.assign(0)
    for i, key in enumerate([b"a", b"b"]):
        shell.consumer.log.setdefault((TOPIC, 0), [])
        shell.consumer.produce(0, 1, value=n(i))
        shell.consumer.log[(TOPIC, 0)][-1]._key = key
    shell.turn(2)
    (first,) = shell.dispatcher.sent
    for i, key in enumerate([b"a", b"c"], start=2):
        shell.consumer.produce(0, 1, value=n(i))
        shell.consumer.log[(TOPIC, 0)][-1]._key = key
    shell.turn(2)
    assert [r.args for r in shell.dispatcher.sent[1:]] == [[[{"n": 3}]]], "a waits, c goes"
    shell.finish(first)
    shell.turn(2)
    assert shell.dispatcher.sent[-1].args == [[{"n": 2}]]


def test_a_lost_batch_is_sent_again_whole_then_dead_lettered_record_by_record() -> None:
    shell = make_shell(batch={"max_records": 2, "max_wait": 0.0}, max_redispatch=1)
    shell.assign(0)
    produce(shell, 0, [n(0), n(1)])
    shell.turn(2)
    shell.dispatcher.depth = 0  # workers took it
    for _ in range(2):
        shell.clock.now += 31  # past task_timeout (30)
        shell.turn(2)
    ids = {r.task_id for r in shell.dispatcher.sent}
    assert len(shell.dispatcher.sent) == 2 and len(ids) == 1, "the same batch, sent again"
    assert [(r.offset, f.reason) for r, f, _, _ in shell.dead_letters.letters] == [
        (0, "task_timeout"),
        (1, "task_timeout"),
    ]


@dataclass
class MarkingLedger(FakeLedger):
    """Markers with values, as the Redis ledger keeps them, shared by two owners."""

    markers: dict[str, str] = field(default_factory=dict)

    def lookup(self, task_ids: list[str]) -> Known:
        known = super().lookup(task_ids)
        for task_id in task_ids:
            value = self.markers.get(task_id)
            if value is not None and task_id not in known.finals:
                known.in_progress.add(task_id)
                if value != "1":
                    known.batch_of[task_id] = value
        return known

    def mark(self, task_ids: Any, ttl: float) -> None:
        self.mark_members(dict.fromkeys(task_ids, "1"), ttl)

    def mark_members(self, values: Mapping[str, str], ttl: float) -> None:
        self.markers.update(values)


def test_a_new_owner_watches_an_earlier_owner_s_batches_even_when_it_would_cut_them_otherwise() -> (
    None
):
    """The earlier owner sent 0-2, then 3-4 at max_wait, and left (its tasks still queued).
    The new owner sees 0-5 at once: it would send 0-2 (same id: watched) and 3-5 (another id),
    running 3 and 4 twice. It forms 3-4 again instead, watches it, and sends only 5."""
    ledger = MarkingLedger()
    assert isinstance(ledger, BatchMemberMarks)
    old = batched(ledger=ledger)
    old.assign(0)
    produce(old, 0, [n(i) for i in range(5)])
    old.turn(2)
    old.clock.now += 0.5
    old.turn()
    first, second = old.dispatcher.sent
    assert second.args == [[{"n": 3}, {"n": 4}]]

    new = batched(ledger=ledger)
    new.assign(0)
    produce(new, 0, [n(i) for i in range(6)])
    new.turn(3)
    new.clock.now += 0.5
    new.turn(2)
    assert [r.args for r in new.dispatcher.sent] == [[[{"n": 5}]]]  # only the new record
    assert {first.task_id, second.task_id} <= new.watcher.watched
    new.finish(first)
    new.finish(second)
    new.finish(new.dispatcher.sent[0])
    new.turn()
    new.commit_now()
    assert new.consumer.committed[(TOPIC, 0)] == 6
