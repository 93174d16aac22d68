"""Creating dead-letter topics that do not exist yet: once per topic, never blocking the loop.

Many clusters switch ``auto.create.topics.enable`` off, and a dead letter for a topic that
does not exist can only wait. Before the first dead letter to a topic the bridge asks Kafka
to create it (``CreateTopics`` through an ``AdminClient``; asynchronous, the answer arrives on
librdkafka's thread, the loop never waits for it) and holds that topic's dead letters until
the answer came. "Already exists" is the usual answer and says nothing. Any other error (no
``CREATE`` permission, a cluster policy, Kafka away) is logged once per topic with the fix;
the dead letter is written and retried as usual, and the topic is asked for again.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import NewTopic  # type: ignore[attr-defined]

from bridge.access_errors import CREATE_TOPIC, KafkaClient, kafka_problem
from bridge.kafka_clients import kafka_error_of
from bridge.settings import DeadLetterSettings

log = logging.getLogger(__name__)

#: seconds the broker may take to create a topic, and the whole request
CREATE_TIMEOUT = 15.0


class DeadLetterTopics:
    """Answers "may a dead letter be written to this topic now?", creating it first.

    The first write to a topic waits for Kafka's answer to the ``CreateTopics`` request:
    producing at once would let a broker with ``auto.create.topics.enable`` create the topic
    first, with its own defaults instead of the configured layout. Any answer releases the
    writes; after a failed request the next write asks again (the writer retries with backoff).
    """

    def __init__(
        self, admin: Any, settings: DeadLetterSettings, client: KafkaClient | None = None
    ) -> None:
        self._admin = admin
        self._client = client  # who asks: names the principal of a missing grant
        self._settings = settings
        self._lock = threading.Lock()
        #: topics whose CreateTopics request has not been answered yet
        self._asking: set[str] = set()
        #: topics that exist (created, or already there)
        self._known: set[str] = set()
        #: topics whose request failed; writes go ahead, the next one asks again
        self._refused: set[str] = set()
        self._warned: set[str] = set()

    def ready(self, topic: str) -> bool:
        """True when a write to ``topic`` may go now; False while its creation is asked for."""
        if not self._settings.create_topics:
            return True
        with self._lock:
            if topic in self._known:
                return True
            if topic in self._refused:
                self._refused.discard(topic)  # this write goes; the one after it asks again
                return True
            if topic in self._asking:
                return False
            self._asking.add(topic)
        self._ask(topic)
        return False

    def poll(self) -> None:
        """Serve the admin client's queue: its librdkafka log lines reach Python logging only
        through ``poll()``."""
        self._admin.poll(0)

    def _ask(self, topic: str) -> None:
        new = NewTopic(
            topic,
            num_partitions=self._settings.partitions,
            replication_factor=self._settings.replication_factor,
            config={key: str(value) for key, value in self._settings.topic_config.items()},
        )
        try:
            futures = self._admin.create_topics(
                [new], operation_timeout=CREATE_TIMEOUT, request_timeout=CREATE_TIMEOUT
            )
        except (KafkaException, ValueError, TypeError) as exc:  # refused before it was sent
            self._failed(topic, exc)
            return
        futures[topic].add_done_callback(lambda future: self._answered(topic, future))

    def _answered(self, topic: str, future: Any) -> None:
        error = future.exception()
        kafka_error = kafka_error_of(error) if error is not None else None
        exists = kafka_error is not None and kafka_error.code() == KafkaError.TOPIC_ALREADY_EXISTS
        if error is not None and not exists:
            self._failed(topic, error)
            return
        if error is None:
            log.info("created dead-letter topic %s", topic)
        with self._lock:
            self._asking.discard(topic)
            self._known.add(topic)

    def _failed(self, topic: str, error: BaseException) -> None:
        with self._lock:
            self._asking.discard(topic)
            self._refused.add(topic)
            first = topic not in self._warned
            self._warned.add(topic)
        problem = None
        if self._client is not None:
            problem = kafka_problem(
                kafka_error_of(error), self._client, topic=topic, topic_needs=CREATE_TOPIC,
                cluster_needs="Create",
            )  # fmt: skip
        if first and problem is not None:
            log.warning(
                "cannot create dead-letter topic %s: %s; or create it yourself. Its dead "
                "letters are retried until it exists",
                topic,
                problem.message,
            )
        elif first:
            log.warning(
                "cannot create dead-letter topic %s (%s): create it, or grant the bridge's "
                "principal CREATE on it; its dead letters are retried until it exists",
                topic,
                _describe(error),
            )


def _describe(error: BaseException) -> str:
    kafka_error = kafka_error_of(error)
    if kafka_error is not None:
        return f"{kafka_error.name()}: {kafka_error.str()}"
    return f"{type(error).__name__}: {error}"
