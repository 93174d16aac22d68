"""Example tasks the demo routes Kafka topics to. They never import ``bridge``.

Both use :class:`tasks.base.KafkaTask`: transient errors are retried with backoff, and a record
the bridge sends again after its task already succeeded is not processed twice.
"""

from __future__ import annotations

import random
import time
from typing import Any

from celery import shared_task

from tasks.base import KafkaTask

__all__ = ["enrich_event", "process_order"]


@shared_task(bind=True, base=KafkaTask, name="tasks.examples.process_order")
def process_order(self: KafkaTask, order: dict[str, Any]) -> dict[str, Any]:
    """Price an order: sum of quantity times unit price, after a short simulated I/O wait."""
    time.sleep(random.uniform(0.0, 0.02))
    total = sum(int(item["qty"]) * float(item["price"]) for item in order.get("items", []))
    return {
        "order_id": order.get("id"),
        "total": round(total, 2),
        "origin": self.kafka_origin(),
    }


@shared_task(bind=True, base=KafkaTask, name="tasks.examples.enrich_event")
def enrich_event(self: KafkaTask, event: dict[str, Any]) -> dict[str, Any]:
    """Tag an event with where it came from and when it was processed."""
    return {**event, "origin": self.kafka_origin(), "processed_at": time.time()}
