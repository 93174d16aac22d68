"""An optional base class for Celery tasks fed from Kafka by the bridge.

``@app.task(base=KafkaTask)`` gives a task:

- retries for transient errors, with exponential backoff, full jitter and a bound on the number
  of attempts (Celery's own ``autoretry_for`` machinery, configured through class attributes);
- an idempotency guard: the bridge re-sends a record with the *same* task id after a timeout or
  a rebalance, so when that id already has a SUCCESS result the body is not run again and the
  stored result is returned instead;
- :meth:`KafkaTask.kafka_origin`, the record's Kafka coordinates from the message headers.

Every default can be overridden per task, e.g.
``@app.task(base=KafkaTask, autoretry_for=(MyError,), max_retries=3, idempotency_guard=False)``.
Tasks that do not use this class are not affected in any way. This module never imports
``bridge``: workers run without it.
"""

from __future__ import annotations

import logging
from typing import Any, TypedDict

from celery import Task, states
from celery.backends.base import DisabledBackend
from celery.backends.rpc import RPCBackend

logger = logging.getLogger(__name__)

#: Errors worth another attempt: network blips, timeouts, refused connections. ``ConnectionError``
#: and ``TimeoutError`` are subclasses of ``OSError``; they are named so the intent is visible.
#: ``OSError`` is kept because some network failures (``ENETUNREACH``) are only that.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (ConnectionError, TimeoutError, OSError)


class KafkaOrigin(TypedDict):
    """Where a task's record came from; every field is ``None`` when the bridge did not send it."""

    topic: str | None
    partition: int | None
    offset: int | None
    #: UTF-8 text, or ``"base64:..."`` for a binary key
    key: str | None
    #: the record's timestamp in milliseconds since the epoch
    timestamp: int | None


def kafka_origin(request: Any) -> KafkaOrigin:
    """The Kafka coordinates the bridge sent as message headers (``ckb_*``) on ``request``."""
    return KafkaOrigin(
        topic=getattr(request, "ckb_topic", None),
        partition=getattr(request, "ckb_partition", None),
        offset=getattr(request, "ckb_offset", None),
        key=getattr(request, "ckb_key", None),
        timestamp=getattr(request, "ckb_timestamp", None),
    )


class KafkaTask(Task):  # type: ignore[misc]  # celery is untyped
    """Celery task base class with retry defaults and a SUCCESS guard for Kafka-fed tasks.

    The retry attributes are read by Celery when the task is created
    (``celery.app.autoretry.add_autoretry_behaviour``), so they must stay class attributes or
    ``@app.task(...)`` options; setting them on the instance later has no effect.
    """

    autoretry_for: tuple[type[BaseException], ...] = TRANSIENT_ERRORS
    #: the first retry waits up to 1 s, then 2, 4, ... seconds, capped below
    retry_backoff: bool | int = True
    retry_backoff_max: int = 300
    #: full jitter: each wait is drawn uniformly from [0, backoff]
    retry_jitter: bool = True
    max_retries: int | None = 5
    #: return the stored result instead of running again when the task id already succeeded
    idempotency_guard: bool = True

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        succeeded, result = self._previous_success()
        if succeeded:
            logger.info(
                "task %s[%s] already succeeded; not running it again", self.name, self.request.id
            )
            return result
        return super().__call__(*args, **kwargs)

    def kafka_origin(self) -> KafkaOrigin:
        """The current request's Kafka coordinates (see :func:`kafka_origin`)."""
        return kafka_origin(self.request)

    def _previous_success(self) -> tuple[bool, Any]:
        """``(True, result)`` if this task id already has a SUCCESS result, else ``(False, None)``.

        One read of the result backend. A read that fails runs the task anyway: at-least-once
        allows a duplicate run, not a lost one.
        """
        if not self._guard_applies():
            return False, None
        task_id = self.request.id
        try:
            meta = self.backend.get_task_meta(task_id, cache=False)
        except Exception as exc:
            logger.warning(
                "could not read the result of task %s (%s); running it",
                task_id,
                type(exc).__name__,
            )
            return False, None
        if meta.get("status") == states.SUCCESS:
            return True, meta.get("result")
        return False, None

    def _guard_applies(self) -> bool:
        """Whether a stored SUCCESS could exist for this call, so reading it is worth a GET."""
        request = self.request
        if not self.idempotency_guard or request.called_directly or not request.id:
            return False
        if request.is_eager and not self.store_eager_result:
            return False
        # rpc:// stores nothing to read back: its replies went to the sender's queue
        return not isinstance(self.backend, DisabledBackend | RPCBackend)
