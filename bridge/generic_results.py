"""Any other result backend Celery ships (MongoDB, S3, a filesystem, memcached, DynamoDB, …),
read through Celery's own backend API: the slow path.

The bridge has nothing to subscribe to there, so it polls (:mod:`bridge.polled_results`).
Key-value backends (``KeyValueStoreBackend``: file, cache, S3, Azure, GCS, Couchbase, …) are
read in batches of :data:`~bridge.polled_results.CHUNK` keys with the backend's ``mget`` where
it has one; the others (MongoDB, Elasticsearch, Cassandra, …) one ``get_task_meta`` call per
open task per sweep. Each sweep costs the backend as many reads as that, every
:func:`~bridge.polled_results.sweep_interval` seconds, and an outcome is seen one sweep late:
prefer Redis, a database or ``rpc://`` when you can.

Backends whose results never leave the worker's process (``cache+memory://``) and
``disabled://`` cannot be read: a configuration error says so.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import Any

from celery.backends.base import KeyValueStoreBackend
from celery.exceptions import BackendError

from bridge.core.vocabulary import TaskState
from bridge.polled_results import PolledResults, chunks
from bridge.results import TaskEvent, event_from_meta
from bridge.secrets import mask_text

log = logging.getLogger(__name__)


def unreadable(backend: Any) -> str | None:
    """Why the bridge can never read what workers store in ``backend``; None: it can."""
    name = type(backend).__name__
    if name == "DisabledBackend":
        return "results are disabled (disabled://): the bridge learns outcomes from results"
    if name == "CacheBackend" and "memory" in str(getattr(backend, "backend", "")):
        return (
            "cache+memory:// keeps results inside each worker's process: the bridge cannot see them"
        )
    return None


def plain_meta(meta: dict[str, Any]) -> dict[str, Any]:
    """Celery's task meta with an exception result as the dict the bridge reads
    (``exc_type``, ``exc_message``), as a JSON-serialized result stores it."""
    result = meta.get("result")
    if isinstance(result, BaseException):
        meta = {**meta, "result": {"exc_type": type(result).__name__, "exc_message": str(result)}}
    return meta


class GenericResults(PolledResults):
    """A :class:`~bridge.result_source.ResultSource` on Celery's backend API (polled)."""

    name = "result backend (Celery API)"
    outage_errors = (OSError, BackendError, TimeoutError)

    def __init__(self, backend: Any, longest_interval: float = 5.0) -> None:
        super().__init__(longest_interval)
        self._backend = backend
        #: reads (batches or single calls) made so far
        self.reads = 0

    def _describe(self, exc: BaseException) -> str:
        return mask_text(f"{type(exc).__name__}: {exc}")

    def _read(self, task_ids: Sequence[str]) -> Iterator[TaskEvent]:
        backend = self._backend
        if not isinstance(backend, KeyValueStoreBackend):
            for task_id in task_ids:
                self.reads += 1
                meta = backend.get_task_meta(task_id, cache=False)
                if meta.get("status", TaskState.PENDING) != TaskState.PENDING:
                    yield event_from_meta(task_id, plain_meta(meta))
            return
        for part in chunks(task_ids):
            self.reads += 1
            keys = [backend.get_key_for_task(task_id) for task_id in part]
            try:
                values = list(backend.mget(keys))
            except NotImplementedError:  # no batched get in this backend: one by one
                values = [backend.get(key) for key in keys]
            for task_id, value in zip(part, values, strict=True):
                if not value:
                    continue
                try:
                    meta = backend.decode(value)
                except Exception as exc:  # a value another program wrote: not this one's end
                    log.warning(
                        "undecodable stored result for task %s (%s)", task_id, type(exc).__name__
                    )
                    continue
                yield event_from_meta(task_id, plain_meta(meta))
