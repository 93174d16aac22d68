"""Record → Celery call arguments: codecs, call modes, and errors that never quote payloads."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from bridge.payloads import DecodeError, build_call, decode_value, envelope, kafka_headers, text_of
from bridge.records import Record
from bridge.settings import Route

SECRET = "SECRET-PAYLOAD-7c1f"


def route(payload: Any = "json", call: Any = "arg") -> Route:
    return Route(topic="orders", task="tasks.x", payload=payload, call=call)


def record(
    value: bytes | None,
    key: bytes | None = b"customer-1",
    headers: tuple[tuple[str, bytes | None], ...] = (),
) -> Record:
    return Record(
        topic="orders",
        partition=3,
        offset=42,
        key=key,
        value=value,
        headers=headers,
        timestamp_ms=1_700_000_000_123,
    )


# -- codecs -----------------------------------------------------------------------------


def test_json_codec_parses_value() -> None:
    value = '{"id": 7, "items": [1, 2], "name": "Zoë"}'.encode()
    assert decode_value(route("json"), value) == {"id": 7, "items": [1, 2], "name": "Zoë"}


@pytest.mark.parametrize(("raw", "parsed"), [(b"3", 3), (b'"s"', "s"), (b"null", None)])
def test_json_codec_accepts_any_json_document(raw: bytes, parsed: Any) -> None:
    assert decode_value(route("json"), raw) == parsed


def test_text_codec_returns_string_unparsed() -> None:
    assert decode_value(route("text"), '{"not": "parsed"} ✓'.encode()) == '{"not": "parsed"} ✓'


def test_bytes_codec_returns_base64_of_raw_bytes() -> None:
    raw = bytes(range(256))
    decoded = decode_value(route("bytes"), raw)
    assert isinstance(decoded, str)
    assert base64.b64decode(decoded) == raw


def test_empty_value_is_not_a_tombstone_for_text_and_bytes() -> None:
    assert decode_value(route("text"), b"") == ""
    assert decode_value(route("bytes"), b"") == ""


# -- call modes -------------------------------------------------------------------------


def test_call_arg_passes_payload_as_one_argument() -> None:
    args, kwargs = build_call(route("json", "arg"), record(b'{"id": 1}'))
    assert args == [{"id": 1}]
    assert kwargs == {}


def test_call_kwargs_spreads_object() -> None:
    args, kwargs = build_call(route("json", "kwargs"), record(b'{"order_id": 1, "qty": [2]}'))
    assert args == []
    assert kwargs == {"order_id": 1, "qty": [2]}


def test_call_envelope_wraps_record() -> None:
    rec = record(b'{"id": 1}', key=b"\xff\x00", headers=(("trace", b"abc"), ("empty", None)))
    args, kwargs = build_call(route("json", "envelope"), rec)
    assert kwargs == {}
    assert args == [
        {
            "topic": "orders",
            "partition": 3,
            "offset": 42,
            "key": "base64:/wA=",
            "timestamp": 1_700_000_000_123,
            "headers": [["trace", "abc"], ["empty", None]],
            "value": {"id": 1},
        }
    ]
    assert envelope(rec, "v")["value"] == "v"


def test_call_envelope_with_text_payload() -> None:
    args, _ = build_call(route("text", "envelope"), record(b"hello", key=None))
    assert args[0]["value"] == "hello"
    assert args[0]["key"] is None


# -- errors -----------------------------------------------------------------------------


def decode_error(rt: Route, value: bytes | None) -> DecodeError:
    with pytest.raises(DecodeError) as info:
        build_call(rt, record(value))
    exc = info.value
    assert SECRET not in str(exc)
    assert SECRET not in repr(exc)
    assert exc.reason == "decode_error"
    assert exc.retriable is False
    # the original error (which may hold the bytes) is not chained into tracebacks
    assert exc.__cause__ is None
    assert exc.__suppress_context__ or exc.__context__ is None
    return exc


def test_non_json_on_json_route() -> None:
    exc = decode_error(route("json"), f"{SECRET} is not json".encode())
    assert "not valid JSON" in str(exc)
    assert "payload: text" in str(exc)


def test_truncated_json_on_json_route() -> None:
    exc = decode_error(route("json", "kwargs"), f'{{"k": "{SECRET}'.encode())
    assert "not valid JSON" in str(exc)


def test_json_list_on_kwargs_route() -> None:
    exc = decode_error(route("json", "kwargs"), f'["{SECRET}", 1]'.encode())
    assert "list" in str(exc)
    assert "call: arg" in str(exc)


def test_text_on_kwargs_route() -> None:
    exc = decode_error(route("text", "kwargs"), SECRET.encode())
    assert "str" in str(exc)


def test_non_identifier_keys_on_kwargs_route() -> None:
    exc = decode_error(route("json", "kwargs"), f'{{"{SECRET}": 1, "ok": 2}}'.encode())
    assert "1 of 2" in str(exc)
    assert "identifiers" in str(exc)


@pytest.mark.parametrize("codec", ["json", "text", "bytes"])
def test_null_value_is_a_tombstone(codec: str) -> None:
    exc = decode_error(route(codec), None)
    assert "null" in str(exc) or "tombstone" in str(exc)


@pytest.mark.parametrize("codec", ["text", "json"])
def test_invalid_utf8(codec: str) -> None:
    exc = decode_error(route(codec), SECRET.encode() + b"\xff\xfe tail")
    assert "UTF-8" in str(exc)
    assert f"byte {len(SECRET)}" in str(exc)
    assert "payload: bytes" in str(exc)


# -- headers and keys ---------------------------------------------------------------------


def test_kafka_headers_are_exactly_the_contract_five() -> None:
    headers = kafka_headers(record(b"{}", key=b"customer-1"))
    assert headers == {
        "ckb_topic": "orders",
        "ckb_partition": 3,
        "ckb_offset": 42,
        "ckb_key": "customer-1",
        "ckb_timestamp": 1_700_000_000_123,
    }


def test_kafka_headers_binary_and_missing_key() -> None:
    assert kafka_headers(record(b"{}", key=b"\x80\x81\x82"))["ckb_key"] == "base64:gIGC"
    assert kafka_headers(record(b"{}", key=None))["ckb_key"] is None


def test_text_of() -> None:
    assert text_of(None) is None
    assert text_of("Zoë".encode()) == "Zoë"
    binary = b"\x00\xffbinary"
    text = text_of(binary)
    assert text is not None
    assert text.startswith("base64:")
    assert base64.b64decode(text.removeprefix("base64:")) == binary


# -- hostile values: every one a DecodeError naming what is wrong, never another exception ----

HOSTILE = {
    "arrays 3000 deep": b"[" * 3000 + b"]" * 3000,
    "objects 3000 deep": b'{"a":' * 3000 + b"1" + b"}" * 3000,
    "arrays 990 deep (decodes, breaks the encoder)": b"[" * 990 + b"]" * 990,
    "100,000-digit integer": b"1" * 100_000,
    "NaN": b"NaN",
    "-Infinity inside": b'{"x": -Infinity}',
    "float overflow": b'{"x": 1e999}',
    "lone surrogate escape": b'{"x": "\\ud800"}',
    "invalid UTF-8": b'{"x": "\xff"}',
    "empty": b"",
    "NUL byte": b'{"x": "\x00"}',
}


@pytest.mark.parametrize("value", list(HOSTILE.values()), ids=list(HOSTILE))
def test_a_hostile_json_value_is_a_decode_error(value: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_value(route("json"), value)


def test_nesting_up_to_max_json_depth_is_accepted_one_deeper_is_not() -> None:
    strict = Route(topic="orders", task="tasks.x", max_json_depth=5)
    assert decode_value(strict, b"[[[[[1]]]]]") == [[[[[1]]]]]
    with pytest.raises(DecodeError, match="max_json_depth"):
        decode_value(strict, b"[[[[[[1]]]]]]")
    # brackets inside strings are text, not nesting
    assert decode_value(strict, b'["[[[[[[[[[[[[["]') == ["[[[[[[[[[[[[["]


def test_a_paired_surrogate_escape_is_one_character() -> None:
    assert decode_value(route("json"), b'{"x": "\\ud83d\\ude00"}') == {"x": "\U0001f600"}
