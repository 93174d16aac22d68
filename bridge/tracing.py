"""Trace context for each record, so it can be followed from Kafka to the Celery worker.

A record that carries a valid W3C ``traceparent`` header (as OpenTelemetry's Kafka
instrumentation writes it) keeps it: the task message gets the same ``traceparent`` (and
``tracestate``), so an instrumented worker continues the producer's trace. A record without
one gets a ``traceparent`` derived from its task id: deterministic, so a re-sent task carries
the same one, and flagged not sampled (the bridge makes no sampling decisions). Either way
``ckb_correlation_id`` is the trace id, readable as ``self.request.ckb_correlation_id``.

With ``tracing.enabled`` (the ``otel`` extra), :mod:`bridge.otel` installs a publish hook: the
task message then carries the context of the bridge's own publish span instead (see
:func:`message_headers`). Without it nothing of OpenTelemetry is imported.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from importlib.util import find_spec
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bridge.records import Record
    from bridge.settings import Route

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


#: the task message's trace headers for (record, task id, route), or None: not a record of
#: that hook's bridge. Installed by :mod:`bridge.otel` while a bridge with tracing on runs
PublishHook = Callable[["Record", str, "Route"], "dict[str, str] | None"]
#: empty unless tracing is on: then the message headers come from the bridge's publish span
PUBLISH_HOOKS: list[PublishHook] = []

#: what ``tracing.enabled`` needs, from the ``otel`` extra
OTEL_MODULES = ("opentelemetry.sdk.trace", "opentelemetry.exporter.otlp.proto.http.trace_exporter")
OTEL_INSTALL = "pip install 'celery-kafka-bridge[otel]'"


def message_headers(record: Record, task_id: str, route: Route) -> dict[str, str]:
    """The tracing headers of ``record``'s task message: with tracing on, the context of the
    bridge's publish span; else the record's own (:func:`trace_headers`)."""
    for hook in PUBLISH_HOOKS:
        headers = hook(record, task_id, route)
        if headers is not None:
            return headers
    return trace_headers(record.headers, task_id)


def install_publish_hook(hook: PublishHook) -> None:
    PUBLISH_HOOKS.append(hook)


def remove_publish_hook(hook: PublishHook) -> None:
    if hook in PUBLISH_HOOKS:
        PUBLISH_HOOKS.remove(hook)


def otel_missing() -> str | None:
    """Why ``tracing.enabled`` cannot work here (the extra is not installed); None: it can.
    Looks the modules up without importing them."""
    for name in OTEL_MODULES:
        try:
            found = find_spec(name) is not None
        except (ImportError, ValueError):  # a parent package missing, or blocked
            found = False
        if not found:
            return f"needs OpenTelemetry ({name} is not installed): {OTEL_INSTALL} (ckb[otel])"
    return None


def incoming_context(record_headers: tuple[tuple[str, bytes | None], ...]) -> dict[str, str]:
    """The record's valid W3C ``traceparent`` (and ``tracestate``), as text; {} without one."""
    traceparent, state = _trace_fields(record_headers)
    parsed = parse_traceparent(traceparent)
    if parsed is None:
        return {}
    carrier = {TRACEPARENT: parsed[0]}
    if state is not None and len(state) <= _MAX_TRACESTATE and state.isascii():
        carrier[TRACESTATE] = state.decode("ascii")
    return carrier


def _trace_fields(
    record_headers: tuple[tuple[str, bytes | None], ...],
) -> tuple[bytes | None, bytes | None]:
    incoming: bytes | None = None
    state: bytes | None = None
    for name, value in record_headers:
        lowered = name.lower()
        if lowered == TRACEPARENT:
            incoming = value
        elif lowered == TRACESTATE:
            state = value
    return incoming, state


def trace_headers(
    record_headers: tuple[tuple[str, bytes | None], ...], task_id: str
) -> dict[str, str]:
    """The tracing headers of the task message for a record with these Kafka headers."""
    incoming, state = _trace_fields(record_headers)
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
