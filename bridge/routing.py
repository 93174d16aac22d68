"""Topic → route matching: exact names first, then ``^regex`` routes in file order.

A ``^regex`` route never matches a topic ending in ``.dlq``; such records are skipped.
"""

from __future__ import annotations

import re

from bridge.core.vocabulary import DLQ_SUFFIX
from bridge.settings import Route


class Router:
    def __init__(self, routes: list[Route]) -> None:
        self._exact = {route.topic: route for route in routes if not route.is_pattern}
        self._patterns = [(re.compile(r.topic), r) for r in routes if r.is_pattern]
        self._cache: dict[str, Route | None] = {}

    def match(self, topic: str) -> Route | None:
        if topic in self._cache:
            return self._cache[topic]
        route = self._exact.get(topic)
        if route is None and not topic.endswith(DLQ_SUFFIX):
            # a pattern never routes a dead-letter topic: the bridge would eat its own DLQ
            route = next((r for rx, r in self._patterns if rx.match(topic)), None)
        self._cache[topic] = route
        return route

    def subscription(self) -> list[str]:
        """Topics and patterns to subscribe to (librdkafka takes ``^regex`` names as patterns)."""
        return [*self._exact, *(rx.pattern for rx, _ in self._patterns)]
