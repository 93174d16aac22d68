"""The bridge's own Celery app: a client only. It never imports the tasks it sends.

On an AMQP broker (RabbitMQ) the app turns publisher confirms on (kombu's pyamqp transport
option ``confirm_publish``): a publish returns once RabbitMQ has the message, and one it
refuses (``basic.nack``) raises, so a task counts as dispatched only once the broker holds it.
``options.broker_transport_options.confirm_publish: false`` turns them off (and that promise).
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from bridge.settings import CelerySettings

#: broker URL schemes served by kombu's pyamqp transport
AMQP_SCHEMES = frozenset({"amqp", "amqps", "pyamqp"})


def uses_amqp(broker_url: str) -> bool:
    """Whether ``broker_url`` is an AMQP broker (RabbitMQ), not Redis."""
    return broker_url.partition("://")[0].lower() in AMQP_SCHEMES


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
    if uses_amqp(settings.broker_url):
        transport = dict(app.conf.broker_transport_options or {})
        app.conf.broker_transport_options = {"confirm_publish": True, **transport}
    return app
