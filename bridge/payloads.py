"""Turning a record into Celery call arguments, per the route's ``payload`` and ``call`` modes.

Pure functions. A record that cannot be turned into a call raises :class:`DecodeError`, which
says what was wrong in words a user can act on and never quotes the payload itself.
"""

from __future__ import annotations

import base64
from typing import Any

from bridge import strict_json
from bridge.core.vocabulary import Reason
from bridge.records import Record
from bridge.settings import Route

#: Celery message headers that carry the Kafka coordinates to the worker
HEADER_TOPIC = "ckb_topic"
HEADER_PARTITION = "ckb_partition"
HEADER_OFFSET = "ckb_offset"
HEADER_KEY = "ckb_key"
HEADER_TIMESTAMP = "ckb_timestamp"

TaskCall = tuple[list[Any], dict[str, Any]]


class DecodeError(Exception):
    """The record's value does not fit its route; ``reason`` is the DLQ reason."""

    reason = Reason.DECODE_ERROR
    retriable = False


def decode_value(route: Route, value: bytes | None) -> Any:
    """The payload as the task will receive it."""
    if value is None:
        raise DecodeError("the record has no value (null); a tombstone cannot be dispatched")
    if len(value) > route.max_payload_bytes:
        raise DecodeError(
            f"value is {len(value)} bytes, over the route's max_payload_bytes "
            f"({route.max_payload_bytes}); raise it, or send a reference to the data instead"
        )
    if route.payload == "bytes":
        return base64.b64encode(value).decode("ascii")
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DecodeError(
            f"value is not valid UTF-8 (byte {exc.start}); use payload: bytes for binary data"
        ) from None
    if route.payload == "text":
        return text
    try:
        return strict_json.loads(value, text, route.max_json_depth)
    except strict_json.RejectedJSONError as exc:
        raise DecodeError(f"value is {exc}; use payload: text to receive it as a string") from None


def text_of(data: bytes | None) -> str | None:
    """Key or header bytes as a string: UTF-8 when possible, else ``base64:...``."""
    if data is None:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return "base64:" + base64.b64encode(data).decode("ascii")


def envelope(record: Record, payload: Any) -> dict[str, Any]:
    return {
        "topic": record.topic,
        "partition": record.partition,
        "offset": record.offset,
        "key": text_of(record.key),
        "timestamp": record.timestamp_ms,
        "headers": [[name, text_of(value)] for name, value in record.headers],
        "value": payload,
    }


def build_call(route: Route, record: Record) -> TaskCall:
    """``(args, kwargs)`` for the route's task."""
    payload = decode_value(route, record.value)
    if route.call == "arg":
        return [payload], {}
    if route.call == "envelope":
        return [envelope(record, payload)], {}
    if not isinstance(payload, dict):
        raise DecodeError(
            f"call: kwargs needs a JSON object, got {type(payload).__name__}; "
            "use call: arg to pass it as one argument"
        )
    bad = [name for name in payload if not name.isidentifier()]
    if bad:
        raise DecodeError(
            f"call: kwargs needs keys that are Python identifiers; {len(bad)} of "
            f"{len(payload)} are not; use call: arg instead"
        )
    return [], payload


def kafka_headers(record: Record) -> dict[str, Any]:
    """The Celery message headers that tell the task where its record came from."""
    return {
        HEADER_TOPIC: record.topic,
        HEADER_PARTITION: record.partition,
        HEADER_OFFSET: record.offset,
        HEADER_KEY: text_of(record.key),
        HEADER_TIMESTAMP: record.timestamp_ms,
    }
