"""Trace context for each record, so it can be followed from Kafka to the Celery worker.

A record that carries a valid W3C ``traceparent`` header (as OpenTelemetry's Kafka
instrumentation writes it) keeps it: the task message gets the same ``traceparent`` (and
``tracestate``), so an instrumented worker continues the producer's trace. A record without
one gets a ``traceparent`` derived from its task id: deterministic, so a re-sent task carries
the same one, and flagged not sampled (the bridge makes no sampling decisions). Either way
``ckb_correlation_id`` is the trace id, readable as ``self.request.ckb_correlation_id``.
"""

from __future__ import annotations

import re

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
HEADER_CORRELATION_ID = "ckb_correlation_id"

_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_MAX_TRACESTATE = 512


def parse_traceparent(value: bytes | None) -> tuple[str, str] | None:
    """``(traceparent, trace id)`` of a valid W3C header value, else None."""
    if value is None or len(value) > 256:
        return None
    try:
        text = value.decode("ascii").strip().lower()
    except UnicodeDecodeError:
        return None
    if text[:2] != "00" and len(text) > 55 and text[55] == "-":
        text = text[:55]  # a later version may append fields: read the ones we know
    match = _TRACEPARENT.fullmatch(text)
    if match is None:
        return None
    version, trace_id, parent_id, _flags = match.groups()
    if version == "ff" or trace_id == "0" * 32 or parent_id == "0" * 16:
        return None
    return match.group(0), trace_id


def trace_headers(
    record_headers: tuple[tuple[str, bytes | None], ...], task_id: str
) -> dict[str, str]:
    """The tracing headers of the task message for a record with these Kafka headers."""
    incoming: bytes | None = None
    state: bytes | None = None
    for name, value in record_headers:
        lowered = name.lower()
        if lowered == TRACEPARENT:
            incoming = value
        elif lowered == TRACESTATE:
            state = value
    parsed = parse_traceparent(incoming)
    if parsed is None:
        trace_id = task_id.replace("-", "").lower()
        return {
            TRACEPARENT: f"00-{trace_id}-{trace_id[16:]}-00",
            HEADER_CORRELATION_ID: trace_id,
        }
    traceparent, trace_id = parsed
    headers = {TRACEPARENT: traceparent, HEADER_CORRELATION_ID: trace_id}
    if state is not None and len(state) <= _MAX_TRACESTATE and state.isascii():
        headers[TRACESTATE] = state.decode("ascii")  # else dropped; the trace still continues
    return headers
