"""Batch tasks (issue 13) through the loop with a fake consumer: how records become batches,
and how a batch's outcome becomes every record's."""

from __future__ import annotations

import json
from typing import Any

from tests.unit.test_loop_shell import TOPIC, Shell, make_shell


def batched(**batch: Any) -> Shell:
    return make_shell(batch={"max_records": 3, "max_wait": 0.5, **batch}, **_route_extra(batch))


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
