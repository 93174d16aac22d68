"""The Celery app the benchmark's workers run: one no-op task, and nothing of ``bridge``.

Started as ``celery -A bench.noop_app worker``. Settings follow ``tasks/celeryconfig.py`` (late
acknowledgement, reject on worker loss, prefetch multiplier from ``CKB_WORKER_PREFETCH``), so
the workers are configured as the README recommends for tasks fed from Kafka.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from celery import Celery

from bench import STAMP_TASK, TASK_NAME

app = Celery("ckb-bench-worker")
app.conf.update(
    broker_url=os.environ["CKB_CELERY__BROKER_URL"],
    result_backend=os.environ["CKB_CELERY__RESULT_BACKEND"],
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=int(os.environ.get("CKB_WORKER_PREFETCH", "4")),
    broker_connection_retry_on_startup=True,
    task_track_started=False,
    worker_hijack_root_logger=False,
)
# the bridge's celery.options, as tasks/celeryconfig.py reads them (a sentinel:// master_name)
app.conf.update(json.loads(os.environ.get("CKB_CELERY__OPTIONS") or "{}"))


#: CKB_BENCH_TASK_MS=20 makes every task take 20 ms (a task that does some work)
TASK_SECONDS = float(os.environ.get("CKB_BENCH_TASK_MS", "0")) / 1000.0


@app.task(name=TASK_NAME)  # type: ignore[untyped-decorator]
def noop(*args: Any, **kwargs: Any) -> None:
    """Do nothing (or sleep ``CKB_BENCH_TASK_MS``): the benchmark measures what surrounds a
    task, not the task."""
    if TASK_SECONDS:
        time.sleep(TASK_SECONDS)


@app.task(name=STAMP_TASK)  # type: ignore[untyped-decorator]
def stamp(*args: Any, **kwargs: Any) -> float:
    """The moment the task body started (``time.time()``, the clock the benchmark reads when it
    sends): the latency measurements read it from the stored result."""
    return time.time()
