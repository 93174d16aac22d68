"""Example tasks the demo routes Kafka topics to. They never import ``bridge``."""

from __future__ import annotations

import random
import time
from typing import Any

from celery import shared_task


def kafka_origin(request: Any) -> dict[str, Any]:
    """The Kafka coordinates the bridge sent as message headers (``ckb_*``)."""
    return {
        name: getattr(request, f"ckb_{name}", None)
        for name in ("topic", "partition", "offset", "key", "timestamp")
    }


@shared_task(bind=True, name="tasks.examples.process_order")
def process_order(self: Any, order: dict[str, Any]) -> dict[str, Any]:
    """Price an order: sum of quantity times unit price, after a short simulated I/O wait."""
    time.sleep(random.uniform(0.0, 0.02))
    total = sum(int(item["qty"]) * float(item["price"]) for item in order.get("items", []))
    return {
        "order_id": order.get("id"),
        "total": round(total, 2),
        "origin": kafka_origin(self.request),
    }


@shared_task(bind=True, name="tasks.examples.enrich_event")
def enrich_event(self: Any, event: dict[str, Any]) -> dict[str, Any]:
    """Tag an event with where it came from and when it was processed."""
    return {**event, "origin": kafka_origin(self.request), "processed_at": time.time()}
