"""Which route consumes a topic, and whether a route's dead letters would be consumed again:
the settings refuse such a ``dlq_topic`` (a loop), the writer never writes into one at run time.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Protocol

from bridge.core.vocabulary import DLQ_SUFFIX, default_dlq_topic


class RouteLike(Protocol):
    @property
    def topic(self) -> str: ...
    @property
    def dlq_topic(self) -> str | None: ...
    @property
    def is_pattern(self) -> bool: ...


def consumer_of(topic: str, routes: Sequence[RouteLike]) -> int | None:
    """The index of the route that consumes ``topic`` (as :class:`bridge.routing.Router`
    matches: exact names first; a pattern never matches a ``.dlq`` topic), or None."""
    for index, route in enumerate(routes):
        if not route.is_pattern and route.topic == topic:
            return index
    if topic.endswith(DLQ_SUFFIX):
        return None
    for index, route in enumerate(routes):
        if route.is_pattern and re.match(route.topic, topic):
            return index
    return None


def dead_letter_loop(routes: Sequence[RouteLike]) -> str | None:
    """What is wrong when a route's dead-letter topic is consumed by a route, or None.

    A pattern's default (``<topic>.dlq`` of whatever topics it matches) is not checked: a
    pattern never consumes those, and the topics it matches are not known here."""
    for index, route in enumerate(routes):
        if route.dlq_topic is not None:
            dlq, default = route.dlq_topic, False
        elif not route.is_pattern:
            dlq, default = default_dlq_topic(route.topic), True
        else:
            continue
        consumer = consumer_of(dlq, routes)
        if consumer is not None:
            return (
                f"routes.{index}.dlq_topic: {dlq!r}{' (the default)' if default else ''} is "
                f"consumed by routes.{consumer} ({routes[consumer].topic}): its dead letters "
                "would be read and dead-lettered again, forever; set a dead-letter topic no "
                "route consumes"
            )
    return None
