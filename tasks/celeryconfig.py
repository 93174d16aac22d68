"""Worker-side Celery settings that suit tasks fed from Kafka."""

from __future__ import annotations

import json
import os
from typing import Any


def _env(*names: str, default: str) -> str:
    for name in names:
        value = os.environ.get(name)
        if value:
            return value
    return default


def settings_from_env() -> dict[str, Any]:
    visibility = int(_env("CKB_WORKER_VISIBILITY_TIMEOUT", default="3600"))
    return {
        "broker_url": _env(
            "CKB_CELERY__BROKER_URL", "CELERY_BROKER_URL", default="redis://127.0.0.1:6379/0"
        ),
        "result_backend": _env(
            "CKB_CELERY__RESULT_BACKEND",
            "CELERY_RESULT_BACKEND",
            default="redis://127.0.0.1:6379/1",
        ),
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        # a task is acknowledged after it ran, so a worker killed mid-task loses nothing
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        # longer than any task's run time, or Redis redelivers a running task
        "broker_transport_options": {"visibility_timeout": visibility},
        "result_expires": int(_env("CKB_WORKER_RESULT_EXPIRES", default="86400")),
        "worker_prefetch_multiplier": int(_env("CKB_WORKER_PREFETCH", default="4")),
        "broker_connection_retry_on_startup": True,
        "task_track_started": False,
        # rpc:// replies survive a RabbitMQ restart (other backends ignore it)
        "result_persistent": True,
    }


def options_from_env() -> dict[str, Any]:
    """The bridge's ``celery.options`` (``CKB_CELERY__OPTIONS``, JSON), so one setting serves
    both: e.g. ``{"broker_transport_options": {"master_name": "mymaster"},
    "result_backend_transport_options": {"master_name": "mymaster"}}`` for ``sentinel://``."""
    raw = os.environ.get("CKB_CELERY__OPTIONS")
    options = json.loads(raw) if raw else {}
    if not isinstance(options, dict):
        raise ValueError("CKB_CELERY__OPTIONS must be a JSON object of Celery settings")
    return options


def configure(app: Any) -> None:
    settings = settings_from_env()
    options = options_from_env()
    # transport options add to the worker's own (visibility_timeout) instead of replacing them
    transport = {
        **settings["broker_transport_options"],
        **options.pop("broker_transport_options", {}),
    }
    app.conf.update({**settings, **options, "broker_transport_options": transport})
