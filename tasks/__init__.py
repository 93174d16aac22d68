"""The example Celery app: ``celery -A tasks worker``.

Broker and result backend come from the same environment the bridge reads
(``CKB_CELERY__BROKER_URL``, ``CKB_CELERY__RESULT_BACKEND``), else Celery's own
``CELERY_BROKER_URL`` / ``CELERY_RESULT_BACKEND``, else a local Redis.
"""

from celery import Celery

from tasks.celeryconfig import configure

app = Celery("tasks", include=["tasks.examples"])
configure(app)

__all__ = ["app"]
