"""Which dead letters a replay sends, and where to.

``--reason`` and ``--since`` (:class:`Selection`, :func:`parse_since`), the verdict on one
letter (replay, filtered out, skipped, refused by the :mod:`~bridge.replay.trust` rules), its
destination (``--to`` or the original topic) and the partition it goes back to. Pure
functions: no Kafka, no clock of their own.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import Enum

from bridge.replay.letters import DeadLetter
from bridge.replay.trust import Refusal, Trust

_AGE = re.compile(r"^(\d+)\s*([smhdw])$")
_AGE_UNITS = {"s": 1, "m": 60, "h": 3_600, "d": 86_400, "w": 604_800}


def parse_since(text: str, now: datetime) -> datetime:
    """``--since``: an ISO-8601 datetime (UTC when it names no zone) or an age like ``2h``."""
    value = text.strip()
    age = _AGE.match(value.lower())
    if age is not None:
        return now - timedelta(seconds=int(age.group(1)) * _AGE_UNITS[age.group(2)])
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(
            f"{text!r} is neither an ISO-8601 datetime (e.g. 2024-05-01T12:00:00Z) "
            "nor an age (e.g. 30m, 2h, 1d; units s m h d w)"
        ) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def since_option(value: str | None) -> datetime | None:
    """``--since`` as given on the command line, resolved against the current time."""
    return None if value is None else parse_since(value, datetime.now(UTC))


class Verdict(Enum):
    REPLAY = "replay"
    FILTERED = "filtered"
    SKIPPED = "skipped"
    REFUSED = "refused"


@dataclass(frozen=True)
class Selection:
    """Which letters to replay (``--reason``, ``--since``), where to (``--to``), and the
    rules a letter must pass to be replayed at all (:class:`~bridge.replay.trust.Trust`)."""

    reasons: frozenset[str] = frozenset()
    since: datetime | None = None
    to_topic: str | None = None
    trust: Trust = field(default_factory=Trust)

    def verdict(self, letter: DeadLetter) -> Verdict:
        return self.judge(letter)[0]

    def judge(self, letter: DeadLetter) -> tuple[Verdict, Refusal | None]:
        """SKIPPED: nowhere to send it (not a ckb dead letter, no ``--to``); FILTERED:
        excluded by ``--reason``/``--since`` (a letter without ``ckb.failed.at`` fails
        ``--since``); REFUSED (and why): asked for, but against a trust rule; REPLAY
        otherwise."""
        if self.destination(letter) is None:
            return Verdict.SKIPPED, None
        if self.reasons and letter.reason not in self.reasons:
            return Verdict.FILTERED, None
        if self.since is not None and (letter.failed_at is None or letter.failed_at < self.since):
            return Verdict.FILTERED, None
        refusal = self.trust.refusal(letter, explicit_destination=self.to_topic is not None)
        if refusal is not None:
            return Verdict.REFUSED, refusal
        return Verdict.REPLAY, None

    def destination(self, letter: DeadLetter) -> str | None:
        return self.to_topic or letter.original_topic


def target_partition(letter: DeadLetter, destination: str, partitions: int) -> int | None:
    """The original partition when going back to the original topic and it still exists;
    None (the producer's partitioner decides by key) otherwise."""
    partition = letter.original_partition
    if destination != letter.original_topic or partition is None:
        return None
    return partition if 0 <= partition < partitions else None
