"""The core path with Redis as the Celery broker and PostgreSQL as the result backend
(``db+postgresql://``), and the database result source and ledger on their own.

A real PostgreSQL (the session's ``postgres_node``), real Celery workers storing their results
in it with Celery's database backend, the bridge reading them by batched sweeps of
``celery_taskmeta``: records run and are committed after success, never ahead; failures are
dead-lettered; kill -9 of the bridge loses nothing.
"""

from __future__ import annotations

import json
import os
import random
import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import sqlalchemy as sa
from celery import Celery

from bridge.db_ledger import MARKER_TABLE, DatabaseLedger, TableMarkers
from bridge.db_results import CHUNK, DatabaseResults, database_url, result_decoder, task_table
from bridge.results import TaskEvent
from bridge.stack import StackInfo
from bridge.stack.postgres import PostgresNode
from tests.figures import figure
from tests.integration.harness import (
    Executions,
    Kafka,
    Worker,
    bridge_config,
    start_bridge,
    start_worker,
    unique,
    wait_for,
)
from tests.integration.test_core_path import CommitProbe
from tests.integration.test_failure_path import dlq_messages


@pytest.fixture(scope="module")
def queue() -> str:
    return unique("q-pg")


@pytest.fixture(scope="module")
def pg_worker(
    postgres_stack: StackInfo, queue: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Worker]:
    worker = start_worker(postgres_stack, queue, tmp_path_factory.mktemp("pg-worker"), 8)
    yield worker
    worker.stop()


def route(topic: str, queue: str, **extra: object) -> dict[str, object]:
    return {"topic": topic, "task": "it.record", "queue": queue, "call": "arg", **extra}


def runs_of(executions: Executions, topic: str) -> Counter[tuple[int, int]]:
    return Counter((run["ckb_partition"], run["ckb_offset"]) for run in executions.of(topic))


def test_records_run_and_commit_after_success_never_ahead(
    postgres_stack: StackInfo,
    kafka: Kafka,
    executions: Executions,
    pg_worker: Worker,
    queue: str,
    work_dir: Path,
) -> None:
    partitions, total = 3, 900
    topic = kafka.create_topic(partitions, prefix="pg-core")
    group = unique("g-pg-core")
    rng = random.Random(5)
    values = (json.dumps({"n": i, "sleep_ms": rng.randint(0, 20)}).encode() for i in range(total))
    kafka.produce(topic, values, partition_of=lambda i: i % partitions)
    config = bridge_config(postgres_stack, group, [route(topic, queue)])
    assert config["celery"]["result_backend"].startswith("db+postgresql://")
    bridge = start_bridge(config, work_dir)
    started = time.monotonic()
    try:
        with CommitProbe(kafka, group, topic, partitions) as probe:
            wait_for(lambda: kafka.caught_up(group, topic, partitions), 120, "all committed")
        elapsed = time.monotonic() - started
    finally:
        exit_code = bridge.terminate()
    assert exit_code == 0, bridge.log_tail()

    done = runs_of(executions, topic)
    assert len(done) == total, f"{total - len(done)} records never ran"
    finished_at: dict[tuple[int, int], float] = {}
    for run in executions.of(topic):
        key = (run["ckb_partition"], run["ckb_offset"])
        finished_at[key] = min(finished_at.get(key, run["end"]), run["end"])
    ahead = [
        (p, offset)
        for read_at, sample in probe.samples
        for p, committed in sample.items()
        for offset in range(max(committed, 0))
        if finished_at.get((p, offset), float("inf")) > read_at
    ]
    assert not ahead, f"committed past unfinished records: {ahead[:5]}"
    figure(
        f"Redis/PostgreSQL core path: {total} records, {partitions} partitions, {elapsed:.1f}s, "
        f"{total / elapsed:.0f} records/s, {sum(done.values()) - total} duplicate runs"
    )


def test_a_failing_task_is_dead_lettered(
    postgres_stack: StackInfo,
    kafka: Kafka,
    executions: Executions,
    pg_worker: Worker,
    queue: str,
    work_dir: Path,
) -> None:
    total = 60
    topic = kafka.create_topic(2, prefix="pg-fail")
    group = unique("g-pg-fail")

    def value(n: int) -> bytes:
        mode = "always_fail" if n % 10 == 3 else "fail_once" if n % 10 == 7 else "ok"
        return json.dumps({"n": n, "mode": mode}).encode()

    kafka.produce(topic, (value(n) for n in range(total)), partition_of=lambda n: n % 2)
    config = bridge_config(postgres_stack, group, [route(topic, queue)])
    bridge = start_bridge(config, work_dir)
    try:
        wait_for(lambda: kafka.caught_up(group, topic, 2), 90, "all committed")
    finally:
        exit_code = bridge.terminate()
    assert exit_code == 0, bridge.log_tail()

    always = {n for n in range(total) if n % 10 == 3}
    dead = dlq_messages(kafka, f"{topic}.dlq")
    failed = sorted(json.loads(d["value"])["n"] for d in dead)  # type: ignore[arg-type]
    assert failed == sorted(always), "each failing record dead-lettered exactly once"
    headers = [d["headers"] for d in dead]
    assert {h["ckb.reason"] for h in headers} == {b"task_failed"}  # type: ignore[index]
    # the exception came from the result column (json), not just the state
    assert {h["ckb.error.class"] for h in headers} == {b"PlannedFailure"}  # type: ignore[index]
    ran = {run["payload"]["n"] for run in executions.of(topic)}
    assert ran == set(range(total)) - always, "the others (fail-once too) succeeded"


def test_kill_9_of_the_bridge_loses_nothing_and_never_commits_ahead(
    postgres_stack: StackInfo,
    kafka: Kafka,
    executions: Executions,
    pg_worker: Worker,
    queue: str,
    work_dir: Path,
) -> None:
    partitions, total = 2, 400
    topic = kafka.create_topic(partitions, prefix="pg-kill")
    values = (json.dumps({"n": n, "sleep_ms": 10}).encode() for n in range(total))
    kafka.produce(topic, values, partition_of=lambda n: n % partitions)
    # a killed member's partitions move after its session timeout: keep it short
    consumer = {"session.timeout.ms": "6000", "heartbeat.interval.ms": "1000"}
    routes = [route(topic, queue, max_in_flight=50)]
    group = unique("g-pg-kill")
    config = bridge_config(postgres_stack, group, routes, kafka={"consumer": consumer})
    first = start_bridge(config, work_dir, "first")
    try:
        wait_for(lambda: executions.count(topic) >= total // 3, 60, "a third of the records")
        os.kill(first.process.pid, signal.SIGKILL)
        first.process.wait(10)
    finally:
        first.kill()
    committed = kafka.committed(group, topic, partitions)
    finished = runs_of(executions, topic)  # read after the commits: only more can finish
    for p, offset in committed.items():
        unfinished = [o for o in range(max(offset, 0)) if (p, o) not in finished]
        assert not unfinished, f"partition {p} committed {offset} ahead of {unfinished[:5]}"
    assert sum(max(o, 0) for o in committed.values()) < total, "killed before the end"

    second = start_bridge(config, work_dir, "second")
    try:
        wait_for(lambda: kafka.caught_up(group, topic, partitions), 90, "all committed")
    finally:
        assert second.terminate() == 0, second.log_tail()
    runs = runs_of(executions, topic)
    assert len(runs) == total, f"{total - len(runs)} records lost"
    # the second bridge found the first one's finished tasks in celery_taskmeta and its sent
    # ones by their markers in the broker's Redis: duplicates only of tasks running at the kill
    duplicates = sum(runs.values()) - total
    assert duplicates <= 100, f"{duplicates} duplicate runs: the ledger was not read"
    figure(f"Redis/PostgreSQL kill -9: {total} records, {duplicates} duplicate runs")


# -- the result source and the ledger on their own: the real PostgreSQL, and SQLite through ---
# -- the same SQLAlchemy code (db+sqlite://, no server) -------------------------------------


@pytest.fixture(params=["postgres", "sqlite"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A ``db+…`` result backend URL."""
    if request.param == "sqlite":
        return f"db+sqlite:///{tmp_path / 'results.sqlite'}"
    node: PostgresNode = request.getfixturevalue("postgres_node")
    return node.result_backend


def store(app: Celery, task_id: str, state: str, result: object = None) -> None:
    """Store a result as a worker does (Celery's own database backend)."""
    app.backend.store_result(
        task_id, result, state, traceback="Traceback: boom" if result else None
    )


def test_sweeps_read_open_ids_with_one_query_per_chunk(database: str) -> None:
    app = Celery(backend=database)
    app.conf.result_serializer = "json"
    prefix = unique("sweep")
    ids = [f"{prefix}-{n}" for n in range(2 * CHUNK + 10)]  # three chunks
    store(app, ids[0], "SUCCESS", 1)
    store(app, ids[1], "FAILURE", ValueError("no such order"))
    store(app, ids[-1], "SUCCESS", 3)
    engine = sa.create_engine(database_url(database))
    source = DatabaseResults(engine, task_table(app), result_decoder(app), longest_interval=1.0)
    source.watch(ids)
    source.start()
    try:
        events: dict[str, TaskEvent] = {}
        deadline = time.monotonic() + 20
        while len(events) < 3 and time.monotonic() < deadline:
            event = source.completions.get(timeout=deadline - time.monotonic())
            events[event.task_id] = event
        assert source.healthy
        assert events[ids[0]].state == "SUCCESS"
        failure = events[ids[1]]
        assert (failure.state, failure.error_class) == ("FAILURE", "ValueError")
        assert failure.error_message == "no such order" and failure.traceback
        assert events[ids[-1]].state == "SUCCESS"
        sweeps, queries = source.sweeps, source.queries
        time.sleep(0.6)  # sweeps keep going for the ids still open: each costs 3 queries
        swept = source.sweeps - sweeps
        assert swept >= 1 and source.queries - queries == 3 * swept
        finals = source.stored_finals(ids)
        assert set(finals) == {ids[0], ids[1], ids[-1]}
    finally:
        source.stop()


def test_ledger_markers_in_a_table_one_statement_per_batch(database: str) -> None:
    app = Celery(backend=database)
    prefix = unique("ledger")
    done, sent, fresh = f"{prefix}-done", f"{prefix}-sent", f"{prefix}-fresh"
    store(app, done, "SUCCESS", 1)
    engine = sa.create_engine(database_url(database))
    statements: list[str] = []
    sa.event.listen(engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    source = DatabaseResults(engine, task_table(app), result_decoder(app))
    ledger = DatabaseLedger(source, TableMarkers(engine))
    many = [f"{prefix}-batch-{n}" for n in range(300)]
    ledger.mark([sent, *many], ttl=60)
    inserts = [s for s in statements if s.lstrip().upper().startswith("INSERT")]
    assert len(inserts) == 1, f"one upsert per batch, not {len(inserts)}"
    ledger.mark([sent], ttl=60)  # again: the expiry moves, no duplicate-key error
    statements.clear()
    known = ledger.lookup([done, sent, fresh])
    assert set(known.finals) == {done} and known.in_progress == {sent}
    selects = [s for s in statements if s.lstrip().upper().startswith("SELECT")]
    assert len(selects) == 2, "one query for the results, one for the markers"
    ledger.mark([fresh], ttl=1)
    with engine.begin() as connection:  # as if its time had passed
        table = sa.table(MARKER_TABLE, sa.column("task_id"), sa.column("expires_at"))
        connection.execute(
            sa.update(table).where(table.c.task_id == fresh).values(expires_at=time.time() - 1)
        )
    assert ledger.lookup([fresh]).in_progress == set(), "an expired marker is no marker"
    engine.dispose()


def test_markers_go_to_the_broker_redis_when_the_broker_is_redis(
    stack: StackInfo, postgres_node: PostgresNode
) -> None:
    from bridge.result_source import open_results
    from bridge.settings import CelerySettings, Route, Settings

    celery = CelerySettings(
        broker_url=f"{stack.redis_url}/0", result_backend=postgres_node.result_backend
    )
    settings = Settings(celery=celery, routes=[Route(topic="t", task="x", rate_limit="5/s")])
    parts = open_results(settings, Celery(backend=celery.result_backend, broker=celery.broker_url))
    task_id = unique("marked")
    try:
        assert parts.redis is not None, "the rate limiter's buckets: the broker's Redis"
        parts.ledger.mark([task_id], ttl=30)
        assert parts.ledger.lookup([task_id]).in_progress == {task_id}
        client = redis.Redis.from_url(f"{stack.redis_url}/0")
        assert client.ttl(f"ckb-dispatched-{task_id}") > 0
        client.close()
    finally:
        parts.source.stop()
        for close in parts.closers:
            close()
