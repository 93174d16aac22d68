"""Where the bridge learns task outcomes, behind one interface chosen from
``celery.result_backend``.

A :class:`ResultSource` runs its own thread (it owns its connections) and reports
:class:`~bridge.results.TaskEvent` s of the task ids it is asked to watch through
``completions``; the consumer loop only calls ``watch``/``unwatch`` and drains the queue.
A :class:`Ledger` answers, before a record is sent, whether its task already has a final result
or was sent by an earlier owner (dispatch markers), and notes what was sent.

Implementations: Redis (pub/sub plus the reconcile sweep, :mod:`bridge.results`, and the
dispatch ledger in the same Redis, :mod:`bridge.dispatch_ledger`) and Celery's database
backend (batched reads of its task table, :mod:`bridge.db_results`, and the ledger of
:mod:`bridge.db_ledger`), and ``rpc://`` (the bridge's reply queue, :mod:`bridge.rpc_results`).
"""

from __future__ import annotations

import queue
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import redis

from bridge.access_errors import RedisClient
from bridge.access_problems import AccessProblems, RedisAccess
from bridge.backend_urls import PLAIN_REDIS, backend_kind, scheme
from bridge.dispatch_ledger import DispatchLedger, Known
from bridge.redis_clients import (
    SOCKET_CONNECT_TIMEOUT,
    SOCKET_TIMEOUT,
    result_backend_clients,
)
from bridge.results import ResultWatcher, TaskEvent, json_decoder
from bridge.rpc_results import (
    RepliesLedger,
    RpcResults,
    accepted_content,
    ack_hold,
    queue_expiry,
    reply_queue_name,
)
from bridge.settings import CelerySettings, ConfigError, Settings
from bridge.stored_ledger import Markers, RedisMarkers, StoredLedger


class ResultSource(Protocol):
    """Reports the outcomes of watched task ids on ``completions`` (final ones once)."""

    completions: queue.SimpleQueue[TaskEvent]

    def watch(self, task_ids: Iterable[str]) -> None: ...
    def unwatch(self, task_id: str) -> None: ...

    @property
    def healthy(self) -> bool:
        """False while the backend cannot be read (``/readyz`` turns red)."""
        ...

    def start(self, wait: float = 10.0) -> None: ...
    def stop(self) -> None: ...
    def stored_finals(self, task_ids: list[str]) -> dict[str, TaskEvent]:
        """Final results stored for ``task_ids`` (batched reads; unknown ids omitted)."""
        ...


class Ledger(Protocol):
    """What earlier dispatches left, read before sending; best effort (a failed read: send)."""

    def lookup(self, task_ids: list[str]) -> Known: ...
    def mark(self, task_ids: Iterable[str], ttl: float) -> None: ...


@dataclass
class ResultParts:
    """The result source, the ledger, and the Redis holding the rate limiter's buckets."""

    source: ResultSource
    ledger: Ledger
    #: None when there is no Redis (the settings refuse rate limits then)
    redis: redis.Redis | None
    closers: list[Callable[[], None]] = field(default_factory=list)
    #: the queue every task message must name in ``reply_to`` (``rpc://``), else None
    reply_to: str | None = None
    #: False: nowhere to keep dispatch markers, whatever ``results.dispatch_markers`` says
    markers: bool = True


def open_results(settings: Settings, app: Any, access: AccessProblems | None = None) -> ResultParts:
    """The parts for ``celery.result_backend``; raises :class:`ConfigError` naming it.
    Refused passwords, certificates and grants go to ``access``."""
    kind = backend_kind(settings.celery.result_backend)
    if kind == "redis":
        return redis_results(settings, app, access)
    if kind == "database":
        return database_results(settings, app)
    if kind == "rpc":
        return rpc_results(settings, app)
    if kind == "generic":
        return generic_results(settings, app)
    raise ConfigError(
        "celery.result_backend: the bridge reads results from Redis (redis://, rediss://), "
        "Celery's database backend (db+postgresql://, db+mysql://, db+sqlite://) or rpc://"
    )


def redis_results(
    settings: Settings, app: Any, access: AccessProblems | None = None
) -> ResultParts:
    """Pub/sub watcher and ledger on the result backend's Redis, connected as Celery connects
    (TLS parameters, ``redis_backend_use_ssl``; raises ConfigError for what Celery refuses)."""
    # a new client per call; on sentinel:// each asks the sentinels for the current master
    redis_client = result_backend_clients(app)

    # plain json.loads reads every field the bridge uses, at a fraction of Celery's decode cost
    decoder = json_decoder if app.conf.result_serializer == "json" else app.backend.decode
    watcher = ResultWatcher(
        redis_client,
        key_prefix=settings.results.key_prefix,
        reconcile_interval=settings.results.reconcile_interval,
        decoder=decoder,
        access=_access(access, settings, "redis:results"),
    )
    client = redis_client()
    ledger = DispatchLedger(
        client,
        settings.results.key_prefix,
        decoder,
        markers=settings.results.dispatch_markers,
        access=_access(access, settings, "redis:ledger"),
    )
    return ResultParts(watcher, ledger, client, [client.close])


def _access(problems: AccessProblems | None, settings: Settings, key: str) -> RedisAccess | None:
    if problems is None:
        return None
    backend = RedisClient.from_url("celery.result_backend", settings.celery.result_backend)
    return RedisAccess(backend, problems, key)


def database_results(settings: Settings, app: Any) -> ResultParts:
    """Sweeps of Celery's task table; dispatch markers in the broker's Redis if the broker is
    Redis (which then holds the rate limiter's buckets too), else in a table of the database."""
    try:  # SQLAlchemy and the driver only when used (the ckb[postgres] extra)
        from bridge.db_ledger import DatabaseLedger, TableMarkers
        from bridge.db_results import DatabaseResults, make_engine, result_decoder, task_table

        engine = make_engine(app)
    except ImportError as exc:
        raise ConfigError(
            f"celery.result_backend: a database backend needs SQLAlchemy and its driver "
            f"({exc.name} is missing): pip install 'celery-kafka-bridge[postgres]' (PostgreSQL), "
            "or install the driver of your database"
        ) from None
    table = task_table(app)
    source = DatabaseResults(
        engine, table, result_decoder(app), longest_interval=settings.results.reconcile_interval
    )
    broker = broker_redis(settings.celery)
    markers: Markers | None = None
    if settings.results.dispatch_markers:
        markers = RedisMarkers(broker) if broker is not None else TableMarkers(engine, table.schema)
    closers = [] if broker is None else [broker.close]
    return ResultParts(source, DatabaseLedger(source, markers), broker, closers)


def generic_results(settings: Settings, app: Any) -> ResultParts:
    """Any other backend Celery ships, polled through its API (the slow path); dispatch
    markers in the broker's Redis when the broker is Redis, else none."""
    from bridge.generic_results import GenericResults, unreadable

    problem = unreadable(app.backend)
    if problem is not None:
        raise ConfigError(f"celery.result_backend: {problem}; use Redis, a database or rpc://")
    source = GenericResults(app.backend, longest_interval=settings.results.reconcile_interval)
    broker = broker_redis(settings.celery)
    use_markers = broker is not None and settings.results.dispatch_markers
    markers = RedisMarkers(broker) if use_markers and broker is not None else None
    closers = [] if broker is None else [broker.close]
    # a read of any kind may fail (each backend has its own errors): nothing known, then
    ledger = StoredLedger(source, markers, (Exception,))
    return ResultParts(source, ledger, broker, closers, markers=markers is not None)


def broker_redis(celery: CelerySettings) -> redis.Redis | None:
    """A client of the broker's Redis (with ``broker_use_ssl`` from ``celery.options``), or
    None when the broker is not a ``redis://`` (or ``rediss://``, ``unix://``) URL."""
    if scheme(celery.broker_url) not in PLAIN_REDIS:  # amqp://, sentinel://: not here
        return None
    ssl = celery.options.get("broker_use_ssl")
    extra: dict[str, Any] = dict(ssl) if isinstance(ssl, dict) else {}
    if ssl and not isinstance(ssl, dict):
        extra["ssl"] = True
    return redis.Redis.from_url(
        celery.broker_url,
        socket_timeout=SOCKET_TIMEOUT,
        socket_connect_timeout=SOCKET_CONNECT_TIMEOUT,
        **extra,
    )


def rpc_results(settings: Settings, app: Any) -> ResultParts:
    """The bridge's reply queue on the RabbitMQ broker; no markers, no Redis."""
    instance = settings.kafka.consumer.get("group.instance.id")
    name = reply_queue_name(settings.kafka.group_id, None if instance is None else str(instance))
    source = RpcResults(
        app.connection_for_read,
        name,
        queue_expiry(app.conf.result_expires),
        accepted_content(app.conf),
        durable_name=instance is not None,
        hold=0.0 if instance is None else ack_hold(settings.kafka.commit_interval),
    )
    return ResultParts(source, RepliesLedger(source), None, reply_to=name, markers=False)
