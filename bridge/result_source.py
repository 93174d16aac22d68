"""Where the bridge learns task outcomes, behind one interface chosen from
``celery.result_backend``.

A :class:`ResultSource` runs its own thread (it owns its connections) and reports
:class:`~bridge.results.TaskEvent` s of the task ids it is asked to watch through
``completions``; the consumer loop only calls ``watch``/``unwatch`` and drains the queue.
A :class:`Ledger` answers, before a record is sent, whether its task already has a final result
or was sent by an earlier owner (dispatch markers), and notes what was sent.

Implementations: Redis (pub/sub plus the reconcile sweep, :mod:`bridge.results`, and the
dispatch ledger in the same Redis, :mod:`bridge.dispatch_ledger`).
"""

from __future__ import annotations

import queue
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import redis

from bridge.access_errors import RedisClient
from bridge.access_problems import AccessProblems, RedisAccess
from bridge.backend_urls import backend_kind
from bridge.dispatch_ledger import DispatchLedger, Known
from bridge.redis_clients import result_backend_params
from bridge.results import ResultWatcher, TaskEvent, json_decoder
from bridge.settings import ConfigError, Settings


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


def open_results(settings: Settings, app: Any, access: AccessProblems | None = None) -> ResultParts:
    """The parts for ``celery.result_backend``; raises :class:`ConfigError` naming it.
    Refused passwords, certificates and grants go to ``access``."""
    kind = backend_kind(settings.celery.result_backend)
    if kind == "redis":
        return redis_results(settings, app, access)
    raise ConfigError(
        "celery.result_backend: the bridge reads results from Redis (redis://, rediss://)"
    )


def redis_results(
    settings: Settings, app: Any, access: AccessProblems | None = None
) -> ResultParts:
    """Pub/sub watcher and ledger on the result backend's Redis, connected as Celery connects
    (TLS parameters, ``redis_backend_use_ssl``; raises ConfigError for what Celery refuses)."""
    backend_params = result_backend_params(app)

    def redis_client() -> redis.Redis:
        return redis.Redis(connection_pool=redis.ConnectionPool(**backend_params))

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
