"""Learning task outcomes from the Redis result backend without polling each task.

Celery's Redis backend writes ``celery-task-meta-<id>`` and PUBLISHes the same value on a
channel of the same name. The watcher holds one PSUBSCRIBE to ``celery-task-meta-*`` on its
own connection and reports the outcomes of the ids it was asked to watch through a queue.
A periodic reconcile sweep reads the result keys of watched ids (MGET, in chunks), so
outcomes published while the pub/sub connection was down, or never published again
(Celery does not overwrite a SUCCESS result), are still found.

The watcher thread owns its Redis connections; the consumer loop only calls :meth:`watch`,
:meth:`unwatch` and drains :attr:`completions`.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import redis

from bridge.access_problems import RedisAccess
from bridge.core.vocabulary import TaskState
from bridge.io_retry import OutageLog

log = logging.getLogger(__name__)

#: states whose result carries an exception (``exc_type``, ``exc_message``)
_ERROR_STATES = (TaskState.FAILURE, TaskState.REVOKED, TaskState.RETRY)

Decoder = Callable[[bytes], dict[str, Any]]

#: seconds at most between tries to reach a result backend that went away
RECONNECT_WAIT_MAX = 1.0


@dataclass(frozen=True, slots=True)
class TaskEvent:
    """A state reported for a watched task: final (SUCCESS/FAILURE/REVOKED) or progress."""

    task_id: str
    state: str
    error_class: str | None = None
    error_message: str | None = None
    traceback: str | None = None

    @property
    def final(self) -> bool:
        state = TaskState.parse(self.state)
        return state is not None and state.final


def event_from_meta(task_id: str, meta: dict[str, Any]) -> TaskEvent:
    state = str(meta.get("status", TaskState.PENDING))
    result = meta.get("result")
    error_class = error_message = None
    if state in _ERROR_STATES and isinstance(result, dict):
        exc_type = result.get("exc_type")  # a string, unless another program wrote it
        error_class = None if exc_type is None else str(exc_type)
        message = result.get("exc_message")
        if isinstance(message, list | tuple):
            message = " ".join(str(part) for part in message)
        error_message = None if message is None else str(message)
    traceback = meta.get("traceback")
    return TaskEvent(
        task_id, state, error_class, error_message, None if traceback is None else str(traceback)
    )


def json_decoder(data: bytes) -> dict[str, Any]:
    value = json.loads(data)
    return value if isinstance(value, dict) else {}


class ResultWatcher:
    """Background thread reporting :class:`TaskEvent` s for watched task ids."""

    def __init__(
        self,
        client_factory: Callable[[], redis.Redis],
        key_prefix: str = "celery-task-meta-",
        reconcile_interval: float = 5.0,
        decoder: Decoder = json_decoder,
        chunk: int = 1000,
        access: RedisAccess | None = None,
    ) -> None:
        self._client_factory = client_factory
        #: where a refused password, certificate or ACL rule is reported, with its fix
        self._access = access
        self._prefix = key_prefix
        self._interval = reconcile_interval
        self._decode = decoder
        self._chunk = chunk
        self._watched: dict[str, float] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._subscribed = threading.Event()
        self._thread: threading.Thread | None = None
        self._outage = OutageLog(log, "result backend (Redis)")
        #: for :meth:`stored_finals`, asked from the consumer loop's thread
        self._reader: redis.Redis | None = None
        self._sweep_now = True
        #: listens that ended in an unexpected error (each was logged and restarted)
        self.crashes = 0
        self.completions: queue.SimpleQueue[TaskEvent] = queue.SimpleQueue()

    # -- called from the consumer loop ------------------------------------------
    def watch(self, task_ids: Iterable[str]) -> None:
        now = time.monotonic()
        with self._lock:
            for task_id in task_ids:
                self._watched.setdefault(task_id, now)

    def unwatch(self, task_id: str) -> None:
        with self._lock:
            self._watched.pop(task_id, None)

    @property
    def healthy(self) -> bool:
        return self._subscribed.is_set() and not self._outage.down

    def stored_finals(self, task_ids: list[str]) -> dict[str, TaskEvent]:
        """Final results stored for ``task_ids`` (one MGET per chunk)."""
        if self._reader is None:
            self._reader = self._client_factory()
        events = read_events(self._reader, self._prefix, self._decode, task_ids, self._chunk)
        return {event.task_id: event for event in events if event.final}

    # -- lifecycle ----------------------------------------------------------------
    def start(self, wait: float = 10.0) -> None:
        self._thread = threading.Thread(target=self._run, name="ckb-result-watcher", daemon=True)
        self._thread.start()
        if not self._subscribed.wait(wait):
            log.warning("result watcher not subscribed after %.0fs; reconcile sweeps cover", wait)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._reader is not None:
            self._reader.close()

    # -- the thread ---------------------------------------------------------------
    def _run(self) -> None:
        """Listen until stopped; whatever ends a listen (Redis away, or a bug on one message)
        is logged, makes the watcher unhealthy (``/readyz`` turns red) and is restarted."""
        backoff = 0.1
        while not self._stop.is_set():
            try:
                self._listen()
                backoff = 0.1
            except (redis.RedisError, OSError) as exc:
                refused = self._refused(exc)
                if not refused:
                    self._outage.failed(exc)
                # Redis away (or a Sentinel naming no master yet): back within a second of its
                # return; a refused login or a bug waits longer between tries
                limit = 5.0 if refused else RECONNECT_WAIT_MAX
            except Exception:
                self.crashes += 1
                log.exception("result watcher failed; restarting it in %.1fs", backoff)
                limit = 5.0
            else:
                continue
            self._subscribed.clear()
            self._sweep_now = True  # what was published meanwhile is only in the keys
            self._stop.wait(backoff)
            backoff = min(backoff * 2, limit)

    def _listen(self) -> None:
        client = self._client_factory()
        pubsub = client.pubsub()  # type: ignore[no-untyped-call]
        try:
            pubsub.psubscribe(f"{self._prefix}*")
            # wait for the confirmation so nothing published after start() is missed
            deadline = time.monotonic() + 10
            while (message := pubsub.get_message(timeout=1.0)) is None or (
                message["type"] != "psubscribe"
            ):
                if time.monotonic() > deadline:
                    raise redis.ConnectionError("no PSUBSCRIBE confirmation within 10s")
            self._subscribed.set()
            next_sweep = 0.0
            while not self._stop.is_set():
                message = pubsub.get_message(timeout=0.2)
                if message is not None:
                    self._on_message(message)
                now = time.monotonic()
                if self._sweep_now or now >= next_sweep:
                    self._sweep(client, full=self._sweep_now)
                    self._outage.recovered()
                    if self._access is not None:
                        self._access.fine()
                    self._sweep_now = False
                    next_sweep = now + self._interval
        finally:
            pubsub.close()
            client.close()

    def _refused(self, exc: BaseException) -> bool:
        """Whether ``exc`` is an access problem (reported with its fix, not as an outage)."""
        if self._access is None:
            return False
        pattern = f"{self._prefix}*"
        return self._access.check(exc, "watching task results", keys=pattern, channels=pattern)

    def _on_message(self, message: dict[str, Any]) -> None:
        if message.get("type") != "pmessage":
            return
        channel = message.get("channel")
        data = message.get("data")
        if not isinstance(channel, bytes) or not isinstance(data, bytes):
            return
        task_id = channel[len(self._prefix) :].decode("utf-8", "replace")
        with self._lock:
            if task_id not in self._watched:
                return
        try:
            event = event_from_meta(task_id, self._decode(data))
        except Exception as exc:  # a result another program wrote: never the watcher's end
            log.warning(
                "undecodable result for task %s (%s); the reconcile sweep retries",
                task_id,
                type(exc).__name__,
            )
            return
        self._report(event)

    def _report(self, event: TaskEvent) -> None:
        if event.final:
            with self._lock:
                if self._watched.pop(event.task_id, None) is None:
                    return
        self.completions.put(event)

    def _sweep(self, client: redis.Redis, full: bool) -> None:
        """Read result keys of watched ids (older than one interval, or all when ``full``)."""
        cutoff = time.monotonic() - (0 if full else self._interval)
        with self._lock:
            due = [task_id for task_id, since in self._watched.items() if since <= cutoff]
        for event in read_events(client, self._prefix, self._decode, due, self._chunk):
            if event.final:
                self._report(event)


def read_events(
    client: redis.Redis, prefix: str, decode: Decoder, task_ids: list[str], chunk: int = 1000
) -> Iterator[TaskEvent]:
    """Stored states of ``task_ids`` (one MGET per chunk); ids with no stored result omitted."""
    for start in range(0, len(task_ids), chunk):
        part = task_ids[start : start + chunk]
        values = client.mget([prefix + task_id for task_id in part])
        for task_id, value in zip(part, values, strict=True):
            if value is None:
                continue
            try:
                data = value if isinstance(value, bytes) else str(value).encode()
                event = event_from_meta(task_id, decode(data))
            except Exception as exc:  # one bad result must not hide the others
                log.warning(
                    "undecodable stored result for task %s (%s)", task_id, type(exc).__name__
                )
                continue
            yield event
