"""``ckb stack up --backend postgres``: a real PostgreSQL next to Kafka and Redis, its cluster
and log under the state dir, idempotent, stopped by ``ckb stack down``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from bench.common import free_port
from bridge.cli import main
from bridge.stack import LocalStack, StackError

pytestmark = pytest.mark.integration


def test_stack_up_with_a_postgres_backend(tmp_path: Path) -> None:
    state = tmp_path / "state"
    kafka_port, redis_port, pg_port = free_port(), free_port(), free_port()
    ports = ["--kafka-port", str(kafka_port), "--redis-port", str(redis_port)]
    where = ["--state-dir", str(state)]
    runner = CliRunner()
    stack = LocalStack(state)
    try:
        up = runner.invoke(
            main,
            [
                "stack",
                "up",
                *ports,
                "--backend",
                "postgres",
                "--postgres-port",
                str(pg_port),
                *where,
            ],
        )
        assert up.exit_code == 0, up.output
        url = f"postgresql://ckb@127.0.0.1:{pg_port}/postgres"
        assert f"postgres: {url} (result backend db+{url})" in up.output
        info = stack.info()
        assert (info.postgres_url, info.result_backend) == (url, f"db+{url}")
        status = stack.status()["postgres"]
        assert status["running"] and status["url"] == url, status
        # the cluster and its log are the state dir's
        assert (state / "postgres" / "data" / "PG_VERSION").is_file()
        assert (state / "logs" / "postgres.log").is_file()
        engine = sa.create_engine(url)
        with engine.connect() as connection:
            assert connection.execute(sa.text("select 1")).scalar() == 1
        engine.dispose()
        # idempotent with or without the flag; the flag with another port is refused
        assert LocalStack(state, kafka_port, redis_port).up() == info
        again = LocalStack(state, kafka_port, redis_port, postgres_port=free_port())
        with pytest.raises(StackError, match=rf"already runs PostgreSQL on 127.0.0.1:{pg_port}"):
            again.up()
        shown = runner.invoke(main, ["stack", "status", *where])
        assert f"postgres running {url}" in " ".join(shown.output.split()), shown.output
    finally:
        down = runner.invoke(main, ["stack", "down", *where])
    assert down.exit_code == 0, down.output
    status = stack.status()["postgres"]
    assert not status["running"] and status["pid"] is None
    assert json.loads((state / "stack.json").read_text())["postgres"] == pg_port
