"""What a failed dead-letter write means: retriable, too large, refused (only an operator can
fix it) or fatal (the producer is broken). See :mod:`bridge.dead_letters` for what each leads to.
"""

from __future__ import annotations

from enum import Enum

from confluent_kafka import KafkaError, KafkaException

from bridge.access_errors import DEAD_LETTER_TOPIC, KafkaClient, kafka_problem


class WriteError(Enum):
    """What a failed dead-letter write means (see the module docstring)."""

    RETRIABLE = "retriable"
    TOO_LARGE = "too large"
    REFUSED = "refused"
    FATAL = "fatal"


_TOO_LARGE = frozenset({KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.RECORD_LIST_TOO_LARGE})
#: refusals only an operator can lift, with what to do
REFUSED_FIX = {
    KafkaError.TOPIC_AUTHORIZATION_FAILED: "grant the bridge's principal WRITE on the topic",
    KafkaError.CLUSTER_AUTHORIZATION_FAILED: "grant the bridge's principal IDEMPOTENT_WRITE "
    "on the cluster (Kafka < 3.0)",
    KafkaError.TOPIC_EXCEPTION: "the topic name is not valid: fix routes[].dlq_topic",
    KafkaError._INVALID_ARG: "fix routes[].dlq_topic (a Kafka topic name: letters, digits, "
    "'.', '_', '-'; at most 249 characters)",
    KafkaError.POLICY_VIOLATION: "a cluster policy refuses the write: ask the cluster's owner",
    KafkaError.INVALID_RECORD: "the broker refuses the record: check the topic's settings",
}
#: a letter too large even without its value
HEADERS_TOO_LARGE = (
    "the letter is too large even without its value: raise the topic's max.message.bytes"
)


def refused_fix(error: KafkaError | None, topic: str, client: KafkaClient | None) -> str:
    """What to do about a refused write: the grant (with its ``kafka-acls`` command) when
    an ACL is missing, else :data:`REFUSED_FIX`'s advice."""
    if error is None:
        return ""
    problem = None
    if client is not None:
        problem = kafka_problem(error, client, topic=topic, topic_needs=DEAD_LETTER_TOPIC)
    return problem.message if problem is not None else REFUSED_FIX.get(error.code(), "")


def kafka_error(error: object) -> KafkaError | None:
    """The ``KafkaError`` of a delivery report or of what ``produce()`` raised."""
    if isinstance(error, KafkaError):
        return error
    if isinstance(error, KafkaException) and error.args and isinstance(error.args[0], KafkaError):
        return error.args[0]
    return None


def classify(error: object) -> WriteError:
    """Retriable, too large, refused or fatal: what a failed write means."""
    if isinstance(error, BufferError):  # the producer's queue is full
        return WriteError.RETRIABLE
    found = kafka_error(error)
    if found is None:  # a bug or a bad argument: no retry changes it
        return WriteError.RETRIABLE if isinstance(error, str) else WriteError.REFUSED
    if found.fatal() or found.code() == KafkaError._FATAL:
        return WriteError.FATAL
    if found.code() in _TOO_LARGE:
        return WriteError.TOO_LARGE
    if found.code() in REFUSED_FIX:
        return WriteError.REFUSED
    return WriteError.RETRIABLE


def describe(error: object) -> str:
    found = kafka_error(error)
    if found is not None:
        return f"{found.name()}: {found.str()}"
    if isinstance(error, BaseException):
        return f"{type(error).__name__}: {error}"
    return str(error)
