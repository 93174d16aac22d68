"""Publishing Celery task messages by name, many per Redis round trip.

One kombu producer is reused for the life of the bridge, and a batch of task messages goes
out inside ``Producer.batch()`` so Redis sees one pipelined write instead of one round trip
per task. The bridge does not call ``send_task``: that would SUBSCRIBE to every task's result
channel; the result watcher listens for all of them instead.

Each message is encoded (:meth:`Dispatcher.encode`) before the batch, one by one: a message
that cannot be encoded is that record's problem alone (it is dead-lettered) and can never fail
the batch. The batch publish then does only I/O, and only I/O errors are retried.

On RabbitMQ ``Producer.batch()`` publishes one message at a time (a socket write each, no
round trip); with publisher confirms the batch then waits once for RabbitMQ's acks of all its
messages (:mod:`bridge.amqp_confirms`): a batch counts as sent only once RabbitMQ has it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import amqp.exceptions  # type: ignore[import-untyped]
import kombu.exceptions
import redis.exceptions
from kombu.serialization import dumps

from bridge.access_problems import RedisAccess
from bridge.amqp_confirms import BatchConfirms
from bridge.broker_limits import SizeLimitError, size_limit_in
from bridge.io_retry import OutageLog, retry_io

log = logging.getLogger(__name__)

#: what a broker that is away, slow or full raises; anything else is not retried (a retry
#: cannot fix it) and the batch goes back to the loop at once
BROKER_IO_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    redis.exceptions.RedisError,
    kombu.exceptions.OperationalError,
    kombu.exceptions.ConnectionError,
    kombu.exceptions.ChannelError,
    kombu.exceptions.BatchPublishError,
    kombu.exceptions.LimitExceeded,
    # RabbitMQ (py-amqp): kombu's ConnectionError and ChannelError above are py-amqp's own
    # (ConnectionForced when it shuts down, a closed channel, ...); a publish it refused
    # (basic.nack, with publisher confirms) raises MessageNacked, a plain Exception; confirms
    # that do not come within CONFIRM_TIMEOUT raise TimeoutError (an OSError)
    amqp.exceptions.MessageNacked,
)

#: seconds a batch waits for RabbitMQ's confirms before it counts as not sent
CONFIRM_TIMEOUT = 5.0


@dataclass(frozen=True, slots=True)
class TaskRequest:
    task_id: str
    name: str
    args: list[Any]
    kwargs: dict[str, Any]
    queue: str | None
    headers: dict[str, Any]
    #: short, payload-free stand-in for Celery's ``argsrepr`` (shown by Flower and worker logs)
    label: str
    #: Celery's ``retries`` of the message: a re-sent task keeps the retry budget it used
    retries: int = 0


@dataclass(frozen=True, slots=True)
class EncodedTask:
    """A task message serialized ahead of the batch: publishing it can only fail on I/O."""

    request: TaskRequest
    #: Celery's ``(headers, properties, body, sent_event)`` with ``body`` already bytes
    message: Any
    content_type: str
    content_encoding: str

    @property
    def size(self) -> int:
        """Bytes of the encoded body."""
        body = self.message[2] if self.message is not None else b""
        return len(body)


class PublishError(Exception):
    """Publishing a batch failed after the bridge's own retries; delivery is uncertain."""

    def __init__(self, message: str, refused: bool = False) -> None:
        super().__init__(message)
        #: an access problem (password, certificate, ACL), already reported with its fix
        self.refused = refused


class Dispatcher:
    """Sends :class:`TaskRequest` batches through one reused producer."""

    def __init__(
        self,
        app: Any,
        batch_size: int = 500,
        retry_for: float = 2.0,
        access: RedisAccess | None = None,
        reply_to: str | None = None,
    ) -> None:
        self._app = app
        #: the queue workers reply to (``rpc://`` results), set on every task message
        self._reply_to = reply_to
        #: where a refused password, certificate or ACL rule of a Redis broker is reported
        self._access = access
        self._batch_size = batch_size
        self._retry_for = retry_for
        self._connection: Any = None
        self._producer: Any = None
        self._outage = OutageLog(log, "Celery broker")
        #: the largest message body the broker takes, once it refused a larger one
        self.max_message_bytes: int | None = None
        self._declared: set[str] = set()
        #: RabbitMQ (py-amqp), and its batch confirms (``confirm_publish``); known once connected
        self._amqp = False
        self._confirms: BatchConfirms | None = None

    def _ensure_producer(self) -> Any:
        if self._producer is None:
            connection = self._app.connection_for_write()
            self._connection = connection
            self._amqp = connection.transport.driver_type == "amqp"
            options = connection.transport_options or {}
            confirms = self._amqp and bool(options.get("confirm_publish"))
            if confirms:  # confirmed batch by batch here, not message by message in py-amqp
                connection.transport_options = {**options, "confirm_publish": False}
            connection.ensure_connection(max_retries=1)
            producer = self._app.amqp.Producer(connection, auto_declare=False)
            self._confirms = BatchConfirms(producer.channel) if confirms else None
            self._producer = producer
        return self._producer

    def _reset(self) -> None:
        if self._connection is not None:
            try:
                self._connection.close()
            except Exception:  # the connection is being thrown away: any error is moot
                log.debug("closing the broker connection failed", exc_info=True)
        self._connection = None
        self._producer = None
        self._confirms = None
        self._declared.clear()

    def _declare_once(self, producer: Any, queue: str | None) -> list[Any]:
        """Declare each queue once per connection; kombu would otherwise copy the queue and
        its exchange for every message just to find the declaration cached (a fifth of the
        dispatch path's CPU, see docs/benchmarks.md)."""
        name = queue or self._app.conf.task_default_queue
        if name not in self._declared:
            producer.maybe_declare(self._app.amqp.queues[name])
            self._declared.add(name)
        return []

    def encode(self, request: TaskRequest) -> EncodedTask:
        """The task message of ``request``, serialized; raises whatever the serializer raises
        for this one message (deep nesting, a value the serializer cannot take, ...)."""
        message = self._app.amqp.create_task_message(
            request.task_id,
            request.name,
            request.args,
            request.kwargs,
            argsrepr=request.label,
            kwargsrepr="{}",
            retries=request.retries,
            reply_to=self._reply_to,
        )
        headers, properties, body, sent_event = message
        serializer = self._app.conf.task_serializer
        content_type, content_encoding, data = dumps(body, serializer)  # type: ignore[no-untyped-call]
        # the headers go into the transport's JSON envelope unchecked: the bridge builds them from
        # ints and text that is always encodable (UTF-8-decoded or base64 keys, ASCII trace ids)
        # the decoded call is not kept: the encoded body is all the publish needs
        bare = replace(request, args=[], kwargs={})
        return EncodedTask(
            bare, (headers, properties, data, sent_event), content_type, content_encoding
        )

    def _publish_once(self, tasks: Sequence[EncodedTask]) -> None:
        producer = self._ensure_producer()
        amqp = self._app.amqp
        try:
            with producer.batch(max_size=self._batch_size):
                for task in tasks:
                    request = task.request
                    amqp.send_task_message(
                        producer,
                        request.name,
                        task.message,
                        queue=request.queue,
                        headers=request.headers,
                        retry=False,
                        declare=self._declare_once(producer, request.queue),
                        content_type=task.content_type,
                        content_encoding=task.content_encoding,
                    )
                    if self._confirms is not None:
                        self._confirms.published()
            if self._confirms is not None:  # sent only once RabbitMQ has every message
                self._confirms.wait(self._connection, CONFIRM_TIMEOUT)
        except Exception as exc:
            self._reset()
            limit = size_limit_in(exc)
            if limit is None:
                raise
            # the same batch would be refused again: not retried; the sender leaves out
            # what is larger from now on
            self._size_limit(limit)
            raise SizeLimitError(limit) from exc

    def _size_limit(self, limit: int) -> None:
        if limit != self.max_message_bytes:
            log.warning(
                "the Celery broker refuses task messages over %d bytes: records whose message "
                "is larger are dead-lettered from now on",
                limit,
            )
            self.max_message_bytes = limit

    def publish(self, tasks: Sequence[EncodedTask]) -> None:
        """Publish all of ``tasks``; raises :class:`PublishError` when Redis stays down.

        A failed batch is published again as a whole: some of its messages may then be sent
        twice (same task id), which the deterministic ids make visible and harmless.
        """
        if not tasks:
            return
        # while the broker is known to be away, one attempt per call: the loop backs off
        # between calls and keeps polling, instead of blocking a turn for ``retry_for``
        retry_for = 0.0 if self._outage.down else self._retry_for
        try:
            retry_io(self._publish_once, self._outage, retry_for, retry_on=BROKER_IO_ERRORS)(tasks)
        except SizeLimitError as exc:  # the broker is there: one message is too large for it
            raise PublishError(f"publishing {len(tasks)} tasks refused: {exc}") from exc
        except Exception as exc:
            self._outage.failed(exc)
            if self._access is not None and self._access.check(exc, "publishing tasks"):
                raise PublishError(f"publishing {len(tasks)} tasks refused", refused=True) from exc
            raise PublishError(f"publishing {len(tasks)} tasks failed: {exc!r}") from exc
        self._outage.recovered()
        if self._access is not None:
            self._access.fine()

    def queue_depth(self, queue: str | None) -> int | None:
        """Messages waiting in ``queue`` (None: the app's default queue) as the broker counts
        them; None when the broker cannot be asked now. One round trip, no retries."""
        name = queue or self._app.conf.task_default_queue
        try:
            channel = self._ensure_producer().channel
            return int(channel.queue_declare(queue=name, passive=True).message_count)
        except kombu.exceptions.ChannelError:
            if self._amqp:
                self._reset()  # RabbitMQ closes the channel of a failed passive declare
            return 0  # never declared (Redis: or empty): nothing waits there
        except Exception as exc:  # the broker is away: no reading this time
            log.debug("queue depth of %s not read: %r", name, exc)
            self._reset()
            return None

    def close(self) -> None:
        self._reset()
