"""The broker's message size limit, read from its refusal (bridge/broker_limits.py)."""

from __future__ import annotations

import amqp.exceptions  # type: ignore[import-untyped]

from bridge.broker_limits import size_limit_in, too_large
from bridge.dispatcher import PublishError


def refusal() -> Exception:
    text = "PRECONDITION_FAILED - message size 524385 is larger than configured max size 262144"
    return amqp.exceptions.PreconditionFailed(text, (60, 40), "Basic.publish")


def test_rabbitmq_s_refusal_names_its_limit_also_when_wrapped() -> None:
    assert size_limit_in(refusal()) == 262144
    try:
        try:
            raise refusal()
        except Exception as exc:
            raise PublishError("publishing 6 tasks failed") from exc
    except PublishError as wrapped:
        assert size_limit_in(wrapped) == 262144


def test_other_errors_name_no_limit() -> None:
    assert size_limit_in(ConnectionResetError("reset by peer")) is None
    assert size_limit_in(amqp.exceptions.PreconditionFailed("PRECONDITION_FAILED - x")) is None


def test_the_dead_letter_says_what_to_change() -> None:
    text = too_large(524385, 262144)
    assert "524385" in text and "262144" in text and "max_message_size" in text
    assert "routes[].max_payload_bytes" in text
