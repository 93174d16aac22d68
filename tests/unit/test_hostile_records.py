"""Whatever bytes and headers a producer sends, the intake path and the encoder either build
a task message or say why not (DecodeError): nothing else ever comes out of them."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.celery_app import make_celery_app
from bridge.core.jobs import Job
from bridge.dispatcher import Dispatcher, TaskRequest
from bridge.intake import Intake, Rejected
from bridge.payloads import DecodeError
from bridge.records import Record
from bridge.routing import Router
from bridge.settings import Settings

SETTINGS = {
    mode: Settings(routes=[{"topic": "t", "task": "tasks.x", **mode_settings}])
    for mode, mode_settings in {
        "json-arg": {},
        "json-kwargs": {"call": "kwargs"},
        "json-envelope": {"call": "envelope"},
        "text": {"payload": "text", "call": "envelope"},
        "bytes": {"payload": "bytes"},
    }.items()
}
DISPATCHER = Dispatcher(make_celery_app(SETTINGS["json-arg"].celery))

#: JSON-ish text: hypothesis finds the interesting corners faster than with random bytes
json_ish = st.recursive(
    st.sampled_from([b"null", b"1e999", b"NaN", b'"\\ud800"', b"-0", b"1" * 5000, b'"\\u0000"']),
    lambda inner: st.one_of(
        inner.map(lambda v: b"[" + v + b"]"),
        st.lists(inner, max_size=3).map(lambda vs: b"[" + b",".join(vs) + b"]"),
        inner.map(lambda v: b'{"k":' + v + b"}"),
        inner.map(lambda v: b"[" * 400 + v + b"]" * 400),
    ),
    max_leaves=5,
)
values = st.one_of(st.none(), st.binary(max_size=300), json_ish)
headers = st.lists(
    st.tuples(st.text(max_size=12), st.one_of(st.none(), st.binary(max_size=40))), max_size=4
)


def through_intake(mode: str, value: bytes | None, key: bytes | None, hdrs: Any) -> None:
    settings = SETTINGS[mode]
    intake = Intake(settings, Router(settings.routes))
    record = Record("t", 0, 7, key, value, tuple(hdrs), 1_700_000_000_000)
    read = intake.read(record, epoch=1)
    assert isinstance(read, Job | Rejected)
    if isinstance(read, Job):
        try:
            request = Intake.request_for(read)
        except DecodeError:
            return
        assert isinstance(request, TaskRequest)
        DISPATCHER.encode(request)  # never raises for a request the intake built


@pytest.mark.parametrize("mode", list(SETTINGS))
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=values, key=st.one_of(st.none(), st.binary(max_size=40)), hdrs=headers)
def test_nothing_but_a_decode_error_comes_out_of_the_intake_and_the_encoder(
    mode: str, value: bytes | None, key: bytes | None, hdrs: Any
) -> None:
    through_intake(mode, value, key, hdrs)
