"""What the database result source's sweeps cost: ``python -m bench.db_sweep``.

Starts a local PostgreSQL (bridge.stack.postgres), fills Celery's ``celery_taskmeta`` with
``--rows`` stored results (as Celery's database backend writes them), then for each number of
open task ids (half of them finished, half not yet stored) times full sweeps of
:class:`bridge.db_results.DatabaseResults` and prints: queries per sweep, milliseconds per
sweep, the adaptive interval, and so the queries per second and the share of one core the
sweeps cost the database and the bridge at that interval.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import sqlalchemy as sa
from celery import Celery
from rich.console import Console
from rich.table import Table

from bridge.db_results import DatabaseResults, result_decoder, task_table
from bridge.polled_results import sweep_interval
from bridge.stack.paths import StatePaths
from bridge.stack.postgres import PostgresNode
from bridge.stack.processes import free_port


def fill(app: Celery, engine: sa.Engine, rows: int) -> None:
    """``rows`` stored results in Celery's own table (created by its backend)."""
    from celery.backends.database.models import Task

    app.backend.ResultSession().close()  # creates the tables
    batch = [{"task_id": f"t-{n}", "status": "SUCCESS", "result": b"null"} for n in range(rows)]
    with engine.begin() as connection:
        connection.execute(sa.delete(Task.__table__))
        connection.execute(sa.insert(Task.__table__), batch)
        connection.execute(sa.text("ANALYZE celery_taskmeta"))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.db_sweep", description=__doc__)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--open", type=int, nargs="+", default=[100, 1000, 10_000, 50_000])
    parser.add_argument("--sweeps", type=int, default=5)
    options = parser.parse_args(argv)
    node = PostgresNode(StatePaths(Path(tempfile.mkdtemp(prefix="ckb-dbsweep-"))), free_port())
    node.start(lambda line: None)
    try:
        engine = sa.create_engine(node.url)
        app = Celery(backend=node.result_backend)
        table = task_table(app)
        fill(app, engine, options.rows)
        out = Table(title=f"database sweeps: celery_taskmeta with {options.rows:,} rows")
        for column in ("open ids", "queries/sweep", "ms/sweep", "interval s", "queries/s", "busy"):
            out.add_column(column, justify="right")
        for count in options.open:
            ids = [f"t-{n}" for n in range(0, 2 * count, 2)]  # every other one is stored
            ids = [i if n % 2 else f"open-{n}" for n, i in enumerate(ids)]
            source = DatabaseResults(engine, table, result_decoder(app))
            source.watch(ids)
            timings = []
            for _ in range(options.sweeps):
                source.watch(ids)  # finished ones were dropped: watch them all again
                started = time.perf_counter()
                source._sweep()
                timings.append(time.perf_counter() - started)
            queries = source.queries // options.sweeps
            took = sorted(timings)[len(timings) // 2]
            interval = sweep_interval(count, longest=5.0)
            out.add_row(
                f"{count:,}",
                str(queries),
                f"{took * 1000:.1f}",
                f"{interval:.2f}",
                f"{queries / interval:.1f}",
                f"{took / interval:.0%}",
            )
        engine.dispose()
        Console().print(out)
    finally:
        node.stop()


if __name__ == "__main__":
    main()
