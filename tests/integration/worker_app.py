"""A Celery app for integration tests that knows nothing of ``bridge``.

Started as a real worker: ``celery -A tests.integration.worker_app worker``. Its task records
every execution in Redis so tests can check what ran, where, and when it finished.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import redis
from celery import Celery

from tasks.celeryconfig import configure

app = Celery("ckb-it")
configure(app)  # the example worker's settings, from the same CKB_CELERY__* environment
app.conf.worker_prefetch_multiplier = 1
if os.environ.get("CKB_IT_IGNORE_RESULT"):  # a misconfigured worker, for the probe's test
    app.conf.task_ignore_result = True
_recorder = redis.Redis.from_url(os.environ["CKB_IT_RECORDER_URL"])

HEADERS = ("ckb_topic", "ckb_partition", "ckb_offset", "ckb_key", "ckb_timestamp")
#: tracing headers the bridge adds (bridge.tracing); recorded when present
TRACE_HEADERS = ("traceparent", "tracestate", "ckb_correlation_id")


def executions_key(topic: str) -> str:
    return f"ckb-it:exec:{topic}"


def starts_key(topic: str) -> str:
    return f"ckb-it:start:{topic}"


class PlannedFailure(Exception):
    """Raised on purpose by ``it.record`` when the payload asks for it."""


#: Redis key that, while it exists, makes ``mode: broken_until_fixed`` records fail
BROKEN_KEY = "ckb-it:broken"


def _maybe_fail(task: Any, payload: dict[str, Any]) -> None:
    """Failure modes a test asks for in the payload's ``mode``.

    - ``always_fail``: raise every time (after Celery's retries the task ends FAILURE);
    - ``fail_once``: the first run retries itself once (Celery RETRY), the second succeeds;
    - ``broken_until_fixed``: fail while the Redis key ``ckb-it:broken`` exists.
    """
    mode = payload.get("mode")
    if mode == "always_fail":
        raise PlannedFailure(f"record {payload.get('n')} always fails")
    if mode == "fail_once" and task.request.retries == 0:
        raise task.retry(exc=PlannedFailure("first attempt fails"), countdown=0.05, max_retries=3)
    if mode == "broken_until_fixed" and _recorder.exists(BROKEN_KEY):
        raise PlannedFailure("the task is broken until the test fixes it")


@app.task(bind=True, name="it.record")
def record(self: Any, payload: Any) -> str:
    """Sleep ``payload['sleep_ms']``, fail as ``payload['mode']`` asks, else record the run.

    With ``payload['mark_start']`` it first records that it started (a test's signal that
    the task is running now).
    """
    started = time.time()
    if isinstance(payload, dict):
        if payload.get("mark_start"):
            topic = str(getattr(self.request, "ckb_topic", None))
            _recorder.rpush(starts_key(topic), json.dumps({"task_id": self.request.id}))
        time.sleep(float(payload.get("sleep_ms", 0)) / 1000.0)
        _maybe_fail(self, payload)
    headers = {name: getattr(self.request, name, None) for name in HEADERS}
    line = {
        "task_id": self.request.id,
        "pid": os.getpid(),
        "start": started,
        "end": time.time(),
        "payload": payload,
        **headers,
        "trace": {name: getattr(self.request, name, None) for name in TRACE_HEADERS},
    }
    _recorder.rpush(executions_key(str(headers["ckb_topic"])), json.dumps(line))
    return "ok"


BATCH_HEADERS = ("ckb_topic", "ckb_partition", "ckb_batch_first_offset", "ckb_batch_last_offset",
                 "ckb_batch_size")  # fmt: skip


@app.task(bind=True, name="it.batch")
def batch(self: Any, payloads: list[Any]) -> str:
    """A batch task (``routes[].batch``): record the batch, fail if any payload asks to."""
    headers = {name: getattr(self.request, name, None) for name in BATCH_HEADERS}
    for payload in payloads:
        if isinstance(payload, dict):
            time.sleep(float(payload.get("sleep_ms", 0)) / 1000.0)
            _maybe_fail(self, payload)
    ended = time.time()  # "start" kept for the tests that order batches by it
    line = {
        "task_id": self.request.id,
        "payloads": payloads,
        **headers,
        "start": ended,
        "end": ended,
    }
    _recorder.rpush(executions_key(str(headers["ckb_topic"])), json.dumps(line))
    return "ok"
