"""The consumer loop as an I/O shell, driven through a fake consumer that behaves as
librdkafka does: rebalance callbacks and commit reports fire inside ``poll()``/``consume()``
on the loop's thread. The dispatcher, result watcher, ledger and dead-letter writer are fakes
of the same shape; the engine inside the loop is the real one.
"""

from __future__ import annotations

import json
import queue
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from confluent_kafka import KafkaError, TopicPartition

from bridge.commits import COMMIT_ANSWER_TIMEOUT, CommitReports
from bridge.dead_letters import DeadLetterState, Failure
from bridge.dispatch_ledger import Known
from bridge.dispatcher import EncodedTask, PublishError, TaskRequest
from bridge.events import Observer, Observers
from bridge.loop import ConsumerLoop
from bridge.rate_limit import Grant
from bridge.records import Record
from bridge.results import TaskEvent
from bridge.settings import Settings

TOPIC = "orders"


@dataclass
class Message:
    _topic: str
    _partition: int
    _offset: int
    _value: bytes | None = b'{"n": 1}'
    _key: bytes | None = None

    def error(self) -> None:
        return None

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def key(self) -> bytes | None:
        return self._key

    def value(self) -> bytes | None:
        return self._value

    def headers(self) -> None:
        return None

    def timestamp(self) -> tuple[int, int]:
        return (1, 1_700_000_000_000)


class FakeConsumer:
    """A consumer whose group events are scripted by the test and fired inside poll/consume."""

    def __init__(self, reports: CommitReports) -> None:
        self.reports = reports
        self.log: dict[tuple[str, int], list[Message]] = {}
        self.position: dict[tuple[str, int], int] = {}
        self.assigned: set[tuple[str, int]] = set()
        self.paused: set[tuple[str, int]] = set()
        self.group: deque[tuple[str, list[TopicPartition]]] = deque()
        self.commits: list[tuple[bool, dict[tuple[str, int], int]]] = []
        self.committed: dict[tuple[str, int], int] = {}
        self.answers: deque[Callable[[], None]] = deque()
        self.fail_next_commit = False
        #: answers of asynchronous commits held back (Kafka away) until the test releases them
        self.hold_answers = False
        self.held: list[Callable[[], None]] = []
        self.callbacks: dict[str, Any] = {}

    def produce(self, partition: int, count: int, value: bytes | None = b'{"n": 1}') -> None:
        records = self.log.setdefault((TOPIC, partition), [])
        for _ in range(count):
            records.append(Message(TOPIC, partition, len(records), value))

    # -- the consumer API the loop uses -------------------------------------------------
    def subscribe(self, topics: list[str], **callbacks: Any) -> None:
        self.callbacks = callbacks

    def _serve(self) -> None:
        while self.answers:  # commit reports arrive inside poll/consume, as in librdkafka
            self.answers.popleft()()
        while self.group:
            event, partitions = self.group.popleft()
            self.callbacks[f"on_{event}"](self, partitions)
            if event != "assign":
                self.assigned -= {(p.topic, p.partition) for p in partitions}

    def poll(self, timeout: float) -> Message | None:
        batch = self.consume(1, timeout)
        return batch[0] if batch else None

    def consume(self, count: int, timeout: float) -> list[Message]:
        self._serve()
        out: list[Message] = []
        for tp in sorted(self.assigned - self.paused):
            records = self.log.get(tp, [])
            while self.position[tp] < len(records) and len(out) < count:
                out.append(records[self.position[tp]])
                self.position[tp] += 1
        return out

    def incremental_assign(self, partitions: list[TopicPartition]) -> None:
        for p in partitions:
            tp = (p.topic, p.partition)
            self.assigned.add(tp)
            self.position[tp] = self.committed.get(tp, 0)

    def pause(self, partitions: list[TopicPartition]) -> None:
        self.paused |= {(p.topic, p.partition) for p in partitions}

    def resume(self, partitions: list[TopicPartition]) -> None:
        self.paused -= {(p.topic, p.partition) for p in partitions}

    def commit(self, offsets: list[TopicPartition], asynchronous: bool) -> list[TopicPartition]:
        points = {(p.topic, p.partition): p.offset for p in offsets}
        self.commits.append((asynchronous, points))
        error = KafkaError(KafkaError.REBALANCE_IN_PROGRESS) if self.fail_next_commit else None
        self.fail_next_commit = False
        if error is None:
            self.committed.update(points)
        if asynchronous:
            queue = self.held if self.hold_answers else self.answers
            queue.append(lambda: self.reports(error, offsets))
        return offsets

    def close(self) -> None:
        pass


class FakeWatcher:
    def __init__(self) -> None:
        self.completions: queue.Queue[TaskEvent] = queue.Queue()
        self.watched: set[str] = set()

    def watch(self, task_ids: Any) -> None:
        self.watched.update(task_ids)

    def unwatch(self, task_id: str) -> None:
        self.watched.discard(task_id)


class FakeDispatcher:
    def __init__(self) -> None:
        self.sent: list[TaskRequest] = []
        self.refuse = False
        self.max_message_bytes: int | None = None  # what the broker takes, once learned

    def encode(self, request: TaskRequest) -> EncodedTask:
        body = json.dumps([request.args, request.kwargs]).encode()  # its size is what counts
        return EncodedTask(request, ({}, {}, body, None), "application/json", "utf-8")

    def publish(self, tasks: list[EncodedTask]) -> None:
        if self.refuse:
            raise PublishError("broker away")
        self.sent.extend(task.request for task in tasks)

    def queue_depth(self, queue: str | None) -> int:
        return self.depth

    depth = 0  # messages waiting in the broker queue: by default workers took everything


@dataclass
class FakeLedger:
    finals: dict[str, TaskEvent] = field(default_factory=dict)

    def lookup(self, task_ids: list[str]) -> Known:
        return Known({t: self.finals[t] for t in task_ids if t in self.finals})

    def mark(self, task_ids: Any, ttl: float) -> None:
        pass


class FakeDeadLetters:
    def __init__(self) -> None:
        self.letters: list[tuple[Record, Failure, Callable[[], None], Callable[[], bool]]] = []
        self.written: list[tuple[Record, Failure]] = []

    def send(self, record: Record, topic: str, failure: Failure, on_done: Any, wanted: Any) -> None:
        self.letters.append((record, failure, on_done, wanted))

    def acknowledge_all(self) -> None:
        for record, failure, on_done, wanted in self.letters:
            if wanted():
                self.written.append((record, failure))
                on_done()
        self.letters.clear()

    @property
    def pending(self) -> int:
        return len(self.letters)

    def pending_for(self, tps: Any = None) -> int:
        return sum(tps is None or item[0].tp in tps for item in self.letters)

    def state(self) -> DeadLetterState:
        return DeadLetterState(pending={("orders.dlq", "writing"): len(self.letters)})

    def poll(self) -> None:
        pass

    def forget(self, tps: set[tuple[str, int]]) -> None:
        self.letters = [item for item in self.letters if item[0].tp not in tps]

    def flush(self, timeout: float) -> int:
        return len(self.letters)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Shell:
    loop: ConsumerLoop
    consumer: FakeConsumer
    watcher: FakeWatcher
    dispatcher: FakeDispatcher
    ledger: FakeLedger
    dead_letters: FakeDeadLetters
    clock: Clock
    dispatched: list[bool]

    def turn(self, times: int = 1) -> None:
        for _ in range(times):
            self.loop.run_once(poll_timeout=0)
            self.clock.now += 0.01

    def finish(self, request: TaskRequest, state: str = "SUCCESS") -> None:
        self.watcher.completions.put(TaskEvent(request.task_id, state, "Boom", "it broke"))

    def assign(self, *partitions: int) -> None:
        self.consumer.group.append(("assign", [TopicPartition(TOPIC, p) for p in partitions]))

    def revoke(self, *partitions: int, event: str = "revoke") -> None:
        self.consumer.group.append((event, [TopicPartition(TOPIC, p) for p in partitions]))

    def commit_now(self) -> None:
        self.clock.now += 5  # past commit_interval
        self.turn(2)  # commit, then its report inside the next poll


@pytest.fixture
def shell() -> Shell:
    return make_shell()


def make_shell(ledger: FakeLedger | None = None, **route: Any) -> Shell:
    """A loop on fakes, routing ``TOPIC`` with ``route``'s settings; ``ledger``: one shared
    with another shell (an earlier owner's markers)."""
    settings = Settings(
        routes=[{"topic": TOPIC, "task": "tasks.t", "task_timeout": 30, **route}],
        limits={"revoke_grace": 0, "max_in_flight_total": 100},
    )
    reports = CommitReports()
    consumer = FakeConsumer(reports)
    watcher, dispatcher, ledger, dlq = (
        FakeWatcher(),
        FakeDispatcher(),
        ledger or FakeLedger(),
        FakeDeadLetters(),
    )
    clock = Clock()
    dispatched: list[bool] = []

    class Recorder(Observer):
        def on_dispatched(self, record: Record, task: str, redispatch: bool) -> None:
            dispatched.append(redispatch)

    loop = ConsumerLoop(
        settings,
        consumer,
        dispatcher,  # type: ignore[arg-type]
        watcher,  # type: ignore[arg-type]
        ledger,  # type: ignore[arg-type]
        dlq,  # type: ignore[arg-type]
        Observers([Recorder()]),
        clock=clock,
        commit_reports=reports,
    )
    loop.subscribe()
    return Shell(loop, consumer, watcher, dispatcher, ledger, dlq, clock, dispatched)


def test_out_of_order_completions_commit_only_below_the_lowest_unfinished(shell: Shell) -> None:
    shell.assign(0)
    shell.consumer.produce(0, 3)
    shell.turn(2)
    assert [r.headers["ckb_offset"] for r in shell.dispatcher.sent] == [0, 1, 2]
    first, second, third = shell.dispatcher.sent
    shell.finish(third)
    shell.finish(second)
    shell.commit_now()
    assert shell.consumer.committed.get((TOPIC, 0), 0) == 0  # offset 0 still runs
    shell.finish(first)
    shell.commit_now()
    assert shell.consumer.committed[(TOPIC, 0)] == 3


def test_a_revoke_inside_consume_commits_finished_work_synchronously_and_forgets_the_rest(
    shell: Shell,
) -> None:
    shell.assign(0)
    shell.consumer.produce(0, 2)
    shell.turn(2)
    first, second = shell.dispatcher.sent
    shell.finish(first)
    shell.turn()
    shell.revoke(0)
    shell.turn()
    assert shell.consumer.commits[-1] == (False, {(TOPIC, 0): 1})  # the revoke's commit: sync
    assert not shell.loop.engine.owns((TOPIC, 0))
    assert second.task_id not in shell.watcher.watched
    # the old task's outcome arrives after the revoke: ignored, nothing dead-lettered
    shell.finish(second, "FAILURE")
    shell.turn()
    assert shell.dead_letters.letters == []
    # assigned again: the unfinished record comes back and is sent under the same task id
    shell.assign(0)
    shell.turn(2)
    assert shell.dispatcher.sent[-1].task_id == second.task_id


def test_a_lost_partition_is_forgotten_without_a_commit(shell: Shell) -> None:
    shell.assign(0)
    shell.consumer.produce(0, 1)
    shell.turn(2)
    shell.finish(shell.dispatcher.sent[0])
    shell.turn()
    commits = len(shell.consumer.commits)
    shell.revoke(0, event="lost")
    shell.turn()
    assert len(shell.consumer.commits) == commits
    assert not shell.loop.engine.owns((TOPIC, 0))


def test_a_failed_task_is_committed_only_once_its_dead_letter_is_acknowledged(
    shell: Shell,
) -> None:
    shell.assign(0)
    shell.consumer.produce(0, 1)
    shell.turn(2)
    shell.finish(shell.dispatcher.sent[0], "FAILURE")
    shell.commit_now()
    assert shell.consumer.committed.get((TOPIC, 0), 0) == 0
    ((record, failure, _, _),) = shell.dead_letters.letters
    assert (record.offset, failure.reason, failure.error_class) == (0, "task_failed", "Boom")
    shell.dead_letters.acknowledge_all()
    shell.commit_now()
    assert shell.consumer.committed[(TOPIC, 0)] == 1


def test_an_undecodable_record_is_dead_lettered_and_does_not_block_the_next(shell: Shell) -> None:
    shell.assign(0)
    shell.consumer.produce(0, 1, value=b"{not json")
    shell.consumer.produce(0, 1)
    shell.turn(2)
    assert [r.headers["ckb_offset"] for r in shell.dispatcher.sent] == [1]
    assert shell.dead_letters.letters[0][1].reason == "decode_error"
    shell.finish(shell.dispatcher.sent[0])
    shell.dead_letters.acknowledge_all()
    shell.commit_now()
    assert shell.consumer.committed[(TOPIC, 0)] == 2


def test_a_refused_publish_puts_the_records_back_in_order_and_retries_after_a_backoff(
    shell: Shell,
) -> None:
    shell.assign(0)
    shell.consumer.produce(0, 3)
    shell.dispatcher.refuse = True
    shell.turn(2)
    assert shell.dispatcher.sent == []
    shell.dispatcher.refuse = False
    shell.turn()
    assert shell.dispatcher.sent == []  # still backing off
    shell.clock.now += 1.5
    shell.turn()
    assert [r.headers["ckb_offset"] for r in shell.dispatcher.sent] == [0, 1, 2]


def test_a_task_whose_success_is_already_stored_is_not_sent_again(shell: Shell) -> None:
    shell.assign(0)
    shell.consumer.produce(0, 1)
    shell.dispatcher.refuse = True
    shell.turn(2)
    task_id = next(iter(shell.watcher.watched))
    shell.ledger.finals[task_id] = TaskEvent(task_id, "SUCCESS")
    shell.dispatcher.refuse = False
    shell.clock.now += 1.5
    shell.turn()
    assert shell.dispatcher.sent == []
    shell.commit_now()
    assert shell.consumer.committed[(TOPIC, 0)] == 1


def test_a_partition_at_its_cap_is_paused_and_resumed_once_it_drained() -> None:
    shell = make_shell(max_in_flight=2)
    shell.assign(0)
    shell.consumer.produce(0, 6)
    shell.turn(2)
    assert (TOPIC, 0) in shell.consumer.paused
    assert len(shell.dispatcher.sent) == 2
    finished = 0
    while finished < 6:
        for request in shell.dispatcher.sent[finished:]:
            shell.finish(request)
            finished += 1
        shell.turn(3)
    assert len(shell.dispatcher.sent) == 6  # none sent twice, none left behind
    assert (TOPIC, 0) not in shell.consumer.paused
    assert shell.loop.engine.open_total == 0


def test_a_lost_task_is_sent_again_then_dead_lettered_as_task_timeout() -> None:
    shell = make_shell(max_redispatch=1)
    shell.assign(0)
    shell.consumer.produce(0, 1)
    shell.turn(2)
    shell.clock.now += 31
    shell.turn()
    assert shell.dispatched == [False, True]
    shell.clock.now += 31
    shell.turn()
    ((_, failure, _, _),) = shell.dead_letters.letters
    assert (failure.reason, failure.attempts) == ("task_timeout", 2)


def test_a_refused_commit_is_sent_again(shell: Shell) -> None:
    shell.assign(0)
    shell.consumer.produce(0, 1)
    shell.turn(2)
    shell.finish(shell.dispatcher.sent[0])
    shell.consumer.fail_next_commit = True
    shell.commit_now()
    assert shell.consumer.committed.get((TOPIC, 0), 0) == 0
    shell.commit_now()
    assert shell.consumer.committed[(TOPIC, 0)] == 1


def test_tasks_waiting_in_a_slow_queue_are_never_sent_again() -> None:
    shell = make_shell(max_redispatch=1)
    shell.dispatcher.depth = 3  # all three still wait in the broker: slow workers
    shell.assign(0)
    shell.consumer.produce(0, 3)
    shell.turn(2)
    for _ in range(5):
        shell.clock.now += 31
        shell.turn()
    assert shell.dispatched == [False, False, False]
    assert shell.dead_letters.letters == []


def test_a_re_sent_task_keeps_its_retry_count() -> None:
    shell = make_shell(max_redispatch=1)
    shell.assign(0)
    shell.consumer.produce(0, 1)
    shell.turn(2)
    (first,) = shell.dispatcher.sent
    shell.finish(first, "RETRY")
    shell.finish(first, "RETRY")
    shell.turn()
    shell.clock.now += 31
    shell.turn()
    assert [r.retries for r in shell.dispatcher.sent] == [0, 2]


def test_while_the_broker_refuses_lost_tasks_get_one_publish_attempt_per_turn() -> None:
    shell = make_shell(max_redispatch=2)
    shell.assign(0)
    shell.consumer.produce(0, 5)
    shell.turn(2)
    attempts = []
    original = shell.dispatcher.publish

    def refusing(requests: list[TaskRequest]) -> None:
        attempts.append(len(requests))
        raise PublishError("broker away")

    shell.dispatcher.publish = refusing  # type: ignore[method-assign]
    shell.clock.now += 31
    shell.turn()
    assert attempts == [1]  # one attempt for the first lost task, the other four wait
    shell.dispatcher.publish = original  # type: ignore[method-assign]
    shell.clock.now += 1.5
    shell.turn()
    assert shell.dispatched.count(True) == 5


def test_dispatch_markers_live_as_long_as_each_record_s_route_needs() -> None:
    settings = Settings(
        routes=[
            {"topic": "^orders$", "task": "a", "task_timeout": 10, "max_redispatch": 0},
            {"topic": "^other$", "task": "b", "task_timeout": 100, "max_redispatch": 1},
        ],
        limits={"revoke_grace": 0},
    )
    shell = make_shell()
    marks: list[tuple[list[str], float]] = []
    shell.ledger.mark = lambda ids, ttl: marks.append((list(ids), ttl))  # type: ignore[method-assign]
    from bridge.core.jobs import Job
    from bridge.intake import Work
    from bridge.sender import _by_route

    records = [Record(t, 0, 0, None, b"{}", (), 1) for t in ("orders", "other")]
    jobs = [
        Job(rec.tp, 0, None, 1, f"id-{rec.topic}", Work(rec, route))
        for rec, route in zip(records, settings.routes, strict=True)
    ]
    assert [(r.task, [j.task_id for j in js]) for r, js in _by_route(jobs)] == [
        ("a", ["id-orders"]),
        ("b", ["id-other"]),
    ]
    shell.loop._sender._publish(
        [
            (job, shell.dispatcher.encode(TaskRequest(job.task_id, "t", [], {}, None, {}, "")))
            for job in jobs
        ]
    )
    assert sorted(marks) == [(["id-orders"], 20.0), (["id-other"], 300.0)]


def test_a_partition_error_of_the_revoke_commit_is_not_reported_as_committed(shell: Shell) -> None:
    committed: list[tuple[tuple[str, int], int]] = []

    class Watch(Observer):
        def on_committed(self, tp: tuple[str, int], offset: int) -> None:
            committed.append((tp, offset))

    shell.loop._commits._events = Observers([Watch()])
    shell.assign(0, 1)
    shell.consumer.produce(0, 1)
    shell.consumer.produce(1, 1)
    shell.turn(2)
    for request in shell.dispatcher.sent:
        shell.finish(request)
    shell.turn()
    original = shell.consumer.commit

    @dataclass
    class Answer:  # librdkafka's per-partition answer (TopicPartition.error is read-only)
        topic: str
        partition: int
        offset: int
        error: KafkaError | None

    def partly_failing(offsets: list[TopicPartition], asynchronous: bool) -> list[Answer]:
        too_large = KafkaError(KafkaError.OFFSET_METADATA_TOO_LARGE)
        return [
            Answer(p.topic, p.partition, p.offset, too_large if p.partition == 1 else None)
            for p in original(offsets, asynchronous)
        ]

    shell.consumer.commit = partly_failing  # type: ignore[method-assign]
    shell.revoke(0, 1)
    shell.turn()
    assert ((TOPIC, 0), 1) in committed
    assert ((TOPIC, 1), 1) not in committed


def test_offsets_delivered_again_without_a_rebalance_are_ignored_said_once_and_counted() -> None:
    """librdkafka fetches already-delivered offsets again after a broker restart (chaos 08 in
    CI): they are the same records, so the commit must never move back."""
    shell = make_shell()
    resets: list[tuple[str, int]] = []

    class Watch(Observer):
        def on_offset_reset(self, tp: tuple[str, int]) -> None:
            resets.append(tp)

    shell.loop._events.add(Watch())
    shell.assign(0)
    shell.consumer.produce(0, 3)
    shell.turn(2)
    for request in list(shell.dispatcher.sent):
        shell.finish(request)
    shell.commit_now()
    assert shell.consumer.committed[(TOPIC, 0)] == 3
    shell.consumer.position[(TOPIC, 0)] = 1  # the same log, fetched again from offset 1
    shell.turn(2)
    shell.commit_now()
    assert len(shell.dispatcher.sent) == 3  # nothing sent again
    assert shell.consumer.committed[(TOPIC, 0)] == 3
    assert resets == [(TOPIC, 0)]  # two records again, said and counted once


def test_a_lost_task_whose_outcome_can_never_be_seen_is_held_not_run_again() -> None:
    shell = make_shell(max_redispatch=2)
    held: list[str] = []

    class Watch(Observer):
        def on_unobservable(self, record: Record, task: str) -> None:
            held.append(task)

    shell.loop._events.add(Watch())
    shell.loop.lost.hold_lost_tasks_of(frozenset({"tasks.t"}))  # the worker check's verdict
    shell.assign(0)
    shell.consumer.produce(0, 1)
    shell.turn(2)
    for _ in range(4):
        shell.clock.now += 31
        shell.turn()
    assert shell.dispatched == [False]  # sent once, never again
    assert shell.dead_letters.letters == []
    assert held == ["tasks.t"] * 4
    shell.commit_now()
    assert shell.consumer.committed.get((TOPIC, 0), 0) == 0  # its record stays uncommitted


def test_a_commit_the_broker_lost_is_sent_again_within_ten_seconds(shell: Shell) -> None:
    shell.assign(0)
    shell.consumer.produce(0, 2)
    shell.turn(2)
    for request in list(shell.dispatcher.sent):
        shell.finish(request)
    shell.commit_now()
    assert shell.consumer.committed[(TOPIC, 0)] == 2
    shell.consumer.committed[(TOPIC, 0)] = 1  # a restarted broker lost the last commit
    for _ in range(3):
        shell.commit_now()  # 5 s each
    assert shell.consumer.committed[(TOPIC, 0)] == 2


def test_a_commit_waits_for_the_answer_to_the_one_before_it(shell: Shell) -> None:
    """librdkafka retries an unanswered OffsetCommit after a reconnect and may send it after a
    newer one: the broker then keeps the older offset (CI's chaos 08 saw 150 -> 30). So one
    asynchronous commit at a time: the next is sent once the previous one was answered."""
    shell.assign(0)
    shell.consumer.produce(0, 2)
    shell.turn(2)
    first, second = shell.dispatcher.sent
    shell.finish(first)
    shell.consumer.hold_answers = True  # Kafka went away with this commit in flight
    shell.commit_now()
    assert shell.consumer.commits[-1] == (True, {(TOPIC, 0): 1})
    sent = len(shell.consumer.commits)
    shell.finish(second)
    for _ in range(4):
        shell.commit_now()  # 20 s: past the periodic re-commit too
    assert len(shell.consumer.commits) == sent  # nothing overtakes the unanswered commit
    shell.consumer.hold_answers = False
    shell.consumer.answers.extend(shell.consumer.held)  # Kafka is back: the answer arrives
    shell.commit_now()
    assert shell.consumer.commits[-1] == (True, {(TOPIC, 0): 2})
    assert shell.consumer.committed[(TOPIC, 0)] == 2


def test_a_commit_never_answered_does_not_stop_commits_for_good(shell: Shell) -> None:
    shell.assign(0)
    shell.consumer.produce(0, 2)
    shell.turn(2)
    first, second = shell.dispatcher.sent
    shell.finish(first)
    shell.consumer.hold_answers = True
    shell.commit_now()
    sent = len(shell.consumer.commits)
    shell.consumer.hold_answers = False  # that answer is never delivered
    shell.finish(second)
    shell.commit_now()
    assert len(shell.consumer.commits) == sent
    shell.clock.now += COMMIT_ANSWER_TIMEOUT
    shell.commit_now()
    assert shell.consumer.commits[-1] == (True, {(TOPIC, 0): 2})


# == one record can never stop the others (issue 10) ==================================


class Unencodable(FakeDispatcher):
    """A broker codec that cannot take the message of the record at partition 0, offset 1."""

    def encode(self, request: TaskRequest) -> EncodedTask:
        if (request.headers["ckb_partition"], request.headers["ckb_offset"]) == (0, 1):
            raise RecursionError("maximum recursion depth exceeded while encoding")
        return super().encode(request)


def test_a_message_that_cannot_be_encoded_is_dead_lettered_alone() -> None:
    shell = make_shell()
    shell.dispatcher.__class__ = Unencodable
    shell.assign(0, 1)
    shell.consumer.produce(0, 3)
    shell.consumer.produce(1, 2)
    shell.turn(2)
    assert sorted(
        (r.headers["ckb_partition"], r.headers["ckb_offset"]) for r in shell.dispatcher.sent
    ) == [
        (0, 0),
        (0, 2),
        (1, 0),
        (1, 1),
    ]
    ((record, failure, _, _),) = shell.dead_letters.letters
    assert (record.partition, record.offset) == (0, 1)
    assert failure.reason == "decode_error"
    assert failure.error_class == "BridgeError.RecursionError"
    for request in shell.dispatcher.sent:
        shell.finish(request)
    shell.turn()
    shell.dead_letters.acknowledge_all()
    shell.commit_now()
    assert shell.consumer.committed[(TOPIC, 0)] == 3


def test_a_value_that_decodes_but_nests_too_deep_is_dead_lettered_when_its_turn_comes() -> None:
    shell = make_shell()
    shell.assign(0)
    shell.consumer.produce(0, 1, value=b"[" * 990 + b"]" * 990)
    shell.consumer.produce(0, 1, value=b"1" * 100_000)
    shell.consumer.produce(0, 1)
    shell.turn(2)
    assert [r.headers["ckb_offset"] for r in shell.dispatcher.sent] == [2]
    assert [letter[1].reason for letter in shell.dead_letters.letters] == ["decode_error"] * 2
    assert "max_json_depth" in shell.dead_letters.letters[0][1].error_message


def test_a_record_whose_headers_cannot_be_read_is_dead_lettered(shell: Shell) -> None:
    class BadHeaders(Message):
        def headers(self) -> None:
            raise SystemError("returned a result with an exception set")

    shell.assign(0)
    shell.consumer.log[(TOPIC, 0)] = [BadHeaders(TOPIC, 0, 0), Message(TOPIC, 0, 1)]
    shell.turn(2)
    assert [r.headers["ckb_offset"] for r in shell.dispatcher.sent] == [1]
    ((_, failure, _, _),) = shell.dead_letters.letters
    assert "header name is not valid UTF-8" in failure.error_message


def test_a_bug_reading_one_record_dead_letters_it_and_the_loop_goes_on(shell: Shell) -> None:
    original = shell.loop._intake.read

    def buggy(record: Record, epoch: int) -> Any:
        if record.offset == 0:
            raise KeyError("a bug")
        return original(record, epoch)

    shell.loop._intake.read = buggy  # type: ignore[method-assign]
    shell.assign(0)
    shell.consumer.produce(0, 2)
    shell.turn(2)
    assert [r.headers["ckb_offset"] for r in shell.dispatcher.sent] == [1]
    ((_, failure, _, _),) = shell.dead_letters.letters
    assert failure.error_class == "BridgeError.KeyError"


# == rate limits (issue 13) ==========================================================


@dataclass
class FakeBuckets:
    """A bucket that grants what the test puts in it; the route's clock is the shell's."""

    tokens: int = 0
    asked: list[int] = field(default_factory=list)

    def take(self, route: str, per_second: float, burst: int, wanted: int) -> Grant:
        self.asked.append(wanted)
        granted = min(self.tokens, wanted)
        self.tokens -= granted
        return Grant(granted, 0.0 if granted == wanted else 1.0 / per_second)


def limited_shell(**route: Any) -> tuple[Shell, FakeBuckets]:
    shell = make_shell(rate_limit="10/s", **route)
    buckets = FakeBuckets()
    shell.loop._sender._buckets = buckets  # type: ignore[assignment]
    return shell, buckets


def test_records_over_the_rate_wait_in_order_and_go_when_tokens_come() -> None:
    shell, buckets = limited_shell(ordering="partition")
    buckets.tokens = 2
    shell.assign(0)
    shell.consumer.produce(0, 1)
    shell.turn(2)
    shell.finish(shell.dispatcher.sent[0])
    shell.consumer.produce(0, 3)
    shell.turn(3)
    assert [r.headers["ckb_offset"] for r in shell.dispatcher.sent] == [0, 1]
    asked = len(buckets.asked)
    shell.turn(3)  # within the wait for the next token: Redis is not asked again
    assert len(buckets.asked) == asked
    shell.finish(shell.dispatcher.sent[1])
    buckets.tokens = 5
    shell.clock.now += 0.2
    shell.turn(3)
    assert [r.headers["ckb_offset"] for r in shell.dispatcher.sent] == [0, 1, 2]
    shell.finish(shell.dispatcher.sent[2])
    shell.turn(3)
    assert [r.headers["ckb_offset"] for r in shell.dispatcher.sent] == [0, 1, 2, 3]


def test_a_record_waiting_for_a_token_never_times_out() -> None:
    shell, buckets = limited_shell()
    shell.assign(0)
    shell.consumer.produce(0, 1)
    for _ in range(10):
        shell.clock.now += 30  # 300 s: the route's task_timeout, ten times over
        shell.turn()
    assert shell.dispatcher.sent == []
    assert shell.dead_letters.letters == []
    buckets.tokens = 1
    shell.clock.now += 1
    shell.turn(2)
    assert len(shell.dispatcher.sent) == 1


def test_a_message_over_the_broker_s_size_limit_is_dead_lettered_alone() -> None:
    """Once the broker refused a message as too large (RabbitMQ's max_message_size), a record
    whose message is larger is dead-lettered with the limit named; the others go."""
    shell = make_shell()
    shell.dispatcher.max_message_bytes = 200
    shell.assign(0)
    for value in (b'{"n": 0}', json.dumps({"blob": "x" * 500}).encode(), b'{"n": 2}'):
        shell.consumer.produce(0, 1, value=value)
    shell.turn(2)
    assert [r.headers["ckb_offset"] for r in shell.dispatcher.sent] == [0, 2]
    ((record, failure, _, _),) = shell.dead_letters.letters
    assert record.offset == 1 and failure.reason == "decode_error"
    assert "max_message_size (200)" in failure.error_message
