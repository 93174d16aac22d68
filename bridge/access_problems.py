"""The access problems in force (:mod:`bridge.access_errors` says what each means), for
``/readyz``, and the reporters each of the bridge's Kafka and Redis clients hands its errors to.

Each problem is logged once, as an ERROR, when it starts, and once more when it is gone.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from confluent_kafka import KafkaError

from bridge.access_errors import (
    SOURCE_TOPIC,
    AccessProblem,
    KafkaClient,
    RedisClient,
    kafka_problem,
    redis_problem,
)

#: seconds a refused login or certificate stays a readiness reason after librdkafka last
#: reported it (it reports it again on every reconnect, at most 10 s apart by default)
CONNECTION_HOLD = 60.0


class AccessProblems:
    """The access problems in force now, for ``/readyz``; thread-safe.

    :meth:`report` logs a problem once, as an ERROR, when it starts (or changes); it stays a
    readiness reason until :meth:`clear` or, reported with ``hold``, until ``hold`` seconds
    pass without another report (for sources that repeat their errors while they last).
    """

    def __init__(self, logger: logging.Logger, clock: Callable[[], float] = time.monotonic) -> None:
        self._log = logger
        self._clock = clock
        self._lock = threading.Lock()
        #: key -> (problem, hold deadline or None)
        self._current: dict[str, tuple[AccessProblem, float | None]] = {}

    def report(self, key: str, problem: AccessProblem, hold: float | None = None) -> None:
        until = None if hold is None else self._clock() + hold
        with self._lock:
            before = self._current.get(key)
            # several clients of one cluster meet the same refusal: it is said once
            said = any(other == problem for k, (other, _) in self._current.items() if k != key)
            self._current[key] = (problem, until)
        if (before is None or before[0] != problem) and not said:
            self._log.error("%s", problem.message)

    def clear(self, key: str) -> None:
        with self._lock:
            gone = self._current.pop(key, None)
        if gone is not None:
            self._log.warning("resolved: %s", gone[0].message.split(": ", 1)[0])

    def __bool__(self) -> bool:
        return bool(self._current)

    def reasons(self) -> list[str]:
        """The problems in force (expired holds dropped), for ``/readyz``."""
        now = self._clock()
        with self._lock:
            expired = [k for k, (_, until) in self._current.items() if until and until < now]
            for key in expired:
                del self._current[key]
            return list(dict.fromkeys(problem.message for problem, _ in self._current.values()))


@dataclass(frozen=True)
class RedisAccess:
    """One of the bridge's Redis connections and the registry its access problems go to."""

    client: RedisClient
    problems: AccessProblems
    key: str

    def check(
        self, exc: BaseException, doing: str = "", keys: str = "", channels: str = ""
    ) -> bool:
        """Report ``exc`` when it is an access problem (True); False for anything else."""
        problem = redis_problem(exc, self.client, doing, keys, channels)
        if problem is not None:
            self.problems.report(self.key, problem)
        return problem is not None

    def fine(self) -> None:
        """The connection works again."""
        if self.problems:
            self.problems.clear(self.key)


@dataclass(frozen=True)
class KafkaAccess:
    """One of the bridge's Kafka clients and the registry its access problems go to."""

    client: KafkaClient
    problems: AccessProblems
    key: str
    group: str | None = None
    topic_needs: tuple[str, ...] = SOURCE_TOPIC

    def check(
        self, error: KafkaError | None, topic: str | None = None, hold: float | None = None
    ) -> bool:
        """Report ``error`` when it is an access problem (True); False for anything else."""
        problem = kafka_problem(
            error, self.client, topic=topic, group=self.group, topic_needs=self.topic_needs
        )
        if problem is not None:
            self.problems.report(self.key, problem, hold)
        return problem is not None

    def fine(self) -> None:
        """The client works again."""
        if self.problems:
            self.problems.clear(self.key)

    def on_error(self, error: KafkaError) -> None:
        """librdkafka's ``error_cb``: a refused login or certificate reaches a client only
        here (its requests just time out). A readiness reason until :data:`CONNECTION_HOLD`
        seconds after the last report, or until the client works again."""
        self.check(error, hold=CONNECTION_HOLD)


class RepeatedRefusals(logging.Filter):
    """Drops librdkafka's own lines about a refused login or certificate while an access
    problem is in force: librdkafka logs one for every reconnect of every client (hundreds a
    minute); the bridge has said it once, with its fix."""

    MARKS = ("SASL authentication error", "SSL handshake failed", "certificate verify failed")

    def __init__(self, problems: AccessProblems) -> None:
        super().__init__()
        self._problems = problems

    def filter(self, record: logging.LogRecord) -> bool:
        if not self._problems:
            return True
        text = record.getMessage()
        return not any(mark in text for mark in self.MARKS)

    def install(self, logger: logging.Logger) -> None:
        """On ``logger``, instead of an earlier one (a bridge built again in one process)."""
        for old in [f for f in logger.filters if isinstance(f, RepeatedRefusals)]:
            logger.removeFilter(old)
        logger.addFilter(self)
