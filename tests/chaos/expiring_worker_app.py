"""The integration worker app (``it.record``) with results that expire quickly.

``celery -A tests.chaos.expiring_worker_app worker``: Celery's Redis backend stores each result
with ``result_expires`` as the key's TTL, so here a result key vanishes
``CKB_CHAOS_RESULT_EXPIRES`` seconds (default 1) after the task finished.
"""

from __future__ import annotations

import os

from tests.integration.worker_app import app, record

app.conf.result_expires = int(os.environ.get("CKB_CHAOS_RESULT_EXPIRES", "1"))

__all__ = ["app", "record"]
