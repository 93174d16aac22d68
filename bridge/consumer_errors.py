"""What the consumer loop does with an error event of its ``Consumer``.

librdkafka hands the loop its errors as messages: the end of a partition (nothing to do), a
fatal error (the loop stops), an access problem (a wrong password, a certificate the client
cannot accept, a missing ACL on the group or a source topic: said once with its fix, and a
``/readyz`` reason until the same source works again), or anything else (a broker away: logged,
librdkafka retries).
"""

from __future__ import annotations

import logging

from confluent_kafka import KafkaError

from bridge.access_errors import KafkaClient, kafka_problem
from bridge.access_problems import CONNECTION_HOLD, AccessProblems
from bridge.commits import FatalConsumerError, fatal_message

log = logging.getLogger("bridge.loop")


class ConsumerErrors:
    """The loop's handling of the consumer's error events (see the module docstring)."""

    def __init__(self, client: KafkaClient, group: str, problems: AccessProblems) -> None:
        self._client = client
        self._group = group
        self.problems = problems
        #: access problems of single topics, cleared by a record of that topic
        self._topics: set[str] = set()

    def seen(self, error: KafkaError, topic: str | None) -> None:
        code = error.code()
        if code == KafkaError._PARTITION_EOF:
            return
        if error.fatal():
            raise FatalConsumerError(fatal_message(error))
        problem = kafka_problem(error, self._client, topic=topic, group=self._group)
        if problem is None:
            log.warning("Kafka consumer error (retrying): %s", error.str())
        elif code == KafkaError.TOPIC_AUTHORIZATION_FAILED and topic:
            self._topics.add(topic)
            self.problems.report(f"kafka:topic:{topic}", problem)
        elif code == KafkaError.GROUP_AUTHORIZATION_FAILED:
            self.problems.report("kafka:group", problem, hold=CONNECTION_HOLD)
        else:
            self.problems.report("kafka:connection", problem, hold=CONNECTION_HOLD)

    def consumed(self, topic: str) -> None:
        """A record of ``topic`` arrived: the group, the topic and the connection work."""
        if self.problems:  # rare: one lock-free check per record otherwise
            self._topics.discard(topic)
            for key in (f"kafka:topic:{topic}", "kafka:group", "kafka:connection"):
                self.problems.clear(key)
