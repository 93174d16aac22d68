"""Fault-injection scenarios against the real stack: Kafka, Redis, Celery workers, `ckb run`.

Each scenario produces numbered records, runs bridges, injects one kind of fault, and then
checks the invariants I1-I5 (:mod:`tests.chaos.invariants`) and prints one summary line.
``CKB_CHAOS_PROFILE=full`` runs more records, more rounds of each fault and both group
protocols; the default SHORT profile keeps the whole suite to a few minutes.
"""

from __future__ import annotations

import os
import random
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import pytest
from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewTopic,
)

from bridge.stack import LocalStack, StackInfo
from tests.chaos.invariants import OK, Bounds
from tests.chaos.kit import (
    PROFILE,
    Planned,
    Profile,
    RunFactory,
    SupervisedWorker,
    children_of,
    held_task_ids,
    kill_9,
    kill_bridge_watchers,
    logged,
    numbered,
    record_value,
    redis_client,
    tasks_held,
    unread_by_broker,
)
from tests.figures import figure
from tests.integration.harness import (
    REDIS_BACK,
    REDIS_DOWN,
    SHARED_QUEUE,
    BridgeProcess,
    Executions,
    Worker,
    start_worker,
    unique,
    wait_for,
)

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(PROFILE.timeout)]


def worker_logged(worker: Worker, text: str) -> bool:
    return logged(worker.log_path, text) > 0


def progress_points(rounds: int, first: float = 0.2, last: float = 0.7) -> list[float]:
    """Fractions of the records executed at which the ``rounds`` faults start."""
    if rounds == 1:
        return [first]
    return [first + (last - first) * i / (rounds - 1) for i in range(rounds)]


# == 1 =================================================================================
def test_01_baseline(run: RunFactory, profile: Profile) -> None:
    partitions = 4
    planned = numbered(profile.records(600), partitions, seed=1)
    with run("01-baseline", planned, partitions) as sc:
        sc.start(bridges=1, rate=300)
        sc.finish(Bounds(duplicates=0))


# == 2 =================================================================================
def test_02_rolling_restart_with_sigterm(run: RunFactory, profile: Profile) -> None:
    partitions, instances = 6, 3
    planned = numbered(profile.records(900), partitions, seed=2, sleep_ms=(5, 40))
    restarts = instances * profile.rounds
    with run("02-rolling-sigterm", planned, partitions) as sc:
        sc.start(bridges=instances, rate=90)
        for point in progress_points(restarts, 0.1, 0.8):
            sc.wait_executed(point)
            oldest = sc.fleet.running()[0]
            assert sc.fleet.stop(oldest) == 0, oldest.log_tail()
            sc.fleet.start()
        sc.fault_over()
        sc.finish(Bounds(duplicates=0, recovery=90))


# == 3 =================================================================================
@pytest.mark.parametrize("protocol", PROFILE.protocols)
def test_03_kill_9_of_a_bridge_with_tasks_in_flight(
    run: RunFactory, profile: Profile, protocol: str, stack: StackInfo
) -> None:
    partitions, window = 4, 20
    # workers slower than the producer: a backlog, so the victim always has tasks in flight
    planned = numbered(profile.records(600), partitions, seed=3, sleep_ms=(50, 150))
    broker = redis_client(f"{stack.redis_url}/0")
    in_flight = []
    # KIP-848: the broker notices the dead member after its session timeout (45 s default)
    recovery = 60 if protocol == "cooperative-sticky" else 120
    with run(
        f"03-kill9-bridge[{protocol}]",
        planned,
        partitions,
        route={"max_in_flight": window},
        protocol=protocol,
    ) as sc:
        sc.start(bridges=2, rate=100)
        for point in progress_points(profile.rounds, 0.3, 0.6):
            sc.wait_executed(point)
            # after a kill under KIP-848 the dead member keeps its partitions for the broker's
            # session timeout: wait until work flows again, and kill the oldest member (the
            # one sure to own partitions), so every round hits a bridge with tasks in flight
            wait_for(lambda: tasks_held(broker, SHARED_QUEUE) > 0, 120, "tasks in flight")
            in_flight.append(tasks_held(broker, SHARED_QUEUE))
            sc.fleet.kill(sc.fleet.running()[0])
            sc.fault_over()
            sc.fleet.start()  # a replacement: the next round has a victim again
        sc.note(f"tasks in flight at each kill (both bridges): {in_flight}")
        sc.finish(Bounds(duplicates=window * partitions * profile.rounds, recovery=recovery))
    broker.close()
    assert all(in_flight), f"a kill found no task in flight: {in_flight}"


# == 4 =================================================================================
def test_04_sigstop_longer_than_session_timeout_then_sigcont(
    run: RunFactory, profile: Profile
) -> None:
    partitions, window = 4, 20
    planned = numbered(profile.records(600), partitions, seed=4, sleep_ms=(10, 50))
    # classic protocol: the broker drops a silent member after session.timeout.ms (6 s);
    # max.poll.interval.ms (7 s) is what the client itself enforces after SIGCONT
    consumer = {"max.poll.interval.ms": 7000}
    with run("04-sigstop", planned, partitions, consumer=consumer) as sc:
        # slow production: records keep coming after SIGCONT, so the victim rejoins with work
        sc.start(bridges=2, rate=25)
        victim = sc.fleet.running()[0]
        for round_, point in enumerate(progress_points(profile.rounds, 0.1, 0.5), start=1):
            sc.wait_executed(point)
            sc.wait_members(2)  # the victim owns partitions when it stops
            victim.process.send_signal(signal.SIGSTOP)
            try:
                # stopped past its session timeout: the broker dropped it from the group and
                # the other bridge owns every partition
                sc.wait_members(1)
            finally:
                victim.process.send_signal(signal.SIGCONT)
            sc.fault_over()
            sc.wait_logged("lost ", round_, timeout=30, bridge=victim)
        sc.finish(Bounds(duplicates=window * partitions * profile.rounds, recovery=60))


# == 5 =================================================================================
@pytest.mark.parametrize("protocol", PROFILE.protocols)
def test_05_rebalance_storm(run: RunFactory, profile: Profile, protocol: str) -> None:
    seed, partitions = 5, 6
    rng = random.Random(seed)
    planned = numbered(profile.records(1200), partitions, seed=seed, sleep_ms=(5, 30))
    events = []
    with run(f"05-storm[{protocol},seed={seed}]", planned, partitions, protocol=protocol) as sc:
        sc.start(bridges=2, rate=100)
        for _ in range(6 * profile.rounds):
            # the storm's schedule, by the clock on purpose: members come and go faster than
            # the group settles. Nothing is checked after the pause; finish() checks it all.
            time.sleep(rng.uniform(0.5, 2.5))
            running = sc.fleet.running()
            if len(running) < 2 or (len(running) < 4 and rng.random() < 0.5):
                sc.fleet.start(wait=False)
                events.append("+")
            else:
                code = sc.fleet.stop(rng.choice(running))
                events.append("-" if code == 0 else f"-({code})")
        if not sc.fleet.running():
            sc.fleet.start()
        sc.fault_over()
        sc.finish(Bounds(duplicates=0, recovery=90))
    figure(f"storm events: {' '.join(events)}")


# == 6 =================================================================================
def test_06_kill_9_of_a_celery_worker_mid_task(
    run: RunFactory, profile: Profile, stack: StackInfo, work_dir: Path
) -> None:
    queue, partitions, window, concurrency = unique("q-chaos-kill"), 2, 6, 4
    planned = numbered(profile.records(120), partitions, seed=6, sleep_ms=(200, 400))
    # in flight: 2 x 6 tasks on 4 processes of ~0.3 s, far below task_timeout (no false resend)
    route = {"queue": queue, "max_in_flight": window, "task_timeout": 6, "max_redispatch": 3}
    (work_dir / "w0").mkdir()
    workers = [start_worker(stack, queue, work_dir / "w0", concurrency=concurrency)]
    try:
        with run("06-kill9-worker", planned, partitions, route=route) as sc:
            sc.start(bridges=1)
            for round_, point in enumerate(progress_points(profile.rounds, 0.15, 0.5)):
                worker = workers[-1]
                # a) one pool process dies mid-task: acks_late + reject_on_worker_lost requeue it
                sc.wait_executed(point)
                kill_9(children_of(worker.process.pid)[0])
                wait_for(partial(worker_logged, worker, "signal 9"), 20, "the pool process loss")
                # b) the whole worker dies: its reserved tasks stay unacked in Redis (for the
                # visibility timeout, an hour), so only the bridge's re-send after
                # task_timeout finishes them
                sc.wait_executed(point + 0.2)
                pool = children_of(worker.process.pid)
                kill_9(worker.process.pid)
                for pid in pool:
                    kill_9(pid)
                worker.process.wait(10)
                (work_dir / f"w{round_ + 1}").mkdir()
                workers.append(
                    start_worker(stack, queue, work_dir / f"w{round_ + 1}", concurrency=concurrency)
                )
                sc.fault_over()
            sc.finish(Bounds(duplicates=window * partitions * profile.rounds, recovery=60))
            assert "sending it again" in sc.fleet.logs(200_000), "no re-send after the kill"
    finally:
        for worker in workers:
            worker.stop()


# == 8 =================================================================================
KAFKA_STOPS = ["sigterm"] if PROFILE.name == "short" else ["sigterm", "sigkill"]
#: librdkafka's line when the bridge's consumer loses or cannot reach a broker; the bridge
#: logs it from inside its loop's consume() call, so it also shows the loop turned after it
CONSUMER_FAIL = "FAIL [ckb-consumer-"


def consumer_failures(bridges: list[BridgeProcess]) -> list[int]:
    """How many connection failures of its consumer each bridge logged so far."""
    return [logged(b.log_path, CONSUMER_FAIL) for b in bridges]


@pytest.mark.parametrize("how", KAFKA_STOPS)
def test_08_kafka_broker_stopped_and_restarted(
    run: RunFactory, profile: Profile, local_stack: LocalStack, how: str
) -> None:
    partitions, window = 3, 20
    # all records produced up front, tasks slow enough for a backlog at the outage: the
    # test's own producer stays out of it (an idempotent librdkafka producer once stalled
    # for good after a broker restart here, which would blame the bridge for its records)
    planned = numbered(profile.records(450), partitions, seed=8, sleep_ms=(50, 150))
    outages = []
    with run(f"08-kafka-restart[{how}]", planned, partitions) as sc:
        sc.start(bridges=2)
        sc.producer_done()
        for point in progress_points(profile.rounds, 0.25, 0.6):
            sc.wait_executed(point)
            bridges = sc.fleet.running()
            before = consumer_failures(bridges)
            down = time.monotonic()
            try:
                local_stack.stop_kafka(kill=how == "sigkill")
                # Kafka stays away until every bridge's consumer reported the loss
                wait_for(
                    lambda bridges=bridges, before=before: all(
                        now > then
                        for now, then in zip(consumer_failures(bridges), before, strict=True)
                    ),
                    60,
                    "every bridge's consumer to report the broker gone",
                )
                assert all(b.alive() for b in bridges), "a bridge died with Kafka"
            finally:
                local_stack.start_kafka()  # ALWAYS: the whole session shares this broker
            outages.append(round(time.monotonic() - down, 1))
            sc.fault_over()
        sc.note(f"Kafka away {outages}s")
        sc.finish(Bounds(duplicates=window * partitions * profile.rounds, recovery=120))


class ShutdownHang(AssertionError):
    """A bridge did not stop within its bound after SIGTERM while Kafka did not answer."""


#: the 08b bridges' limits.shutdown_grace (5) + the dead-letter flush (5) + the loop's
#: COMMIT_WAIT (10) + CLOSE_WAIT (10) + slack: what "SIGTERM stops the bridge in bounded
#: time" allows (Semantics 9). Consumer.close() has no timeout of its own and used to wait
#: for as long as the broker did not answer (cf. librdkafka #3740).
SHUTDOWN_BOUND = 35.0


@contextmanager
def kafka_frozen(local_stack: LocalStack) -> Iterator[None]:
    """The broker stops answering (SIGSTOP), like a hung broker or a network partition."""
    pid = local_stack.status()["kafka"]["pid"]
    assert pid is not None, "Kafka is not running"
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)  # ALWAYS: the whole session shares this broker


#: the moments of a freeze 08b sends SIGTERM at: requests (commits, heartbeats, a fetch) wait
#: on the frozen broker; the group session timed out and the assignment is lost
PENDING, SESSION_LOST = "requests pending", "session lost"


def wait_exit(bridge: BridgeProcess, timeout: float) -> float | None:
    began = time.monotonic()
    while bridge.alive() and time.monotonic() - began < timeout:
        time.sleep(0.1)
    return None if bridge.alive() else round(time.monotonic() - began, 1)


def test_08b_sigterm_while_the_broker_does_not_answer(
    run: RunFactory, profile: Profile, local_stack: LocalStack, stack: StackInfo
) -> None:
    partitions, window = 4, 20
    planned = numbered(profile.records(300), partitions, seed=81, sleep_ms=(100, 200))
    # SIGTERM before the session timeout (commits in flight) and, in FULL, after it (lost)
    moments = (PENDING,) if profile.name == "short" else (PENDING, SESSION_LOST)
    kafka_port = int(stack.kafka_bootstrap.rsplit(":", 1)[1])
    took: list[float | None] = []
    into: list[float] = []
    with run("08b-sigterm-broker-frozen", planned, partitions, limits={"shutdown_grace": 5}) as sc:
        sc.start(bridges=2)
        sc.producer_done()  # as in 08: no records of the test's own in flight to the broker
        for point, moment in zip(progress_points(len(moments), 0.2, 0.5), moments, strict=True):
            sc.wait_executed(point)
            leaving = sc.fleet.running()[0]
            losses = logged(leaving.log_path, "lost ")
            with kafka_frozen(local_stack):
                frozen_at = time.monotonic()
                if moment == PENDING:  # well before session.timeout.ms (6 s)
                    wait_for(
                        lambda b=leaving: unread_by_broker(kafka_port, b.pid) > 0,
                        4,
                        "the bridge's requests to wait on the frozen broker",
                        0.05,
                    )
                else:  # librdkafka gave up on the coordinator and the assignment
                    wait_for(
                        lambda b=leaving, n=losses: logged(b.log_path, "lost ") > n,
                        30,
                        "the bridge's group session to time out",
                        0.1,
                    )
                into.append(round(time.monotonic() - frozen_at, 1))
                leaving.process.send_signal(signal.SIGTERM)
                took.append(wait_exit(leaving, SHUTDOWN_BOUND))
            sc.fault_over()
            if wait_exit(leaving, 30) is None:  # the broker answers again: it may stop now
                sc.fleet.kill(leaving)
            else:
                sc.fleet.exit_codes[sc.fleet.name_of(leaving)] = leaving.process.returncode
            sc.fleet.start()
        sc.note(
            f"SIGTERM at {', '.join(moments)} ({into}s into the freeze); "
            f"exit within the freeze after {took}s"
        )
        sc.finish(Bounds(duplicates=window * partitions * len(moments), recovery=120))
    if None in took:
        raise ShutdownHang(f"SIGTERM with the broker frozen: exit after {took}s (None: not in "
                           f"{SHUTDOWN_BOUND:.0f}s)")  # fmt: skip


# == 9 =================================================================================
def _max_message_bytes(admin: AdminClient, topic: str, value: int) -> None:
    entry = ConfigEntry(
        "max.message.bytes", str(value), incremental_operation=AlterConfigOpType.SET
    )
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic, incremental_configs=[entry])
    for future in admin.incremental_alter_configs([resource]).values():
        future.result(30)


def test_09_dlq_writes_fail_for_a_while_then_recover(
    run: RunFactory, profile: Profile, stack: StackInfo
) -> None:
    partitions, total, window = 2, profile.records(200), 20
    planned = [
        Planned(n, n % partitions, record_value(n, 5, "always_fail"), "task_failed")
        if n % 5 == 0
        else Planned(n, n % partitions, record_value(n, 5))
        for n in range(total)
    ]
    admin = AdminClient({"bootstrap.servers": stack.kafka_bootstrap})
    with run("09-dlq-outage", planned, partitions, route={"max_in_flight": window}) as sc:
        # a DLQ that refuses every dead letter (each is over 200 bytes) until it is fixed
        dlq = NewTopic(sc.dlq_topic, 1, 1, config={"max.message.bytes": "200"})
        admin.create_topics([dlq])[sc.dlq_topic].result(30)
        sc.start(bridges=1, rate=40)
        for round_ in range(1, profile.rounds + 1):
            if round_ > 1:
                _max_message_bytes(admin, sc.dlq_topic, 200)
            # refused even without their values: the bridge says so once per outage
            sc.wait_logged("cannot write dead letters to", round_, timeout=60)
            # the outage lasts until records after the refused ones ran: their commits are
            # held by the failed records (the invariants check every commit sampled)
            ran = sc.executed()
            wait_for(
                lambda ran=ran: sc.executed() >= ran + window,
                60,
                f"{window} more executions while the DLQ refuses",
            )
            _max_message_bytes(admin, sc.dlq_topic, 1_048_576)
            sc.fault_over()
            sc.wait_logged("are written again", round_, timeout=60)
        # backoff between DLQ retries grows to 30 s, so recovery can take that long
        sc.finish(Bounds(duplicates=0, recovery=75))


# == 10 ================================================================================
#: value → what the record must end as (route below: payload json, call arg, 4 KiB limit)
POISON: list[tuple[bytes | None, str]] = [
    (b"\xff\xfe\x00 not utf-8", "decode_error"),
    (b'{"n": 1, "truncated', "decode_error"),
    (None, "decode_error"),  # a tombstone
    (b'{"pad": "' + b"x" * 8192 + b'"}', "decode_error"),  # over max_payload_bytes
    (b"null", OK),  # odd but valid: the task receives None
    (b'"a plain string"', OK),
]


def poisoned(total: int, partitions: int, seed: int) -> list[Planned]:
    rng = random.Random(seed)
    planned = []
    for n in range(total):
        partition = n % partitions
        if n % 13 == 5:
            value, expect = POISON[(n // 13) % len(POISON)]
            planned.append(Planned(n, partition, value, expect))
        elif n % 10 == 3:
            planned.append(Planned(n, partition, record_value(n, 1, "always_fail"), "task_failed"))
        elif n % 10 == 7:  # Celery retries it once, then it succeeds
            planned.append(Planned(n, partition, record_value(n, 1, "fail_once")))
        else:
            planned.append(Planned(n, partition, record_value(n, rng.randint(0, 20))))
    return planned


def test_10_poison_records_mixed_into_the_stream(run: RunFactory, profile: Profile) -> None:
    partitions = 4
    planned = poisoned(profile.records(600), partitions, seed=10)
    route = {"max_payload_bytes": 4096}
    with run("10-poison", planned, partitions, route=route) as sc:
        sc.start(bridges=1, rate=200)
        report = sc.finish(Bounds(duplicates=0))
    assert report.dead_letters == sum(p.expect != OK for p in planned)


# == 11 ================================================================================
#: Celery's Redis result backend keeps a task's outcome under this prefix + its id
RESULT_KEY = "celery-task-meta-"


def test_11_result_expires_before_the_bridge_reads_it(
    run: RunFactory, profile: Profile, stack: StackInfo, work_dir: Path
) -> None:
    queue, partitions, window = unique("q-chaos-expiry"), 2, 8
    total = profile.records(16)
    planned = numbered(total, partitions, seed=11, sleep_ms=(1500, 1500))
    worker = start_worker(
        stack,
        queue,
        work_dir,
        concurrency=2 * window,
        app="tests.chaos.expiring_worker_app",
        pool="threads",
        env={"CKB_CHAOS_RESULT_EXPIRES": "1"},  # shorter than the 1.5 s the task runs
    )
    route = {"queue": queue, "max_in_flight": window, "task_timeout": 5, "max_redispatch": 3}
    admin = redis_client(stack.redis_url)
    broker = redis_client(f"{stack.redis_url}/0")
    results = redis_client(f"{stack.redis_url}/1")
    try:
        # a session timeout above the SIGSTOP below: this is not a rebalance scenario
        with run(
            "11-result-expiry",
            planned,
            partitions,
            route=route,
            consumer={"session.timeout.ms": 20000, "heartbeat.interval.ms": 2000},
        ) as sc:
            sc.start(bridges=1)
            bridge = sc.fleet.running()[0]
            wait_for(lambda: tasks_held(broker, queue) >= window, 30, "tasks to start")
            # the bridge freezes and its pub/sub connection (only that one: dropping the
            # worker's would make kombu re-queue its unacked tasks) is dropped: every outcome
            # published meanwhile is gone, and each result key expires before the bridge
            # reads it again. Only task_timeout (a re-send, same task id) can finish them.
            bridge.process.send_signal(signal.SIGSTOP)
            try:
                assert kill_bridge_watchers(admin), "the bridge held no pub/sub connection"
                frozen = held_task_ids(broker, queue)
                assert frozen, "no task in flight when the bridge froze"
                # the bridge stays frozen until its tasks finished and their results expired
                wait_for(
                    lambda: (
                        not frozen & held_task_ids(broker, queue)
                        and not results.exists(*(RESULT_KEY + task_id for task_id in frozen))
                    ),
                    30,
                    f"the {len(frozen)} tasks in flight to finish and their results to expire",
                )
            finally:
                bridge.process.send_signal(signal.SIGCONT)
            sc.fault_over()
            sc.finish(Bounds(duplicates=2 * window, recovery=60))
            assert "sending it again" in bridge.log_tail(500_000)
    finally:
        worker.stop()
        admin.close()
        broker.close()
        results.close()


# == 7 =================================================================================
# Last in the file: a Redis restart reaches every worker of the session, and kombu's Redis
# transport can crash a worker that is acking at that moment (`Unrecoverable error:
# AttributeError: 'NoneType' object has no attribute 'hostname'`), so these scenarios run
# their own worker under a supervisor that restarts it, as systemd or Kubernetes would.
@pytest.fixture(scope="module")
def recorder_worker(
    stack: StackInfo, recorder_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[SupervisedWorker, Executions]]:
    """A supervised worker recording in the recorder Redis, which no fault here touches."""
    queue = unique("q-chaos-recorded")
    env = {"CKB_IT_RECORDER_URL": recorder_url}
    worker = SupervisedWorker(
        lambda log_dir: start_worker(stack, queue, log_dir, concurrency=4, env=env),
        queue,
        tmp_path_factory.mktemp("recorded-worker"),
    )
    client = redis_client(recorder_url)
    yield worker, Executions(client)
    worker.stop()
    client.close()


def test_07a_redis_restarted_mid_run(
    run: RunFactory,
    profile: Profile,
    local_stack: LocalStack,
    recorder_worker: tuple[SupervisedWorker, Executions],
) -> None:
    worker, recorder = recorder_worker
    queue, restarts = worker.queue, worker.restarts
    partitions, window = 3, 20
    planned = numbered(profile.records(450), partitions, seed=7, sleep_ms=(5, 30))
    # queued tasks and stored results vanish with Redis: re-sending after task_timeout
    # finishes the queued ones, tasks that ran but lost their result run again
    route = {"queue": queue, "max_in_flight": window, "task_timeout": 8, "max_redispatch": 5}
    with run("07a-redis-restart", planned, partitions, route=route, recorder=recorder) as sc:
        sc.start(bridges=1, rate=60)
        bridge = sc.fleet.running()[0]
        for point in progress_points(profile.rounds, 0.3, 0.6):
            sc.wait_executed(point)
            wait_for(  # over the previous outage, by its own account
                lambda: logged(bridge.log_path, REDIS_BACK) == logged(bridge.log_path, REDIS_DOWN),
                60,
                "the bridge to have Redis back",
            )
            outages = logged(bridge.log_path, REDIS_DOWN)
            try:
                local_stack.stop_redis()
                # Redis stays away until the bridge noticed (its result watcher lost it)
                wait_for(
                    lambda n=outages: logged(bridge.log_path, REDIS_DOWN) > n,
                    30,
                    "the bridge to notice Redis left",
                )
            finally:
                local_stack.start_redis()  # the whole session shares this Redis
            sc.fault_over()
        sc.note(f"worker restarts by its supervisor: {worker.restarts - restarts}")
        window_total = window * partitions * profile.rounds
        # a task that finishes while Redis is away cannot store its result; Celery then stores
        # FAILURE ("Exception raised outside body": ConnectionError) once Redis is back, and
        # the bridge dead-letters a record whose task body did run (counted, not lost)
        sc.finish(Bounds(duplicates=window_total, spurious_dead_letters=window_total, recovery=90))


@pytest.mark.parametrize("target", ["bridge-only", "all-pubsub"])
def test_07b_pubsub_connection_killed(
    run: RunFactory,
    profile: Profile,
    stack: StackInfo,
    recorder_worker: tuple[SupervisedWorker, Executions],
    target: str,
) -> None:
    """``bridge-only`` drops the bridge's watcher connection alone; ``all-pubsub`` runs
    ``CLIENT KILL TYPE pubsub``, which also drops the Celery worker's broadcast connection:
    the worker then reconnects and kombu re-queues the messages it had not acked, so those
    tasks run twice. That is Celery's at-least-once, not the bridge's: it never re-sends."""
    worker, recorder = recorder_worker
    queue, restarts = worker.queue, worker.restarts
    partitions, window = 3, 20
    planned = numbered(profile.records(450), partitions, seed=71, sleep_ms=(5, 30))
    # task_timeout far above the recovery bound: the reconcile sweep, not a re-send, must
    # find the outcomes published while the watcher's connection was down
    route = {"queue": queue, "max_in_flight": window, "task_timeout": 60}
    admin = redis_client(stack.redis_url)
    kills = []
    duplicates = 0 if target == "bridge-only" else window * partitions * profile.rounds
    with run(
        f"07b-pubsub-kill[{target}]", planned, partitions, route=route, recorder=recorder
    ) as sc:
        sc.start(bridges=1, rate=60)
        for point in progress_points(3 * profile.rounds, 0.2, 0.7):
            sc.wait_executed(point)
            if target == "bridge-only":
                kills.append(kill_bridge_watchers(admin))
            else:
                kills.append(admin.client_kill_filter(_type="pubsub"))
            sc.fault_over()
        sc.note(f"connections killed per round: {kills}")
        sc.note(f"worker restarts by its supervisor: {worker.restarts - restarts}")
        sc.finish(Bounds(duplicates=duplicates, recovery=30))
        log = sc.fleet.logs(500_000)
    admin.close()
    assert all(kills), "no pub/sub connection was killed"
    assert REDIS_DOWN in log, "the watcher never saw its connection go"
    assert "sending it again" not in log, "outcomes were found by re-sending, not by the sweep"
