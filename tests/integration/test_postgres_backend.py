"""The core path with Redis as the Celery broker and PostgreSQL as the result backend
(``db+postgresql://``), and the database result source and ledger on their own.

A real PostgreSQL (the session's ``postgres_node``), real Celery workers storing their results
in it with Celery's database backend, the bridge reading them by batched sweeps of
``celery_taskmeta``: records run and are committed after success, never ahead; failures are
dead-lettered; kill -9 of the bridge loses nothing.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import sqlalchemy as sa
from celery import Celery

from bridge.db_ledger import MARKER_TABLE, DatabaseLedger, TableMarkers
from bridge.db_results import DatabaseResults, database_url, result_decoder, task_table
from bridge.polled_results import CHUNK
from bridge.results import TaskEvent
from bridge.stack import StackInfo
from bridge.stack.postgres import PostgresNode
from tests.integration import core_scenarios as core
from tests.integration.harness import (
    Executions,
    Kafka,
    Worker,
    bridge_config,
    free_port,
    start_worker,
    unique,
    wait_for,
)

NAME = "Redis/PostgreSQL"


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


def test_records_run_and_commit_after_success_never_ahead(
    postgres_stack: StackInfo,
    kafka: Kafka,
    executions: Executions,
    pg_worker: Worker,
    queue: str,
    work_dir: Path,
) -> None:
    assert bridge_config(postgres_stack, "g", [])["celery"]["result_backend"].startswith(
        "db+postgresql://"
    )
    core.commit_after_success_never_ahead(
        postgres_stack, kafka, executions, queue, work_dir, NAME, total=900, seed=5
    )


def test_a_failing_task_is_dead_lettered(
    postgres_stack: StackInfo,
    kafka: Kafka,
    executions: Executions,
    pg_worker: Worker,
    queue: str,
    work_dir: Path,
) -> None:
    dead = core.failing_tasks_dead_lettered(
        postgres_stack, kafka, executions, queue, work_dir, NAME
    )
    # the exception came from the result column (json), not just the state
    classes = {d["headers"]["ckb.error.class"] for d in dead}
    assert classes == {b"PlannedFailure"}


def test_kill_9_of_the_bridge_loses_nothing_and_never_commits_ahead(
    postgres_stack: StackInfo,
    kafka: Kafka,
    executions: Executions,
    pg_worker: Worker,
    queue: str,
    work_dir: Path,
) -> None:
    duplicates = core.kill_9_loses_nothing(
        postgres_stack, kafka, executions, queue, work_dir, NAME, total=400
    )
    # the second bridge found the first one's finished tasks in celery_taskmeta and its sent
    # ones by their markers in the broker's Redis: duplicates only of tasks running at the kill
    assert duplicates <= 100, f"{duplicates} duplicate runs: the ledger was not read"


@pytest.fixture(scope="module")
def rabbit_pg_stack(rabbitmq_stack: StackInfo, postgres_node: PostgresNode) -> StackInfo:
    """RabbitMQ as the broker and PostgreSQL as the backend: no Redis for the bridge at all."""
    return dataclasses.replace(rabbitmq_stack, postgres_url=postgres_node.url)


def test_rabbitmq_and_postgres_kill_9_uses_the_markers_table(
    rabbit_pg_stack: StackInfo,
    postgres_node: PostgresNode,
    kafka: Kafka,
    executions: Executions,
    work_dir: Path,
) -> None:
    """With no Redis anywhere the dispatch markers live in ckb_dispatch_markers: the second
    bridge reads them (and the results) after a kill -9 of the first; nothing lost."""
    queue = unique("q-rmq-pg")
    (work_dir / "worker").mkdir()
    worker = start_worker(rabbit_pg_stack, queue, work_dir / "worker", 4)
    try:
        core.kill_9_loses_nothing(
            rabbit_pg_stack, kafka, executions, queue, work_dir, "RabbitMQ/PostgreSQL", 240
        )
    finally:
        worker.stop()
    engine = sa.create_engine(postgres_node.url)
    with engine.connect() as connection:
        marked = connection.execute(sa.text(f"SELECT count(*) FROM {MARKER_TABLE}")).scalar()
    engine.dispose()
    assert marked, "the bridges kept their dispatch markers in the table"


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


def test_health_tells_the_truth_with_nothing_open(postgres_node: PostgresNode) -> None:
    """No open task, no sweep query; still an idle ``SELECT 1`` says whether the database
    answers, so ``/readyz`` is red while it is away, not only once tasks are open."""
    app = Celery(backend=postgres_node.result_backend)
    nobody = f"postgresql://ckb@127.0.0.1:{free_port()}/postgres"  # nothing listens there
    for url, answers in ((postgres_node.url, True), (nobody, False)):
        engine = sa.create_engine(url, connect_args={"connect_timeout": 2})
        source = DatabaseResults(engine, task_table(app), result_decoder(app))
        source.start(wait=3)
        try:
            assert source.healthy is answers, url
            assert source.queries == 0, "the idle check is no sweep"
        finally:
            source.stop()


def test_markers_off_when_their_table_cannot_be_made_said_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A database the bridge may read but not write to (here SQLite opened read-only): no
    markers, one warning saying what that costs, and the ledger still reads the results."""
    path = tmp_path / "results.sqlite"
    app = Celery(backend=f"db+sqlite:///{path}")
    store(app, "done", "SUCCESS", 1)
    engine = sa.create_engine(f"sqlite:///file:{path}?mode=ro&uri=true")
    ledger = DatabaseLedger(
        DatabaseResults(engine, task_table(app), result_decoder(app)), TableMarkers(engine)
    )
    with caplog.at_level("WARNING", logger="bridge.db_ledger"):
        ledger.mark(["sent"], ttl=60)
        ledger.mark(["sent-too"], ttl=60)
        known = ledger.lookup(["done", "sent"])
    assert set(known.finals) == {"done"} and known.in_progress == set()
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1, warnings
    assert "dispatch markers off" in warnings[0] and "run twice" in warnings[0]
    engine.dispose()


def test_a_progress_state_is_reported_once_then_the_final_one(database: str) -> None:
    """STARTED (a worker with task_track_started) reaches the loop once, not once per sweep:
    it starts the task's timeout; the final state ends the watch."""
    app = Celery(backend=database)
    task_id = unique("progress")
    store(app, task_id, "STARTED")
    engine = sa.create_engine(database_url(database))
    source = DatabaseResults(engine, task_table(app), result_decoder(app))
    source.watch([task_id])
    source.start()
    try:
        assert source.completions.get(timeout=10).state == "STARTED"
        sweeps = source.sweeps
        wait_for(lambda: source.sweeps >= sweeps + 3, 10, "three more sweeps")
        assert source.completions.empty(), "the same progress state again"
        store(app, task_id, "SUCCESS", 7)
        final = source.completions.get(timeout=10)
        assert (final.task_id, final.state, final.final) == (task_id, "SUCCESS", True)
    finally:
        source.stop()
