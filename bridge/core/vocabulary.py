"""The bridge's shared words as enums: a typo is a type error, not a ``KeyError`` on the loop.

``StrEnum`` members compare equal to their values, so they go straight into metric labels,
DLQ headers and settings without conversion.
"""

from __future__ import annotations

from enum import StrEnum

#: a Kafka topic partition, as the engine and its observers name it
TP = tuple[str, int]

#: what the default dead-letter topic of a topic ends with (``orders`` -> ``orders.dlq``)
DLQ_SUFFIX = ".dlq"


def default_dlq_topic(topic: str) -> str:
    return f"{topic}{DLQ_SUFFIX}"


class Ordering(StrEnum):
    """How a route's records of one partition may run side by side."""

    UNORDERED = "unordered"
    KEY = "key"
    PARTITION = "partition"


class Reason(StrEnum):
    """Why a record was dead-lettered: the ``ckb.reason`` header and the metric label."""

    TASK_FAILED = "task_failed"
    TASK_REVOKED = "task_revoked"
    TASK_TIMEOUT = "task_timeout"
    DECODE_ERROR = "decode_error"
    NO_ROUTE = "no_route"


class Outcome(StrEnum):
    """How a task ended: the ``outcome`` label of ``ckb_tasks_finished_total``."""

    SUCCESS = "success"
    FAILURE = "failure"
    REVOKED = "revoked"
    TIMEOUT = "timeout"


class TaskState(StrEnum):
    """The Celery task states the bridge reads from the result backend."""

    PENDING = "PENDING"
    STARTED = "STARTED"
    RETRY = "RETRY"
    SUCCESS = "SUCCESS"
    FAILURE = "FAILURE"
    REVOKED = "REVOKED"

    @property
    def final(self) -> bool:
        return self in _FINAL

    @classmethod
    def parse(cls, value: object) -> TaskState | None:
        """The state named by ``value``, or None for anything the bridge does not know."""
        return _BY_VALUE.get(value) if isinstance(value, str) else None


_FINAL = frozenset({TaskState.SUCCESS, TaskState.FAILURE, TaskState.REVOKED})
_BY_VALUE: dict[str, TaskState] = {state.value: state for state in TaskState}

#: a final state that is not a success: the dead-letter reason and the outcome label
FAILED = {
    TaskState.FAILURE: (Reason.TASK_FAILED, Outcome.FAILURE),
    TaskState.REVOKED: (Reason.TASK_REVOKED, Outcome.REVOKED),
}


class Rebalance(StrEnum):
    """The ``event`` label of ``ckb_rebalances_total``."""

    ASSIGN = "assign"
    REVOKE = "revoke"
    LOST = "lost"
