"""Which dead letters a replay may send back, and where: the replay's trust rules.

A dead-letter topic is only as trustworthy as whoever can write to it, and a record that
fails every time would otherwise cycle between its topic and the DLQ for ever. So by
default ``ckb dlq replay`` sends a letter only when

- its ``ckb.group`` is this bridge's ``kafka.group_id`` (``--any-group`` lifts it);
- its ``ckb.original.topic`` is one the bridge's routes consume (``--to TOPIC`` names the
  destination explicitly; ``--allow-any-topic`` lifts it);
- it was replayed fewer than ``--max-replays`` times (``ckb.replay.count``, default 3;
  a garbled count counts as too many);
- it carries the record's value: a letter written without it (``ckb.value.dropped``, too large
  for its topic) is never replayed, by no option: it would be a record without a value, a
  tombstone that deletes its key on a compacted topic. The value is in the source topic.

A letter that fails a rule is *refused*: not produced, counted by :class:`Refusal`, listed by
a dry run, and committed past like a filtered one (it stays in the dead-letter topic).
Pure: no Kafka.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from bridge.replay.letters import DeadLetter
from bridge.routing import Router
from bridge.settings import Settings

DEFAULT_MAX_REPLAYS = 3


class Refusal(Enum):
    """Why a letter was not replayed."""

    OTHER_GROUP = "other_group"
    UNROUTED_TOPIC = "unrouted_topic"
    MAX_REPLAYS = "max_replays"
    VALUE_DROPPED = "value_dropped"


@dataclass(frozen=True)
class Trust:
    """The rules. ``None`` turns the group or the topic rule off (the defaults, for callers
    that build a replay themselves); :func:`trust_for` gives the command line's."""

    #: the only ``ckb.group`` replayed; None: any
    group: str | None = None
    #: whether the bridge consumes a topic; None: any topic
    consumed: Callable[[str], bool] | None = None
    max_replays: int = DEFAULT_MAX_REPLAYS

    def refusal(self, letter: DeadLetter, explicit_destination: bool) -> Refusal | None:
        if letter.value_dropped:
            return Refusal.VALUE_DROPPED
        if self.group is not None and letter.group != self.group:
            return Refusal.OTHER_GROUP
        topic = letter.original_topic
        if (
            not explicit_destination
            and self.consumed is not None
            and topic is not None
            and not self.consumed(topic)
        ):
            return Refusal.UNROUTED_TOPIC
        if letter.replays is None or letter.replays >= self.max_replays:
            return Refusal.MAX_REPLAYS
        return None


def trust_for(
    settings: Settings, any_group: bool, allow_any_topic: bool, max_replays: int
) -> Trust:
    """The command line's rules: the configured group and the topics the routes consume,
    as the bridge's :class:`~bridge.routing.Router` matches them."""
    router = Router(settings.routes)

    def consumed(topic: str) -> bool:
        return router.match(topic) is not None

    return Trust(
        group=None if any_group else settings.kafka.group_id,
        consumed=None if allow_any_topic else consumed,
        max_replays=max_replays,
    )
