"""The database result source's pure parts: the adaptive sweep interval, the chunked query
(compiled for each dialect, no server), and the configuration errors around it.
tests/integration/test_postgres_backend.py runs them against a real PostgreSQL."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import mysql, postgresql, sqlite

from bridge.celery_app import make_celery_app
from bridge.db_ledger import DatabaseLedger, TableMarkers, marker_table, upsert
from bridge.db_results import (
    DatabaseResults,
    database_url,
    error_text,
    result_decoder,
    states_query,
    task_table,
)
from bridge.polled_results import CHUNK, MIN_INTERVAL, QUERY_BUDGET, chunks, sweep_interval
from bridge.result_source import ResultParts, open_results
from bridge.settings import (
    CelerySettings,
    ConfigError,
    ResultSettings,
    Route,
    Settings,
    load_settings,
)
from bridge.stored_ledger import RedisMarkers


@pytest.mark.parametrize("open_tasks", [0, 1, CHUNK, 2 * CHUNK])
def test_few_open_tasks_are_swept_at_the_shortest_interval(open_tasks: int) -> None:
    assert sweep_interval(open_tasks, longest=5.0) == MIN_INTERVAL


@pytest.mark.parametrize("open_tasks", [10_000, 20_000, 40_000, 49_999])
def test_many_open_tasks_keep_the_sweeps_within_the_query_budget(open_tasks: int) -> None:
    interval = sweep_interval(open_tasks, longest=5.0)
    assert interval > MIN_INTERVAL
    assert math.ceil(open_tasks / CHUNK) / interval == pytest.approx(QUERY_BUDGET)


def test_the_interval_never_exceeds_the_reconcile_interval() -> None:
    assert sweep_interval(1_000_000, longest=5.0) == 5.0
    assert sweep_interval(1_000_000, longest=0.1) == MIN_INTERVAL  # never below the shortest
    grows = [sweep_interval(n, longest=5.0) for n in range(0, 200_000, 5_000)]
    assert grows == sorted(grows), "more open tasks never sweep more often"


def test_chunks_cover_every_id_once_within_the_chunk_size() -> None:
    ids = [str(n) for n in range(2 * CHUNK + 7)]
    parts = list(chunks(ids))
    assert [len(part) for part in parts] == [CHUNK, CHUNK, 7]
    assert [i for part in parts for i in part] == ids
    assert list(chunks([])) == []


def table_for(**conf: object) -> sa.Table:
    app = make_celery_app(CelerySettings(result_backend="db+sqlite:///r.db"))
    app.conf.update(conf)
    return task_table(app)


@pytest.mark.parametrize("dialect", [postgresql.dialect(), mysql.dialect(), sqlite.dialect()])
def test_one_statement_per_chunk_reads_exceptions_only_for_error_states(
    dialect: sa.Dialect,
) -> None:
    query = states_query(table_for())
    sql = " ".join(str(query.compile(dialect=dialect)).split())
    assert "FROM celery_taskmeta" in sql
    assert "celery_taskmeta.task_id IN (__[POSTCOMPILE_ids])" in sql, "one bound list"
    assert "CASE WHEN (celery_taskmeta.status IN" in sql, "no return value of a success"
    # a chunk of ids becomes one IN list of as many parameters, in one statement
    chunk = [f"id-{n}" for n in range(7)]
    expanded = query.compile(dialect=dialect).construct_expanded_state({"ids": chunk})
    assert "POSTCOMPILE" not in expanded.statement
    assert [value for value in expanded.parameters.values() if value in chunk] == chunk


def test_celerys_table_name_and_schema_settings_are_honoured() -> None:
    table = table_for(
        database_table_names={"task": "myapp_taskmeta"}, database_table_schemas={"task": "jobs"}
    )
    assert (table.schema, table.name) == ("jobs", "myapp_taskmeta")
    sql = str(states_query(table).compile(dialect=postgresql.dialect()))
    assert "FROM jobs.myapp_taskmeta" in sql


@pytest.mark.parametrize("dialect", ["postgresql", "mysql", "sqlite"])
def test_markers_are_one_upsert_per_batch(dialect: str) -> None:
    dialects = {"postgresql": postgresql, "mysql": mysql, "sqlite": sqlite}
    sql = str(upsert(marker_table(), dialect).compile(dialect=dialects[dialect].dialect()))
    assert sql.startswith("INSERT INTO ckb_dispatch_markers")
    assert "ON CONFLICT (task_id) DO UPDATE" in sql or "ON DUPLICATE KEY UPDATE" in sql


def test_url_and_errors_without_secrets() -> None:
    assert database_url("db+postgresql://u:p@h/db") == "postgresql://u:p@h/db"
    error = sa.exc.OperationalError(
        "SELECT 1", {}, Exception('connection to "postgresql://ckb:s3cret@h/db" refused\nmore')
    )
    text = error_text(error)
    assert "s3cret" not in text and "SELECT" not in text and "\n" not in text


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bridge.yaml"
    path.write_text(text)
    return path


ROUTES = """
routes:
  - {topic: orders, task: tasks.x}
  - {topic: audit, task: tasks.y, rate_limit: "10/s"}
"""


def test_a_database_backend_is_accepted(tmp_path: Path) -> None:
    text = "celery: {result_backend: 'db+postgresql://u:p@h/db'}\n" + ROUTES
    settings = load_settings(write(tmp_path, text))
    assert settings.celery.result_backend.startswith("db+postgresql")


@pytest.mark.parametrize("backend", ["disabled://", "nosuch://h/db", "memcached://h/"])
def test_an_unwatchable_backend_is_refused_naming_the_choices(tmp_path: Path, backend: str) -> None:
    """Not a backend Celery ships (``cache+memcached://`` is; plain ``memcached://`` is not),
    or one that stores nothing to read."""
    with pytest.raises(ConfigError) as caught:
        load_settings(write(tmp_path, f"celery: {{result_backend: '{backend}'}}\nroutes: []\n"))
    assert "celery.result_backend" in str(caught.value)
    assert "db+postgresql://" in str(caught.value)


def test_rate_limits_without_any_redis_are_a_config_error(tmp_path: Path) -> None:
    text = (
        "celery: {broker_url: 'amqp://guest:guest@h//', result_backend: 'db+postgresql://u@h/d'}"
        + ROUTES
    )
    with pytest.raises(ConfigError, match=r"routes\.1\.rate_limit needs a Redis"):
        load_settings(write(tmp_path, text))
    redis_broker = text.replace("amqp://guest:guest@h//", "redis://h:6379/0")
    assert load_settings(write(tmp_path, redis_broker)).routes[1].rate_limit == "10/s"


def parts_for(broker: str, markers: bool = True) -> ResultParts:
    celery = CelerySettings(broker_url=broker, result_backend="db+postgresql://u:p@db.invalid/d")
    settings = Settings(
        celery=celery,
        routes=[Route(topic="t", task="x")],
        results=ResultSettings(dispatch_markers=markers),
    )
    return open_results(settings, make_celery_app(celery))  # nothing connects yet


@pytest.mark.parametrize(
    ("broker", "markers", "where"),
    [
        ("redis://127.0.0.1:6399/0", True, RedisMarkers),  # the broker's Redis, rate limits too
        ("amqp://guest:guest@127.0.0.1:5999//", True, TableMarkers),  # a table of the database
        ("amqp://guest:guest@127.0.0.1:5999//", False, type(None)),  # none, as asked
    ],
)
def test_a_database_backend_keeps_markers_where_it_can(
    broker: str, markers: bool, where: type
) -> None:
    parts = parts_for(broker, markers)
    try:
        assert isinstance(parts.source, DatabaseResults)
        assert isinstance(parts.ledger, DatabaseLedger)
        assert isinstance(parts.ledger._markers, where)
        assert (parts.redis is not None) == broker.startswith("redis://")
    finally:
        for close in parts.closers:
            close()


def test_a_database_backend_without_its_driver_names_the_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "psycopg", None)  # as if not installed
    with pytest.raises(ConfigError) as caught:
        parts_for("redis://127.0.0.1:6399/0")
    message = str(caught.value)
    assert message.startswith("celery.result_backend: a database backend needs SQLAlchemy")
    assert "celery-kafka-bridge[postgres]" in message and "p@db" not in message


def test_a_non_json_result_serializer_is_read_by_celerys_own_rules() -> None:
    import pickle

    app = make_celery_app(CelerySettings(result_backend="db+sqlite:///r.db"))
    app.conf.result_serializer = "pickle"
    app.conf.result_accept_content = ["pickle"]
    stored = pickle.dumps({"exc_type": "ValueError", "exc_message": ["bad"]})
    assert result_decoder(app)(stored)["exc_type"] == "ValueError"
    app.conf.result_accept_content = ["json"]  # what the workers' settings refuse, so does it
    with pytest.raises(Exception, match="pickle"):
        result_decoder(app)(stored)
