"""Other result backends through Celery's API (bridge/generic_results.py): how states are read
from a key-value backend and from one that answers per task, and what can never be read."""

from __future__ import annotations

import json
from typing import Any

import pytest

from bridge.celery_app import make_celery_app
from bridge.generic_results import GenericResults, plain_meta
from bridge.result_source import open_results
from bridge.settings import CelerySettings, ConfigError, Route, Settings
from bridge.stored_ledger import StoredLedger


def settings_for(backend: str) -> Settings:
    celery = CelerySettings(broker_url="redis://127.0.0.1:6399/0", result_backend=backend)
    return Settings(celery=celery, routes=[Route(topic="t", task="x")])


def test_a_filesystem_backend_is_read_in_batches_of_keys(tmp_path: Any) -> None:
    settings = settings_for(f"file://{tmp_path}")
    app = make_celery_app(settings.celery)
    backend = app.backend
    failure = {"exc_type": "ValueError", "exc_message": ["bad"], "exc_module": "builtins"}
    backend.store_result("t-ok", 42, "SUCCESS")
    backend.set(backend.get_key_for_task("t-bad"), json.dumps(
        {"status": "FAILURE", "result": failure, "traceback": "Traceback …", "task_id": "t-bad"}
    ).encode())  # fmt: skip
    backend.store_result("t-run", None, "STARTED")
    backend.set(backend.get_key_for_task("t-junk"), b"\xff not json")
    source = GenericResults(backend)
    events = {e.task_id: e for e in source._read(["t-ok", "t-bad", "t-run", "t-junk", "t-none"])}
    assert source.reads == 1  # one batch for the five
    assert events["t-ok"].state == "SUCCESS" and events["t-ok"].final
    assert (events["t-bad"].error_class, events["t-bad"].error_message) == ("ValueError", "bad")
    assert events["t-run"].state == "STARTED" and not events["t-run"].final
    assert set(events) == {"t-ok", "t-bad", "t-run"}  # junk said in the log, none not stored
    assert set(source.stored_finals(["t-ok", "t-bad", "t-run"])) == {"t-ok", "t-bad"}


class PerTaskBackend:
    """A backend with no key-value store: one ``get_task_meta`` per task (MongoDB, …)."""

    def __init__(self, metas: dict[str, dict[str, Any]]) -> None:
        self.metas = metas
        self.calls: list[tuple[str, bool]] = []

    def get_task_meta(self, task_id: str, cache: bool = True) -> dict[str, Any]:
        self.calls.append((task_id, cache))
        return self.metas.get(task_id, {"status": "PENDING", "result": None})


def test_other_backends_are_asked_per_task_and_never_from_celery_s_cache() -> None:
    backend = PerTaskBackend(
        {
            "a": {"status": "SUCCESS", "result": 1},
            "b": {"status": "FAILURE", "result": KeyError("k")},
        }
    )
    source = GenericResults(backend)
    events = {e.task_id: e for e in source._read(["a", "b", "c"])}
    assert backend.calls == [("a", False), ("b", False), ("c", False)]
    assert source.reads == 3
    assert set(events) == {"a", "b"}
    assert events["b"].error_class == "KeyError"


def test_an_exception_result_becomes_the_dict_the_bridge_reads() -> None:
    meta = plain_meta({"status": "FAILURE", "result": RuntimeError("boom")})
    assert meta["result"] == {"exc_type": "RuntimeError", "exc_message": "boom"}
    assert plain_meta({"status": "SUCCESS", "result": 3}) == {"status": "SUCCESS", "result": 3}


def test_the_factory_polls_other_backends_and_keeps_markers_in_the_broker_s_redis(
    tmp_path: Any,
) -> None:
    settings = settings_for(f"file://{tmp_path}")
    parts = open_results(settings, make_celery_app(settings.celery))
    try:
        assert isinstance(parts.source, GenericResults)
        assert isinstance(parts.ledger, StoredLedger)
        assert parts.markers and parts.redis is not None
    finally:
        for close in parts.closers:
            close()


@pytest.mark.parametrize(("url", "why"), [("cache+memory://", "inside each worker's process")])
def test_a_backend_whose_results_never_leave_the_worker_is_refused(url: str, why: str) -> None:
    settings = settings_for(url)
    with pytest.raises(ConfigError, match=why) as refused:
        open_results(settings, make_celery_app(settings.celery))
    assert "celery.result_backend" in str(refused.value)
