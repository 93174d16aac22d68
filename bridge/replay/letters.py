"""What a dead letter says: its ``ckb.*`` headers parsed into a :class:`DeadLetter`.

Also the header helpers a replay needs: reading one header as text, and what a replayed
record carries: the record's own headers without the bridge's ``ckb.*`` ones, plus
``ckb.replay.count`` (:data:`REPLAY_COUNT`). The bridge keeps that one header when it
dead-letters the replayed record again, so the count grows with every cycle and
``--max-replays`` can stop a record that fails every time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from bridge.dead_letter_headers import HEADER_PREFIX, REPLAY_COUNT
from bridge.records import Record

Headers = Sequence[tuple[str, bytes | None]]


def strip_ckb_headers(headers: Headers) -> list[tuple[str, bytes | None]]:
    """The record's own headers, in order and byte for byte, without any ``ckb.*`` header."""
    return [(name, value) for name, value in headers if not name.startswith(HEADER_PREFIX)]


def replayed_headers(headers: Headers, replays: int) -> list[tuple[str, bytes | None]]:
    """What a replayed record carries: its own headers (:func:`strip_ckb_headers`), then
    :data:`REPLAY_COUNT` set to ``replays``."""
    return [*strip_ckb_headers(headers), (REPLAY_COUNT, str(replays).encode())]


def header_text(headers: Headers, name: str) -> str | None:
    """The last value of header ``name`` as text (the bridge appends its headers last)."""
    found: str | None = None
    for key, value in headers:
        if key == name and value is not None:
            found = value.decode("utf-8", "replace")
    return found


def _as_int(text: str | None) -> int | None:
    try:
        return None if text is None else int(text)
    except ValueError:
        return None


def _replay_count(text: str | None) -> int | None:
    """Replays so far: 0 without the header, None when it is not a count (garbled)."""
    if text is None:
        return 0
    count = _as_int(text.strip())
    return count if count is not None and count >= 0 else None


def _as_utc(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A record read from a dead-letter topic, with its ``ckb.*`` context parsed."""

    record: Record
    reason: str | None
    original_topic: str | None
    original_partition: int | None
    original_offset: int | None
    failed_at: datetime | None
    error_class: str | None
    #: ``ckb.group``: the consumer group of the bridge that wrote it
    group: str | None = None
    #: ``ckb.replay.count``: replays so far (0: none), None when the header is garbled
    replays: int | None = 0
    #: ``ckb.value.dropped``: the letter was written without the record's value (too large)
    value_dropped: bool = False

    @classmethod
    def from_record(cls, record: Record) -> DeadLetter:
        """Parse the ``ckb.*`` headers; missing or garbled ones become None."""
        headers = record.headers
        return cls(
            record=record,
            reason=header_text(headers, "ckb.reason"),
            original_topic=header_text(headers, "ckb.original.topic") or None,
            original_partition=_as_int(header_text(headers, "ckb.original.partition")),
            original_offset=_as_int(header_text(headers, "ckb.original.offset")),
            failed_at=_as_utc(header_text(headers, "ckb.failed.at")),
            error_class=header_text(headers, "ckb.error.class"),
            group=header_text(headers, "ckb.group"),
            replays=_replay_count(header_text(headers, REPLAY_COUNT)),
            value_dropped=header_text(headers, "ckb.value.dropped") is not None,
        )

    def origin(self) -> str:
        """``topic[partition]@offset`` of the record before it was dead-lettered."""
        if self.original_topic is None:
            return "-"
        partition = "?" if self.original_partition is None else self.original_partition
        offset = "?" if self.original_offset is None else self.original_offset
        return f"{self.original_topic}[{partition}]@{offset}"
