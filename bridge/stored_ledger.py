"""The dispatch ledger when results are not in a Redis the bridge reads: final results read
from where the result backend stores them, dispatch markers wherever the factory found room.

Markers go to the broker's Redis when the broker is Redis (the same ``ckb-dispatched-<id>``
keys and script as with a Redis result backend), to a table next to Celery's with a database
backend (:mod:`bridge.db_ledger`), or nowhere: then a task sent by the previous owner of a
partition that has no result yet is sent again after a rebalance or restart.

Like the Redis ledger, this is best effort: a read that fails sends the record.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Protocol

import redis

from bridge.dispatch_ledger import DispatchLedger, Known
from bridge.results import TaskEvent, json_decoder

log = logging.getLogger(__name__)


class StoredFinals(Protocol):
    def stored_finals(self, task_ids: list[str]) -> dict[str, TaskEvent]: ...


class Markers(Protocol):
    def live(self, task_ids: list[str]) -> set[str]: ...
    def mark(self, task_ids: list[str], ttl: float) -> None: ...


class RedisMarkers:
    """Markers in the broker's Redis: the Redis ledger's keys and script, without results."""

    def __init__(self, client: redis.Redis) -> None:
        self._ledger = DispatchLedger(client, None, json_decoder)

    def live(self, task_ids: list[str]) -> set[str]:
        return self._ledger.lookup(task_ids).in_progress

    def mark(self, task_ids: list[str], ttl: float) -> None:
        self._ledger.mark(task_ids, ttl)


class StoredLedger:
    """A :class:`~bridge.result_source.Ledger`: finals from ``results``, markers in
    ``markers`` (None: none); the ``errors`` a read or write may raise are logged, not raised."""

    def __init__(
        self,
        results: StoredFinals,
        markers: Markers | None,
        errors: tuple[type[BaseException], ...] = (redis.RedisError,),
        describe: Callable[[BaseException], str] = repr,
    ) -> None:
        self._results = results
        self._markers = markers
        self._errors = errors
        self._describe = describe

    def lookup(self, task_ids: list[str]) -> Known:
        known = Known()
        if not task_ids:
            return known
        try:
            known.finals = self._results.stored_finals(task_ids)
            if self._markers is not None:
                unfinished = [task_id for task_id in task_ids if task_id not in known.finals]
                known.in_progress = self._markers.live(unfinished) if unfinished else set()
        except self._errors as exc:
            log.debug("dispatch ledger not read: %s", self._describe(exc))
        return known

    def mark(self, task_ids: Iterable[str], ttl: float) -> None:
        if self._markers is None:
            return
        try:
            self._markers.mark(list(task_ids), max(1.0, ttl))
        except self._errors as exc:
            log.debug("dispatch markers not written: %s", self._describe(exc))
