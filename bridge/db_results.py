"""Learning task outcomes from Celery's database result backend (``db+postgresql://``,
``db+mysql://``, ``db+sqlite://``) by batched reads of its task table.

A database has no pub/sub the bridge could rely on, so outcomes are polled: each sweep reads
the rows of all open task ids with one ``SELECT … WHERE task_id IN (…)`` per chunk of
:data:`CHUNK` ids, never one query per task. The table is Celery's (``celery_taskmeta``, or
``database_table_names['task']`` in ``database_table_schemas['task']``); the bridge reads
``task_id``, ``status``, ``traceback`` and, for error states only, ``result`` (the exception
Celery stored, encoded with ``result_serializer``): a successful task's return value is never
fetched.

**Sweep interval** (:func:`sweep_interval`): a sweep costs ``ceil(open / CHUNK)`` queries. With
few open tasks the bridge sweeps every :data:`MIN_INTERVAL` seconds (outcomes within a fraction
of a second, one query per sweep); as open tasks grow the interval grows so that the sweeps stay
within :data:`QUERY_BUDGET` queries per second, up to ``results.reconcile_interval`` at most,
beyond which the budget is exceeded rather than outcomes delayed further. No open task: one
``SELECT 1`` per ``results.reconcile_interval``, so ``/readyz`` tells a database outage even
when idle.

The thread owns its connections (a SQLAlchemy engine with Celery's
``database_engine_options``); :meth:`DatabaseResults.stored_finals` (the ledger's pre-send
read, on the consumer loop's thread) uses the same thread-safe engine pool.
"""

from __future__ import annotations

import json
import logging
import math
import queue
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import sqlalchemy as sa

from bridge.core.vocabulary import TaskState
from bridge.io_retry import OutageLog
from bridge.results import Decoder, TaskEvent, event_from_meta
from bridge.secrets import mask_text

log = logging.getLogger(__name__)

#: task ids per ``IN (…)`` list: under SQLite's 999 bound parameters, small for any planner
CHUNK = 500
#: seconds between sweeps while at most a chunk of tasks is open
MIN_INTERVAL = 0.25
#: queries per second the sweeps aim to stay within as open tasks grow
QUERY_BUDGET = 20.0
#: states whose ``result`` column holds the exception the bridge reports
_ERROR_STATES = (TaskState.FAILURE, TaskState.REVOKED, TaskState.RETRY)


def sweep_interval(open_tasks: int, longest: float) -> float:
    """Seconds until the next sweep with ``open_tasks`` watched ids (see the module doc)."""
    queries = math.ceil(open_tasks / CHUNK)
    return min(max(MIN_INTERVAL, queries / QUERY_BUDGET), max(longest, MIN_INTERVAL))


def chunks(task_ids: Sequence[str], size: int = CHUNK) -> Iterator[Sequence[str]]:
    for start in range(0, len(task_ids), size):
        yield task_ids[start : start + size]


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


class DatabaseResults:
    """A :class:`~bridge.result_source.ResultSource` polling Celery's task table."""

    def __init__(
        self, engine: sa.Engine, table: sa.Table, decoder: Decoder, longest_interval: float = 5.0
    ) -> None:
        self._engine = engine
        self._query = states_query(table)
        self._decode = decoder
        self._longest = longest_interval
        #: watched ids and the last non-final state reported for each
        self._watched: dict[str, str | None] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._outage = OutageLog(log, "result backend (database)")
        self._swept = threading.Event()
        #: when the database last answered a sweep or an idle check (monotonic)
        self._checked = -math.inf
        #: sweeps and queries run so far (the figures in the README come from them)
        self.sweeps = 0
        self.queries = 0
        self.completions: queue.SimpleQueue[TaskEvent] = queue.SimpleQueue()

    # -- called from the consumer loop ------------------------------------------
    def watch(self, task_ids: Iterable[str]) -> None:
        with self._lock:
            for task_id in task_ids:
                self._watched.setdefault(task_id, None)

    def unwatch(self, task_id: str) -> None:
        with self._lock:
            self._watched.pop(task_id, None)

    @property
    def healthy(self) -> bool:
        return self._swept.is_set() and not self._outage.down

    def stored_finals(self, task_ids: list[str]) -> dict[str, TaskEvent]:
        """Final results stored for ``task_ids`` (one query per chunk); raises SQLAlchemy's
        errors (the ledger treats a failed read as nothing known)."""
        with self._engine.connect() as connection:
            events = self._read(connection, task_ids)
            return {event.task_id: event for event in events if event.final}

    # -- lifecycle ----------------------------------------------------------------
    def start(self, wait: float = 10.0) -> None:
        self._thread = threading.Thread(target=self._run, name="ckb-result-sweeper", daemon=True)
        self._thread.start()
        if not self._swept.wait(wait):
            log.warning("result backend (database) not read after %.0fs; retrying", wait)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._engine.dispose()

    # -- the thread ---------------------------------------------------------------
    def _run(self) -> None:
        backoff = 0.1
        while not self._stop.is_set():
            try:
                open_tasks = self._sweep()
            except sa.exc.SQLAlchemyError as exc:
                self._outage.failed(RuntimeError(error_text(exc)))
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            except Exception:
                log.exception("result sweep failed; retrying in %.1fs", backoff)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            backoff = 0.1
            self._swept.set()
            self._outage.recovered()
            self._stop.wait(sweep_interval(open_tasks, self._longest))

    def _sweep(self) -> int:
        """Read the rows of every watched id; report finals and changed progress states."""
        with self._lock:
            due = list(self._watched)
        self.sweeps += 1
        if not due:
            self._idle_check()
            return 0
        with self._engine.connect() as connection:
            for event in self._read(connection, due):
                self._report(event)
        self._checked = time.monotonic()
        return len(due)

    def _idle_check(self) -> None:
        """With nothing open, a ``SELECT 1`` every longest interval keeps ``healthy`` (and so
        ``/readyz``) true to the database, and finds an outage before the next task does."""
        if time.monotonic() - self._checked >= self._longest:
            with self._engine.connect() as connection:
                connection.execute(sa.select(1))
            self._checked = time.monotonic()

    def _read(self, connection: sa.Connection, task_ids: Sequence[str]) -> Iterator[TaskEvent]:
        for part in chunks(task_ids):
            self.queries += 1
            rows = connection.execute(self._query, {"ids": list(part)}).all()
            for task_id, status, result, traceback in rows:
                event = self._event(str(task_id), str(status), result, traceback)
                if event is not None:
                    yield event

    def _event(self, task_id: str, status: str, result: Any, traceback: Any) -> TaskEvent | None:
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

    def _report(self, event: TaskEvent) -> None:
        with self._lock:
            if event.task_id not in self._watched:
                return
            if event.final:
                del self._watched[event.task_id]
            elif self._watched[event.task_id] == event.state:
                return  # reported already: progress states are reported once per change
            else:
                self._watched[event.task_id] = event.state
        self.completions.put(event)


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
