"""The dispatch ledger when results live in Celery's database backend.

Final results are read from Celery's task table (:meth:`DatabaseResults.stored_finals`: one
query per chunk of the batch about to be sent). Dispatch markers go where the bridge can write
them:

- the broker's Redis when the broker is Redis (the same ``ckb-dispatched-<id>`` keys, one
  script call per batch, as with a Redis result backend);
- else a ``ckb_dispatch_markers`` table next to Celery's (created when missing), written with one
  upsert statement per batch and read with one query per chunk; expired rows are deleted once
  a minute;
- else none (``results.dispatch_markers: false``, or the table could not be created: said once
  in the log). Then a task sent by the previous owner of a partition that has no result yet is
  sent again after a rebalance or restart: the worker may run it twice.

Like the Redis ledger, this is best effort: a read that fails sends the record.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import redis
import sqlalchemy as sa

from bridge.db_results import DatabaseResults, error_text
from bridge.polled_results import chunks
from bridge.stored_ledger import Markers, StoredLedger

log = logging.getLogger(__name__)

MARKER_TABLE = "ckb_dispatch_markers"
#: seconds between deletions of expired markers
PURGE_EVERY = 60.0


def marker_table(schema: str | None = None) -> sa.Table:
    return sa.Table(
        MARKER_TABLE,
        sa.MetaData(schema=schema),
        sa.Column("task_id", sa.String(155), primary_key=True),
        #: seconds since the epoch (a float: the same on every dialect, no time zones)
        sa.Column("expires_at", sa.Float, nullable=False, index=True),
    )


def upsert(table: sa.Table, dialect: str) -> Any:
    """One INSERT of many rows that moves the expiry of markers already there."""
    if dialect == "mysql":
        from sqlalchemy.dialects import mysql

        statement = mysql.insert(table)
        return statement.on_duplicate_key_update(expires_at=statement.inserted.expires_at)
    if dialect == "postgresql":
        from sqlalchemy.dialects import postgresql

        pg = postgresql.insert(table)
        return pg.on_conflict_do_update(
            index_elements=["task_id"], set_={"expires_at": pg.excluded.expires_at}
        )
    from sqlalchemy.dialects import sqlite

    lite = sqlite.insert(table)
    return lite.on_conflict_do_update(
        index_elements=["task_id"], set_={"expires_at": lite.excluded.expires_at}
    )


class TableMarkers:
    """Markers in ``ckb_dispatch_markers``; off for good (said once) if it cannot be created."""

    def __init__(self, engine: sa.Engine, schema: str | None = None) -> None:
        self._engine = engine
        self._table = marker_table(schema)
        self._upsert = upsert(self._table, engine.dialect.name)
        self._ready = False
        self.enabled = True
        self._purged = time.monotonic()

    def _prepare(self) -> bool:
        if not self._ready and self.enabled:
            try:
                self._table.metadata.create_all(self._engine, checkfirst=True)
                self._ready = True
            except sa.exc.SQLAlchemyError as exc:
                if _unreachable(exc):
                    raise  # tried again next time
                self.enabled = False
                log.warning(
                    "dispatch markers off: table %s cannot be created (%s); after a rebalance "
                    "or restart, tasks the previous owner sent may be sent again (run twice)",
                    MARKER_TABLE,
                    error_text(exc),
                )
        return self._ready

    def live(self, task_ids: list[str]) -> set[str]:
        if not self._prepare():
            return set()
        table, now = self._table, time.time()
        found: set[str] = set()
        with self._engine.connect() as connection:
            for part in chunks(task_ids):
                query = sa.select(table.c.task_id).where(
                    table.c.task_id.in_(part), table.c.expires_at > now
                )
                found.update(str(row[0]) for row in connection.execute(query))
        return found

    def mark(self, task_ids: list[str], ttl: float) -> None:
        if not task_ids or not self._prepare():
            return
        expires = time.time() + ttl
        rows = [{"task_id": task_id, "expires_at": expires} for task_id in task_ids]
        with self._engine.begin() as connection:
            connection.execute(self._upsert, rows)
            if time.monotonic() - self._purged >= PURGE_EVERY:
                self._purged = time.monotonic()
                expired = self._table.c.expires_at < time.time()
                connection.execute(sa.delete(self._table).where(expired))


def _unreachable(exc: sa.exc.SQLAlchemyError) -> bool:
    """A connection failure (try again later), not a refusal (permission, syntax)."""
    return isinstance(exc, sa.exc.OperationalError | sa.exc.InterfaceError) and bool(
        getattr(exc, "connection_invalidated", False) or "connect" in str(exc).lower()
    )


class DatabaseLedger(StoredLedger):
    """A :class:`~bridge.result_source.Ledger`: finals from Celery's table, markers wherever
    the factory found a place for them (None: no markers)."""

    def __init__(self, results: DatabaseResults, markers: Markers | None) -> None:
        super().__init__(results, markers, (sa.exc.SQLAlchemyError, redis.RedisError), _describe)


def _describe(exc: BaseException) -> str:
    return error_text(exc) if isinstance(exc, sa.exc.SQLAlchemyError) else repr(exc)
