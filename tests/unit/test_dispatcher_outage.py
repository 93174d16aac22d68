"""While the Celery broker is away, a publish makes one attempt and returns: the loop backs
off and keeps polling instead of blocking a whole turn in retries."""

from __future__ import annotations

import time

import pytest

from bridge.dispatcher import Dispatcher, EncodedTask, PublishError, TaskRequest


class Unreachable:
    """A Celery app whose broker refuses every connection."""

    error: Exception = ConnectionRefusedError("broker away")

    def __init__(self) -> None:
        self.attempts = 0

    def connection_for_write(self) -> None:
        self.attempts += 1
        raise self.error


class Broken(Unreachable):
    """A failure no retry can fix (a bug, a message kombu cannot take)."""

    error = TypeError("not an I/O error")


def request() -> EncodedTask:
    plain = TaskRequest("id-1", "tasks.t", [1], {}, None, {}, "<kafka t[0]@0>")
    return EncodedTask(plain, None, "application/json", "utf-8")


def test_only_io_errors_are_retried() -> None:
    app = Broken()
    with pytest.raises(PublishError):
        Dispatcher(app, retry_for=5.0).publish([request()])
    assert app.attempts == 1


def test_the_first_failure_retries_briefly_then_each_call_tries_once() -> None:
    app = Unreachable()
    dispatcher = Dispatcher(app, retry_for=0.3)
    started = time.monotonic()
    with pytest.raises(PublishError):
        dispatcher.publish([request()])
    assert app.attempts > 1  # a blip gets a few quick retries
    assert time.monotonic() - started < 3
    for _ in range(3):
        before = app.attempts
        with pytest.raises(PublishError):
            dispatcher.publish([request()])
        assert app.attempts == before + 1  # a known outage: one attempt per call


def test_a_re_sent_request_carries_its_retries() -> None:
    assert TaskRequest("i", "t", [], {}, None, {}, "l", retries=2).retries == 2
