"""Trace context: a valid W3C traceparent is kept; otherwise one derived from the task id."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.tracing import parse_traceparent, trace_headers

TASK_ID = "4bf92f35-77b3-4da6-a3ce-929d0e0e4736"
VALID = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def test_a_valid_traceparent_and_tracestate_are_kept() -> None:
    headers = trace_headers((("traceparent", VALID), ("tracestate", b"congo=t61rcWkgMzE")), TASK_ID)
    assert headers == {
        "traceparent": VALID.decode(),
        "tracestate": "congo=t61rcWkgMzE",
        "ckb_correlation_id": "0af7651916cd43dd8448eb211c80319c",
    }


def test_header_names_are_case_insensitive() -> None:
    headers = trace_headers((("Traceparent", VALID.upper()),), TASK_ID)
    assert headers["traceparent"] == VALID.decode()


def test_without_one_a_deterministic_unsampled_traceparent_from_the_task_id() -> None:
    headers = trace_headers((("other", b"x"),), TASK_ID)
    trace_id = TASK_ID.replace("-", "")
    assert headers == {
        "traceparent": f"00-{trace_id}-{trace_id[16:]}-00",
        "ckb_correlation_id": trace_id,
    }
    assert headers == trace_headers((), TASK_ID), "a re-sent task carries the same one"
    assert parse_traceparent(headers["traceparent"].encode()) is not None


@pytest.mark.parametrize(
    "value",
    [
        None,
        b"",
        b"not a traceparent",
        b"00-00000000000000000000000000000000-b7ad6b7169203331-01",  # zero trace id
        b"00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",  # zero parent id
        b"ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",  # forbidden version
        b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",  # 00 has 4 fields
        b"00-0af7651916cd43dd8448eb211c8031-b7ad6b7169203331-01",  # short trace id
        b"\xff\xfe",
    ],
)
def test_invalid_traceparents_are_replaced(value: bytes | None) -> None:
    assert parse_traceparent(value) is None
    headers = trace_headers((("traceparent", value),), TASK_ID)
    assert headers["ckb_correlation_id"] == TASK_ID.replace("-", "")


def test_a_later_version_is_read_for_the_fields_it_shares() -> None:
    later = b"01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-somethingnew"
    assert parse_traceparent(later) == (
        "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "0af7651916cd43dd8448eb211c80319c",
    )


def test_a_tracestate_that_is_not_ascii_is_dropped() -> None:
    headers = trace_headers((("traceparent", VALID), ("tracestate", "é=1".encode())), TASK_ID)
    assert "tracestate" not in headers
    assert headers["traceparent"] == VALID.decode()


@given(st.binary(max_size=80))
def test_any_bytes_give_a_valid_traceparent(value: bytes) -> None:
    headers = trace_headers((("traceparent", value),), TASK_ID)
    assert parse_traceparent(headers["traceparent"].encode()) is not None
    assert len(headers["ckb_correlation_id"]) == 32
