"""What earlier dispatches left in Redis, read before a record is sent (again).

Two facts per task id, both read in one round trip:

- a final result (``celery-task-meta-<id>``): the record was already processed, by this
  bridge before a restart or by the previous owner of its partition; it is finished without
  running again;
- a dispatch marker (``ckb-dispatched-<id>``, written after each publish with a TTL): the task
  was sent and is probably queued or running; the bridge watches it instead of sending it
  twice, and falls back to ``task_timeout`` if it never finishes.

Reading or writing markers is best effort: when Redis does not answer, the bridge sends the
record (at-least-once wins over duplicate suppression).

A batch's markers are written with one small Lua script (one command for the whole batch;
redis-py would otherwise pack one ``SET … EX`` per task, the costliest part of dispatching
after Celery's own message building). Where an ACL forbids scripting, the ledger falls back to
a pipeline of ``SET … EX`` for good.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import redis

from bridge.access_problems import RedisAccess
from bridge.results import Decoder, TaskEvent, event_from_meta

log = logging.getLogger(__name__)

MARKER_PREFIX = "ckb-dispatched-"

#: KEYS: the markers; ARGV[1]: their TTL in seconds; ARGV[1 + i]: the value of KEYS[i]
#: (a batch's record, see bridge/batch_markers.py), '1' when not given
MARK_SCRIPT = """
for i, key in ipairs(KEYS) do
  redis.call('SET', key, ARGV[i + 1] or '1', 'EX', ARGV[1])
end
return #KEYS
"""
#: the value of a plain marker (a task sent, nothing more to say)
PLAIN = b"1"


@dataclass
class Known:
    finals: dict[str, TaskEvent] = field(default_factory=dict)
    in_progress: set[str] = field(default_factory=set)
    #: the marker values that are not plain, by task id (a batch's records)
    batch_of: dict[str, str] = field(default_factory=dict)


def _collect_markers(known: Known, task_ids: list[str], markers: list[object]) -> None:
    for task_id, marker in zip(task_ids, markers, strict=True):
        if marker is None or task_id in known.finals:
            continue
        known.in_progress.add(task_id)
        if isinstance(marker, bytes) and marker != PLAIN:
            known.batch_of[task_id] = marker.decode("utf-8", "replace")


class DispatchLedger:
    def __init__(
        self,
        client: redis.Redis,
        result_prefix: str | None,
        decode: Decoder,
        markers: bool = True,
        access: RedisAccess | None = None,
    ) -> None:
        """``result_prefix`` None: markers only (the results are elsewhere, e.g. in a
        database, and this Redis is the broker's)."""
        self._client = client
        #: where a refused ACL rule is reported with its fix (the ledger still goes on without)
        self._access = access
        self._result_prefix = result_prefix
        self._decode = decode
        self._markers = markers
        #: None once scripting was refused (ACL): markers go through a pipeline then
        self._mark_script: Any = client.register_script(MARK_SCRIPT) if markers else None

    def lookup(self, task_ids: list[str]) -> Known:
        """Final results and live markers of ``task_ids`` (one pipelined round trip)."""
        known = Known()
        if not task_ids:
            return known
        try:
            pipe = self._client.pipeline(transaction=False)
            if self._result_prefix is not None:
                pipe.mget([self._result_prefix + task_id for task_id in task_ids])
            if self._markers:
                pipe.mget([MARKER_PREFIX + task_id for task_id in task_ids])
            replies = pipe.execute() if len(pipe) else []
        except redis.RedisError as exc:
            log.debug("dispatch ledger not read: %r", exc)
            self._refused(exc, "reading results and dispatch markers")
            return known
        if self._access is not None:
            self._access.fine()
        if self._result_prefix is not None:
            self._collect_finals(known, task_ids, replies.pop(0))
        if self._markers:
            _collect_markers(known, task_ids, replies[0])
        return known

    def _collect_finals(self, known: Known, task_ids: list[str], values: list[object]) -> None:
        for task_id, value in zip(task_ids, values, strict=True):
            if not isinstance(value, bytes):
                continue
            try:
                event = event_from_meta(task_id, self._decode(value))
            except Exception as exc:  # another program's result: as if there were none
                log.debug("unreadable stored result for task %s: %r", task_id, exc)
                continue
            if event.final:
                known.finals[task_id] = event

    def mark(self, task_ids: Iterable[str], ttl: float) -> None:
        """Note that these tasks were sent; the markers expire after ``ttl`` seconds."""
        self.mark_members({task_id: "1" for task_id in task_ids}, ttl)

    def mark_members(self, values: Mapping[str, str], ttl: float) -> None:
        """Markers with a value each (:mod:`bridge.batch_markers`), for ``ttl`` seconds."""
        if not self._markers or not values:
            return
        keys = [MARKER_PREFIX + task_id for task_id in values]
        seconds = max(1, int(ttl))
        try:
            if self._mark_script is not None:
                try:
                    self._mark_script(keys=keys, args=[seconds, *values.values()])
                    return
                except redis.exceptions.NoPermissionError as exc:
                    log.info("dispatch markers: scripting not allowed (%s); using SET", exc)
                    self._mark_script = None
            pipe = self._client.pipeline(transaction=False)
            for key, value in zip(keys, values.values(), strict=True):
                pipe.set(key, value, ex=seconds)
            pipe.execute()
        except redis.RedisError as exc:
            log.debug("dispatch markers not written: %r", exc)
            self._refused(exc, "writing dispatch markers")

    def _refused(self, exc: BaseException, doing: str) -> None:
        """Report an access problem (password, certificate, ACL) with its fix."""
        if self._access is not None:
            markers = f"{MARKER_PREFIX}*"
            results = "" if self._result_prefix is None else f"{self._result_prefix}* ~"
            self._access.check(exc, doing, keys=results + markers)
