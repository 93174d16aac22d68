"""What a dead letter carries: the record's key, value and headers, and the ``ckb.*`` context
headers of the DLQ record contract (DESIGN.md). The worker's exception text is masked
(:func:`bridge.secrets.mask_text`) before it goes into ``ckb.error.message`` and
``ckb.error.traceback``, and bounded in size."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from bridge.records import Record
from bridge.secrets import mask_text

MAX_MESSAGE_BYTES = 2_048
MAX_TRACEBACK_BYTES = 8_192
HEADER_PREFIX = "ckb."
#: the header a letter written without its value carries: the value's size in bytes
VALUE_DROPPED = "ckb.value.dropped"
#: kept from the record, unlike every other ``ckb.*`` header: ``ckb dlq replay`` counts the
#: replays of a record in it (``bridge.replay.letters.REPLAY_COUNT``), so the count survives
#: the next dead-lettering and ``--max-replays`` stops a record that fails every time
REPLAY_COUNT = "ckb.replay.count"


@dataclass(frozen=True, slots=True)
class Failure:
    """Why a record is dead-lettered, and what was attempted."""

    reason: str
    task_name: str = ""
    task_id: str = ""
    attempts: int = 0
    error_class: str = ""
    error_message: str = ""
    traceback: str = ""
    #: the batch task the record was part of (``routes[].batch``); "" for a one-record task
    batch_task_id: str = ""
    batch_size: int = 0


def _bounded(text: str, limit: int) -> bytes:
    data = text.encode("utf-8", "replace")
    if len(data) <= limit:
        return data
    return data[: limit - 15].decode("utf-8", "ignore").encode("utf-8") + b"...[truncated]"


def dlq_headers(
    record: Record, failure: Failure, group: str, now: datetime
) -> list[tuple[str, bytes | None]]:
    """The record's own headers, byte for byte, followed by the ``ckb.*`` context headers."""
    added = {
        "ckb.reason": failure.reason.encode(),
        "ckb.original.topic": record.topic.encode(),
        "ckb.original.partition": str(record.partition).encode(),
        "ckb.original.offset": str(record.offset).encode(),
        "ckb.original.timestamp": str(record.timestamp_ms).encode(),
        "ckb.group": group.encode(),
        "ckb.task.name": failure.task_name.encode(),
        "ckb.task.id": failure.task_id.encode(),
        "ckb.attempts": str(failure.attempts).encode(),
        "ckb.error.class": failure.error_class.encode(),
        "ckb.error.message": _bounded(mask_text(failure.error_message), MAX_MESSAGE_BYTES),
        "ckb.error.traceback": _bounded(mask_text(failure.traceback), MAX_TRACEBACK_BYTES),
        "ckb.failed.at": now.astimezone(UTC).isoformat(timespec="milliseconds").encode(),
    }
    if failure.batch_task_id:
        added["ckb.batch.task.id"] = failure.batch_task_id.encode()
        added["ckb.batch.size"] = str(failure.batch_size).encode()
    original = [
        (k, v) for k, v in record.headers if not k.startswith(HEADER_PREFIX) or k == REPLAY_COUNT
    ]
    return original + list(added.items())
