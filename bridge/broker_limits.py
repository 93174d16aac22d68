"""The Celery broker's own limit on a task message's size, learned from its refusal.

RabbitMQ refuses a message whose body is over its ``max_message_size`` (16 MiB by default
from RabbitMQ 4.0, 128 MiB before; ``rabbitmq.conf``) by closing the channel with
``PRECONDITION_FAILED - message size N is larger than configured max size M``. Retrying the
batch that held it can never succeed, so the bridge notes ``M`` and from then on dead-letters
each record whose task message is larger instead of sending it (see :mod:`bridge.sender`).
"""

from __future__ import annotations

import re

_RABBITMQ = re.compile(r"message size \d+ is larger than configured max size (\d+)")


class SizeLimitError(Exception):
    """The broker refused a message over its size limit: sending the same again cannot help."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"the Celery broker refuses task messages over {limit} bytes")
        self.limit = limit


def size_limit_in(error: BaseException) -> int | None:
    """The broker's message size limit named by ``error`` (or an error it was raised from)."""
    seen: BaseException | None = error
    for _ in range(5):  # the refusal, and the errors wrapped around it
        if seen is None:
            return None
        match = _RABBITMQ.search(str(seen))
        if match:
            return int(match.group(1))
        seen = seen.__cause__ or seen.__context__
    return None


def too_large(size: int, limit: int) -> str:
    """Why a task message of ``size`` bytes cannot be sent (a dead letter's error message)."""
    return (
        f"its task message is {size} bytes, over the Celery broker's max_message_size "
        f"({limit}): raise the broker's limit, or lower routes[].max_payload_bytes "
        "(routes[].batch.max_bytes for batches)"
    )
