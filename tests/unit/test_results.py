"""event_from_meta: Celery result-backend metadata → TaskEvent (pure part of the watcher)."""

from __future__ import annotations

from bridge.results import TaskEvent, event_from_meta


def test_success() -> None:
    event = event_from_meta(
        "id-1", {"status": "SUCCESS", "result": {"ok": True}, "traceback": None}
    )
    assert event == TaskEvent("id-1", "SUCCESS", None, None, None)
    assert event.final


def test_failure_carries_error_class_message_and_traceback() -> None:
    meta = {
        "status": "FAILURE",
        "result": {
            "exc_type": "ValueError",
            "exc_message": ["bad order 7"],
            "exc_module": "builtins",
        },
        "traceback": "Traceback (most recent call last):\n  ...\nValueError: bad order 7\n",
    }
    event = event_from_meta("id-2", meta)
    assert event.state == "FAILURE"
    assert event.final
    assert event.error_class == "ValueError"
    assert event.error_message == "bad order 7"
    assert event.traceback == meta["traceback"]


def test_exc_message_list_is_joined() -> None:
    meta = {"status": "FAILURE", "result": {"exc_type": "KeyError", "exc_message": ["a", 2, "c"]}}
    assert event_from_meta("id", meta).error_message == "a 2 c"


def test_exc_message_string_kept() -> None:
    meta = {"status": "FAILURE", "result": {"exc_type": "E", "exc_message": "plain"}}
    assert event_from_meta("id", meta).error_message == "plain"


def test_exc_message_missing_is_none() -> None:
    meta = {"status": "FAILURE", "result": {"exc_type": "E"}}
    event = event_from_meta("id", meta)
    assert event.error_class == "E"
    assert event.error_message is None


def test_revoked_is_final() -> None:
    meta = {
        "status": "REVOKED",
        "result": {"exc_type": "TaskRevokedError", "exc_message": ["terminated"]},
    }
    event = event_from_meta("id-3", meta)
    assert event.state == "REVOKED"
    assert event.final
    assert event.error_class == "TaskRevokedError"
    assert event.error_message == "terminated"


def test_retry_is_progress_with_error() -> None:
    meta = {"status": "RETRY", "result": {"exc_type": "Retry", "exc_message": ["Retry in 2s"]}}
    event = event_from_meta("id-4", meta)
    assert event.state == "RETRY"
    assert not event.final
    assert event.error_class == "Retry"
    assert event.error_message == "Retry in 2s"


def test_started_and_missing_status() -> None:
    started = event_from_meta("id", {"status": "STARTED", "result": {"pid": 1}})
    assert started.state == "STARTED"
    assert not started.final
    assert started.error_class is None
    assert event_from_meta("id", {}).state == "PENDING"
    assert not event_from_meta("id", {}).final


def test_success_result_dict_is_not_read_as_error() -> None:
    meta = {"status": "SUCCESS", "result": {"exc_type": "looks-like-error", "exc_message": "x"}}
    event = event_from_meta("id", meta)
    assert event.error_class is None
    assert event.error_message is None


def test_failure_with_non_dict_result() -> None:
    event = event_from_meta("id", {"status": "FAILURE", "result": "oops"})
    assert event.final
    assert event.error_class is None
    assert event.error_message is None
