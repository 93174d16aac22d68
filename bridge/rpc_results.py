"""Learning task outcomes from Celery's ``rpc://`` result backend: replies on a queue the
bridge owns.

With ``rpc://`` a worker stores nothing: it publishes each state of a task (STARTED when
tracked, RETRY, then SUCCESS/FAILURE/REVOKED) as one message, through the default exchange, to
the queue named by the task message's ``reply_to`` property, with ``correlation_id`` = the task
id and the body Celery's result meta (``task_id``, ``status``, ``result``, ``traceback``,
``children``) in ``result_serializer``. A message with no ``reply_to`` gets no reply at all.

So the bridge sets ``reply_to`` on every task it publishes (:attr:`RpcResults.reply_to`, given
to the dispatcher) and consumes that queue on its own thread and connection (``basic_consume``
with a prefetch window: pushed, never polled):

- **The queue's name** is stable exactly when the bridge's Kafka identity is:
  ``ckb.replies.<group>.<group.instance.id>`` with static membership (a restarted member gets
  its partitions back, and here the replies its predecessor's tasks sent meanwhile), else
  unique to the process (``…<host>.<pid>.<random>``): two bridges never share a queue, which
  would split the replies between them.
- **It survives** the bridge (durable, not auto-deleted: a kill -9 does not drop it, so replies
  keep arriving) and RabbitMQ restarts (durable; the replies themselves only when the workers
  publish them persistent: ``result_persistent = True``). It is deleted by RabbitMQ once
  unused for ``result_expires`` (``x-expires``, as Celery's own rpc queues), and by the bridge
  when a per-process queue's bridge stops cleanly.
- **A reply is acked** once its event is in :attr:`RpcResults.completions` (the loop's input)
  or kept as a stray, many at a time (one ``multiple`` ack every :data:`ACK_EVERY` seconds:
  an ack per reply halved the rate the consumer reads at). On a per-process queue at once
  (nobody will read it again); on a static member's queue the acks are held for ``hold``
  seconds (:func:`ack_hold`: a few commit intervals): if the bridge dies meanwhile, RabbitMQ
  delivers those replies again to its successor, whose records are then mostly not committed
  yet either, so it concludes them without running their tasks again.
- A final reply for an id nobody watches (the predecessor's task, a task of a partition since
  revoked, the second run of a duplicate) is acked and kept, a bounded number of them, as the
  rpc backend's only "stored results": :meth:`RpcResults.stored_finals` answers from them, so
  a record read again whose task already finished concludes without a second run. Requeueing
  it would only bounce it back to this, the queue's sole consumer.

Nothing else is stored: no result can be read back after the fact and there is nowhere to keep
dispatch markers (:class:`RepliesLedger`). What that costs is in README, Brokers and backends.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import queue
import socket
import threading
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from datetime import timedelta
from typing import Any

import amqp.exceptions  # type: ignore[import-untyped]
import kombu.exceptions
from kombu.entity import Exchange, Queue
from kombu.messaging import Consumer

from bridge.dispatch_ledger import Known
from bridge.io_retry import OutageLog
from bridge.results import TaskEvent, event_from_meta

log = logging.getLogger(__name__)

#: replies RabbitMQ may push before the bridge acked earlier ones: AMQP's largest window (with
#: acks held, the consumer reads at most this many per ``hold`` seconds)
PREFETCH = 65_535
#: seconds between the consumer's acks (each acks every reply due, with ``multiple``)
ACK_EVERY = 0.05
#: final replies kept for ids nobody watched when they came (see the module doc)
STRAYS = 50_000
#: seconds an unused reply queue lives when Celery's ``result_expires`` is off
DEFAULT_EXPIRES = 86_400.0
#: seconds each wait for a reply lasts (how soon a stop is seen; heartbeats are sent between)
DRAIN_TIMEOUT = 0.5
#: RabbitMQ's limit on a queue name, in bytes
MAX_NAME = 255

#: what a RabbitMQ that is away, restarting or closing the channel raises
AMQP_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    kombu.exceptions.KombuError,
    amqp.exceptions.AMQPError,
)


def reply_queue_name(group_id: str, instance_id: str | None) -> str:
    """``ckb.replies.<group>.<instance>``: the static member's own, else this process's."""
    member = instance_id or f"{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
    name = f"ckb.replies.{group_id}.{member}"
    if len(name.encode()) > MAX_NAME:  # a long group id: keep it recognisable and unique
        digest = hashlib.sha256(name.encode()).hexdigest()[:16]
        name = f"{name.encode()[: MAX_NAME - 17].decode(errors='ignore')}.{digest}"
    return name


def queue_expiry(result_expires: Any) -> float:
    """Seconds an unused reply queue lives: Celery's ``result_expires`` (its rpc queues' own
    ``x-expires``), or :data:`DEFAULT_EXPIRES` when that is off."""
    if isinstance(result_expires, timedelta):
        result_expires = result_expires.total_seconds()
    if isinstance(result_expires, int | float) and result_expires > 0:
        return float(max(result_expires, 1))
    return DEFAULT_EXPIRES


def ack_hold(commit_interval: float) -> float:
    """Seconds a static member holds its acks: longer than a record usually stays uncommitted
    after its task finished (the next commit and its round trip), a few commit intervals."""
    return 3 * commit_interval + 2.0


def accepted_content(conf: Any) -> list[str]:
    """The serializers Celery's own result consumer accepts."""
    accept = conf.result_accept_content
    return list(conf.accept_content if accept is None else accept)


class RpcResults:
    """A :class:`~bridge.result_source.ResultSource` reading the bridge's reply queue."""

    def __init__(
        self,
        connect: Callable[[], Any],
        reply_to: str,
        expires: float,
        accept: list[str],
        durable_name: bool,
        hold: float = 0.0,
        strays: int = STRAYS,
    ) -> None:
        """``connect``: a new kombu connection to the broker; ``durable_name``: the name
        outlives the process (static membership), so a clean stop keeps the queue; ``hold``:
        seconds each ack waits (0: acked at once)."""
        self._connect = connect
        #: the queue every task message names in ``reply_to``
        self.reply_to = reply_to
        self._queue: Any = Queue(  # type: ignore[no-untyped-call]
            reply_to,
            Exchange(""),  # type: ignore[no-untyped-call]
            routing_key=reply_to,
            durable=True,
            auto_delete=False,
            expires=expires,
        )
        self._accept = accept
        self._keep_queue = durable_name
        self._hold = hold
        self._prefetch = PREFETCH
        #: (received at, delivery tag) of the replies whose ack is held, oldest first
        self._unacked: deque[tuple[float, int]] = deque()
        self._strays_max = strays
        self._watched: set[str] = set()
        self._strays: OrderedDict[str, TaskEvent] = OrderedDict()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._consuming = threading.Event()
        self._thread: threading.Thread | None = None
        self._outage = OutageLog(log, "result replies (RabbitMQ)")
        #: consumers that ended in an unexpected error (each was logged and restarted)
        self.crashes = 0
        self.completions: queue.SimpleQueue[TaskEvent] = queue.SimpleQueue()

    # -- called from the consumer loop ------------------------------------------
    def watch(self, task_ids: Iterable[str]) -> None:
        with self._lock:
            self._watched.update(task_ids)

    def unwatch(self, task_id: str) -> None:
        with self._lock:
            self._watched.discard(task_id)

    @property
    def healthy(self) -> bool:
        return self._consuming.is_set() and not self._outage.down

    def stored_finals(self, task_ids: list[str]) -> dict[str, TaskEvent]:
        """Final replies that came for these ids while nobody watched them; rpc stores
        nothing else, so a task that finished before this queue existed is not found."""
        with self._lock:
            return {t: self._strays[t] for t in task_ids if t in self._strays}

    # -- lifecycle ----------------------------------------------------------------
    def start(self, wait: float = 10.0) -> None:
        """Consume on a thread; waits until the queue is declared (a reply sent to a queue that
        does not exist yet is dropped by RabbitMQ, so nothing should be published before)."""
        log.info(
            "results: rpc:// replies to queue %s (%s; no dispatch markers: a revoke or shutdown "
            "waits for every task in flight)",
            self.reply_to,
            "kept for the next bridge with this group.instance.id"
            if self._keep_queue
            else "this process's own, deleted when it stops",
        )
        self._thread = threading.Thread(target=self._run, name="ckb-rpc-replies", daemon=True)
        self._thread.start()
        if not self._consuming.wait(wait):
            log.warning("reply queue %s not consumed after %.0fs: retrying", self.reply_to, wait)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    # -- the thread ---------------------------------------------------------------
    def _run(self) -> None:
        """Consume until stopped; whatever ends a consumer (RabbitMQ away, or a bug on one
        reply) is logged, makes the source unhealthy (``/readyz``) and is restarted."""
        backoff = 0.1
        while not self._stop.is_set():
            try:
                self._consume()
                backoff = 0.1
            except AMQP_ERRORS as exc:
                self._outage.failed(exc)
            except Exception:
                self.crashes += 1
                log.exception("reply consumer failed; restarting it in %.1fs", backoff)
            else:
                continue
            self._consuming.clear()
            self._stop.wait(backoff)
            backoff = min(backoff * 2, 5.0)

    def _consume(self) -> None:
        connection = self._connect()
        try:
            connection.ensure_connection(max_retries=1)
            channel = self._declare(connection)
            channel.basic_qos(0, self._prefetch, False)
            consumer: Any = Consumer(  # type: ignore[no-untyped-call]
                channel,
                [self._queue],
                callbacks=[self._on_reply],
                accept=self._accept,
                no_ack=False,
                auto_declare=False,
                on_decode_error=self._undecodable,
            )
            consumer.consume()
            self._consuming.set()
            self._outage.recovered()
            next_ack = 0.0
            while not self._stop.is_set():
                with contextlib.suppress(TimeoutError):  # no reply meanwhile
                    connection.drain_events(timeout=DRAIN_TIMEOUT)
                connection.heartbeat_check()
                now = time.monotonic()
                if now >= next_ack:
                    self._ack_due(channel, now)
                    next_ack = now + ACK_EVERY
            consumer.cancel()
            if not self._keep_queue:  # nobody will ever read a per-process queue again
                channel.queue_delete(self.reply_to)
        finally:
            self._consuming.clear()
            self._unacked.clear()  # unacked on a closed channel: RabbitMQ delivers them again
            connection.release()

    def _declare(self, connection: Any) -> Any:
        """Declare the reply queue; one left with other arguments (a changed
        ``result_expires``) is used as it is."""
        channel = connection.channel()
        try:
            declared: Any = self._queue(channel)
            declared.declare()
        except amqp.exceptions.PreconditionFailed as exc:
            log.warning(
                "reply queue %s exists with other arguments (%s); using it as it is (delete it "
                "while no bridge runs to have it declared anew)",
                self.reply_to,
                exc.reply_text,
            )
            channel = connection.channel()  # RabbitMQ closed the other one
            channel.queue_declare(self.reply_to, passive=True)
        return channel

    def _undecodable(self, message: Any, exc: Exception) -> None:
        log.warning(
            "undecodable reply for task %s (%s, %s); its task is sent again after task_timeout",
            message.properties.get("correlation_id"),
            message.content_type,
            type(exc).__name__,
        )
        message.ack()

    def _on_reply(self, body: Any, message: Any) -> None:
        meta = body if isinstance(body, dict) else {}
        task_id = str(message.properties.get("correlation_id") or meta.get("task_id") or "")
        if task_id and "status" in meta:  # else not a Celery result: nothing to report
            self._route(event_from_meta(task_id, meta))
        self._unacked.append((time.monotonic(), message.delivery_tag))

    def _ack_due(self, channel: Any, now: float) -> None:
        """Ack, with one ``multiple`` ack, every held reply older than ``hold``."""
        tag = None
        while self._unacked and self._unacked[0][0] <= now - self._hold:
            tag = self._unacked.popleft()[1]
        if tag is not None:
            channel.basic_ack(tag, multiple=True)

    def _route(self, event: TaskEvent) -> None:
        """To ``completions`` when watched (a final one once); a final nobody watches becomes
        a stray; progress nobody watches is dropped."""
        with self._lock:
            watched = event.task_id in self._watched
            if watched and event.final:
                self._watched.discard(event.task_id)
            elif not watched:
                if event.final:
                    self._strays[event.task_id] = event
                    self._strays.move_to_end(event.task_id)
                    while len(self._strays) > self._strays_max:
                        self._strays.popitem(last=False)
                return
        self.completions.put(event)


class RepliesLedger:
    """The :class:`~bridge.result_source.Ledger` of ``rpc://``: the stray finals the reply
    queue brought, and no dispatch markers (nowhere to keep them: RabbitMQ stores messages,
    not facts the bridge could look up)."""

    def __init__(self, results: RpcResults) -> None:
        self._results = results

    def lookup(self, task_ids: list[str]) -> Known:
        return Known(finals=self._results.stored_finals(task_ids))

    def mark(self, task_ids: Iterable[str], ttl: float) -> None:
        pass
