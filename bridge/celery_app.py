"""The bridge's own Celery app: a client only. It never imports the tasks it sends."""

from __future__ import annotations

from typing import Any

from celery import Celery

from bridge.settings import CelerySettings


def make_celery_app(settings: CelerySettings) -> Any:
    app = Celery("ckb-bridge", broker=settings.broker_url, backend=settings.result_backend)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        task_default_queue=settings.default_queue,
        broker_connection_retry_on_startup=True,
        # the bridge retries publishing itself (tenacity) and must not block in kombu
        task_publish_retry=False,
    )
    app.conf.update(settings.options)
    return app
