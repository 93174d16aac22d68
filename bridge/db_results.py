"""Learning task outcomes from Celery's database result backend (``db+postgresql://``,
``db+mysql://``, ``db+sqlite://``) by batched reads of its task table.

A database has no pub/sub the bridge could rely on, so outcomes are polled: each sweep reads
the rows of all open task ids with one ``SELECT … WHERE task_id IN (…)`` per chunk of
:data:`CHUNK` ids, never one query per task. The table is Celery's (``celery_taskmeta``, or
``database_table_names['task']`` in ``database_table_schemas['task']``); the bridge reads
``task_id``, ``status``, ``traceback`` and, for error states only, ``result`` (the exception
Celery stored, encoded with ``result_serializer``): a successful task's return value is never
fetched.

**Sweep interval**: see :mod:`bridge.polled_results` (a sweep costs ``ceil(open / CHUNK)``
queries, kept within :data:`~bridge.polled_results.QUERY_BUDGET` per second). No open task:
one ``SELECT 1`` per ``results.reconcile_interval``, so ``/readyz`` tells a database outage
even when idle.

The thread owns its connections (a SQLAlchemy engine with Celery's
``database_engine_options``); :meth:`DatabaseResults.stored_finals` (the ledger's pre-send
read, on the consumer loop's thread) uses the same thread-safe engine pool.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterator, Sequence
from typing import Any

import sqlalchemy as sa

from bridge.core.vocabulary import TaskState
from bridge.polled_results import PolledResults, chunks
from bridge.results import Decoder, TaskEvent, event_from_meta
from bridge.secrets import mask_text

log = logging.getLogger(__name__)

#: states whose ``result`` column holds the exception the bridge reports
_ERROR_STATES = (TaskState.FAILURE, TaskState.REVOKED, TaskState.RETRY)


def task_table(app: Any) -> sa.Table:
    """Celery's task table as ``app`` names it (only the columns the bridge reads)."""
    names = app.conf.database_table_names or {}
    schemas = app.conf.database_table_schemas or {}
    return sa.Table(
        names.get("task", "celery_taskmeta"),
        sa.MetaData(schema=schemas.get("task")),
        sa.Column("task_id", sa.String(155)),
        sa.Column("status", sa.String(50)),
        sa.Column("result", sa.LargeBinary),
        sa.Column("traceback", sa.Text),
    )


def states_query(table: sa.Table) -> sa.Select[Any]:
    """Rows of the ids bound to ``ids`` (an expanding parameter: one statement per chunk);
    ``result`` only where it holds an exception."""
    errors = [str(state) for state in _ERROR_STATES]
    return sa.select(
        table.c.task_id,
        table.c.status,
        sa.case((table.c.status.in_(errors), table.c.result), else_=sa.null()).label("result"),
        table.c.traceback,
    ).where(table.c.task_id.in_(sa.bindparam("ids", expanding=True)))


def database_url(result_backend: str) -> str:
    """SQLAlchemy's URL for Celery's ``db+<dialect>://…`` backend URL."""
    return result_backend[3:] if result_backend.lower().startswith("db+") else result_backend


def make_engine(app: Any) -> sa.Engine:
    """An engine with Celery's ``database_engine_options``; on PostgreSQL, bounded connect and
    statement times (the ledger reads on the consumer loop's thread), unless set there."""
    options = dict(app.conf.database_engine_options or {})
    url = sa.engine.make_url(database_url(str(app.conf.result_backend)))
    if url.get_backend_name() == "postgresql" and "connect_args" not in options:
        options["connect_args"] = {
            "connect_timeout": 5,
            "options": "-c statement_timeout=10000",
        }
    return sa.create_engine(url, **options)


def error_text(exc: BaseException) -> str:
    """A database error in one line, without the SQL, its parameters or a password."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return mask_text(f"{type(exc).__name__}: {first}")


class DatabaseResults(PolledResults):
    """A :class:`~bridge.result_source.ResultSource` polling Celery's task table."""

    name = "result backend (database)"
    outage_errors = (sa.exc.SQLAlchemyError,)

    def __init__(
        self, engine: sa.Engine, table: sa.Table, decoder: Decoder, longest_interval: float = 5.0
    ) -> None:
        super().__init__(longest_interval)
        self._engine = engine
        self._query = states_query(table)
        self._decode = decoder
        #: when the database last answered a sweep or an idle check (monotonic)
        self._checked = -math.inf
        #: queries run so far (the figures in the README come from them)
        self.queries = 0

    def _describe(self, exc: BaseException) -> str:
        return error_text(exc)

    def _close(self) -> None:
        self._engine.dispose()

    def _idle_check(self) -> None:
        """With nothing open, a ``SELECT 1`` every longest interval keeps ``healthy`` (and so
        ``/readyz``) true to the database, and finds an outage before the next task does."""
        if time.monotonic() - self._checked >= self._longest:
            with self._engine.connect() as connection:
                connection.execute(sa.select(1))
            self._checked = time.monotonic()

    def _read(self, task_ids: Sequence[str]) -> Iterator[TaskEvent]:
        """One query per chunk, on one connection of the (thread-safe) engine pool."""
        with self._engine.connect() as connection:
            for part in chunks(task_ids):
                self.queries += 1
                rows = connection.execute(self._query, {"ids": list(part)}).all()
                for task_id, status, result, traceback in rows:
                    yield self._event(str(task_id), str(status), result, traceback)
        self._checked = time.monotonic()

    def _event(self, task_id: str, status: str, result: Any, traceback: Any) -> TaskEvent:
        decoded: Any = None
        if result is not None:
            try:
                decoded = self._decode(bytes(result))
            except Exception as exc:  # a result another program wrote: report the state alone
                log.warning(
                    "undecodable stored result for task %s (%s)", task_id, type(exc).__name__
                )
        meta = {"status": status, "result": decoded, "traceback": traceback}
        return event_from_meta(task_id, meta)


def result_decoder(app: Any) -> Decoder:
    """``json.loads`` for Celery's default ``result_serializer``; else Celery's own decoding
    (honouring ``result_accept_content``), without opening Celery's database backend."""
    if app.conf.result_serializer == "json":
        return _json_value
    from celery.backends.base import BaseBackend

    backend = BaseBackend(app)
    return lambda data: _as_dict(backend.decode(data))


def _json_value(data: bytes) -> dict[str, Any]:
    return _as_dict(json.loads(data))


def _as_dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}
