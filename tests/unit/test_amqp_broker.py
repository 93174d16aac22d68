"""RabbitMQ as the Celery broker: publisher confirms per batch, a refused batch retried."""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Any

import amqp.exceptions  # type: ignore[import-untyped]
import pytest

from bridge.amqp_confirms import BatchConfirms
from bridge.celery_app import make_celery_app, uses_amqp
from bridge.dispatcher import BROKER_IO_ERRORS, Dispatcher, EncodedTask, PublishError, TaskRequest
from bridge.settings import CelerySettings

RESULTS = "redis://127.0.0.1:6379/1"


@pytest.mark.parametrize(
    ("url", "amqp_broker"),
    [
        ("amqp://guest:guest@127.0.0.1:5672//", True),
        ("pyamqp://u:p@rabbit/vhost", True),
        ("AMQPS://rabbit:5671//", True),
        ("redis://127.0.0.1:6379/0", False),
        ("rediss://redis:6380/0", False),
    ],
)
def test_amqp_brokers_are_recognised(url: str, amqp_broker: bool) -> None:
    assert uses_amqp(url) is amqp_broker


def test_an_amqp_broker_gets_publisher_confirms() -> None:
    app = make_celery_app(CelerySettings(broker_url="amqp://127.0.0.1//", result_backend=RESULTS))
    assert app.conf.broker_transport_options["confirm_publish"] is True
    assert app.connection_for_write().transport_options["confirm_publish"] is True


def test_other_transport_options_are_kept_and_an_explicit_choice_wins() -> None:
    options = {"broker_transport_options": {"confirm_publish": False, "max_retries": 3}}
    settings = CelerySettings(
        broker_url="pyamqp://127.0.0.1//", result_backend=RESULTS, options=options
    )
    conf = make_celery_app(settings).conf
    assert conf.broker_transport_options == {"confirm_publish": False, "max_retries": 3}


def test_a_redis_broker_gets_no_confirm_option() -> None:
    app = make_celery_app(CelerySettings())
    assert "confirm_publish" not in (app.conf.broker_transport_options or {})


class Nacking:
    """A Celery app whose broker refuses (nacks) the first ``refusals`` publishes."""

    def __init__(self, refusals: int) -> None:
        self.refusals = refusals
        self.attempts = 0

    def connection_for_write(self) -> None:
        self.attempts += 1
        if self.attempts <= self.refusals:
            raise amqp.exceptions.MessageNacked()
        raise TypeError("stop here: the retry happened")


def request() -> EncodedTask:
    plain = TaskRequest("id-1", "tasks.t", [1], {}, None, {}, "<kafka t[0]@0>")
    return EncodedTask(plain, None, "application/json", "utf-8")


def test_a_nacked_publish_is_a_retriable_broker_error() -> None:
    assert issubclass(amqp.exceptions.MessageNacked, BROKER_IO_ERRORS)
    assert issubclass(TimeoutError, BROKER_IO_ERRORS)  # a confirm that never came
    app = Nacking(refusals=2)
    with pytest.raises(PublishError):  # never counted as sent: the caller keeps the batch
        Dispatcher(app, retry_for=5.0).publish([request()])
    assert app.attempts == 3, "retried after each nack"


class ConfirmChannel:
    """What BatchConfirms uses of a py-amqp channel: confirm_select and its event handlers."""

    def __init__(self) -> None:
        self.selected = False
        self.events: dict[str, set[Any]] = defaultdict(set)

    def confirm_select(self) -> None:
        self.selected = True


class Replies:
    """A connection whose drain_events delivers the next scripted ack/nack, or times out."""

    def __init__(self, channel: ConfirmChannel, replies: list[tuple[str, int, bool]]) -> None:
        self.channel = channel
        self.replies = replies

    def drain_events(self, timeout: float) -> None:
        if not self.replies:
            time.sleep(min(timeout, 0.05))
            raise TimeoutError("timed out")  # what py-amqp raises (socket.timeout)
        kind, tag, multiple = self.replies.pop(0)
        for handler in list(self.channel.events[kind]):
            handler(tag, multiple)


def confirms_after(count: int) -> tuple[BatchConfirms, ConfirmChannel]:
    channel = ConfirmChannel()
    confirms = BatchConfirms(channel)
    assert channel.selected, "the channel is put in confirm mode once"
    for _ in range(count):
        confirms.published()
    return confirms, channel


def test_a_batch_is_sent_once_every_message_is_acked() -> None:
    confirms, channel = confirms_after(5)
    # RabbitMQ acks several at once (multiple) and single tags in any order
    replies = [("basic_ack", 2, True), ("basic_ack", 4, False), ("basic_ack", 5, False)]
    connection = Replies(channel, [*replies, ("basic_ack", 3, False)])
    confirms.wait(connection, timeout=5)
    assert not connection.replies
    confirms.published()  # the next batch on the same channel goes on numbering: tag 6
    confirms.wait(Replies(channel, [("basic_ack", 6, True)]), timeout=5)


def test_a_nack_of_any_message_fails_the_batch() -> None:
    confirms, channel = confirms_after(4)
    replies = [("basic_ack", 1, False), ("basic_nack", 3, True), ("basic_ack", 4, False)]
    connection = Replies(channel, replies)
    with pytest.raises(amqp.exceptions.MessageNacked, match="refused 2"):
        confirms.wait(connection, timeout=5)
    assert not connection.replies, "the whole batch settled before the channel is dropped"
    assert issubclass(amqp.exceptions.MessageNacked, BROKER_IO_ERRORS)


def test_a_missing_ack_fails_the_batch_in_time() -> None:
    confirms, channel = confirms_after(3)
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        confirms.wait(Replies(channel, [("basic_ack", 2, True)]), timeout=0.3)
    assert time.monotonic() - started < 2
    assert issubclass(TimeoutError, BROKER_IO_ERRORS)
