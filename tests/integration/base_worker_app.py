"""A Celery app of :class:`tasks.base.KafkaTask` tasks for integration tests; no ``bridge``.

Started as a real worker: ``celery -A tests.integration.base_worker_app worker``. Tasks take a
``label`` (unique per test) and record every run of their body in Redis (``RPUSH`` to
:func:`runs_key`). Every delivery the worker handles, whether the body ran or the idempotency
guard skipped it, is recorded by task id with its final state (:func:`deliveries_key`).
"""

from __future__ import annotations

import json
import os
from typing import Any

import redis
from celery import Celery
from celery.signals import task_postrun

from tasks.base import KafkaTask
from tasks.celeryconfig import configure

app = Celery("ckb-it-base")
configure(app)  # the example worker's settings, from the same CKB_CELERY__* environment
app.conf.worker_prefetch_multiplier = 1
_recorder = redis.Redis.from_url(os.environ["CKB_IT_RECORDER_URL"])


def runs_key(label: str) -> str:
    return f"ckb-it:base-runs:{label}"


def deliveries_key(task_id: str) -> str:
    return f"ckb-it:base-deliveries:{task_id}"


class TransientFailure(ConnectionError):
    """A planned error that ``KafkaTask`` retries by default."""


class PermanentFailure(ValueError):
    """A planned error that ``KafkaTask`` does not retry."""


def _record_run(task: KafkaTask, label: str) -> int:
    """Record one run of a task body; the number of runs so far for ``label``."""
    line = {
        "task_id": task.request.id,
        "retries": task.request.retries,
        "pid": os.getpid(),
        "origin": task.kafka_origin(),
    }
    return int(_recorder.rpush(runs_key(label), json.dumps(line)))


@task_postrun.connect
def _record_delivery(task_id: str, task: Any, state: str | None, retval: Any, **_: Any) -> None:
    # a retry's new message is sent before this runs, so with concurrency > 1 the next
    # delivery can be recorded first: record which attempt this was, readers sort by it
    entry = {
        "state": state,
        "retries": task.request.retries,
        "retval": retval if state == "SUCCESS" else None,
    }
    _recorder.rpush(deliveries_key(task_id), json.dumps(entry))


@app.task(bind=True, base=KafkaTask, name="it.base.once")
def once(self: KafkaTask, label: str) -> dict[str, Any]:
    """Succeed; the result says how many times the body has run for ``label``."""
    return {"runs": _record_run(self, label)}


@app.task(bind=True, base=KafkaTask, name="it.base.flaky")
def flaky(self: KafkaTask, label: str, failures: int) -> str:
    """Raise a transient error on the first ``failures`` runs for ``label``, then succeed."""
    if _record_run(self, label) <= failures:
        raise TransientFailure(f"planned transient failure for {label}")
    return "ok"


@app.task(bind=True, base=KafkaTask, name="it.base.broken")
def broken(self: KafkaTask, label: str) -> str:
    """Always raise an error that is not retried."""
    _record_run(self, label)
    raise PermanentFailure(f"planned permanent failure for {label}")
