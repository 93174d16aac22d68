"""tasks.base.KafkaTask in process: a real Celery app, an in-memory result backend, ``apply()``.

``apply()`` runs the worker's tracer in this process (retries included, without the waits), and
with ``task_store_eager_result`` the results land in the ``cache+memory://`` backend, which is
where the idempotency guard looks.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from celery import Celery, Task
from celery.app import autoretry

from tasks.base import TRANSIENT_ERRORS, KafkaOrigin, KafkaTask, kafka_origin


class PlannedError(Exception):
    """A task's own error type, for per-task ``autoretry_for``."""


@pytest.fixture
def app() -> Iterator[Celery]:
    celery_app = Celery(
        "ckb-unit-task-base", broker="memory://", backend="cache+memory://", set_as_current=False
    )
    celery_app.conf.task_store_eager_result = True
    yield celery_app
    celery_app.close()


def new_id() -> str:
    return str(uuid.uuid4())


def failing(runs: list[int], error: Callable[[], BaseException], times: int) -> Callable[..., str]:
    """A task body that raises ``error()`` on its first ``times`` runs, then returns ``"ok"``."""

    def body(*_: Any) -> str:
        runs.append(1)
        if len(runs) <= times:
            raise error()
        return "ok"

    return body


def noop() -> None:
    """A task body that does nothing."""


def appending(runs: list[int]) -> Callable[[], None]:
    """A task body that records each run and returns ``None``."""

    def body() -> None:
        runs.append(1)

    return body


def origin_of(self: KafkaTask) -> KafkaOrigin:
    return self.kafka_origin()


@pytest.fixture
def backoffs(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Every backoff Celery's autoretry computes: its arguments and the countdown it chose."""
    seen: list[dict[str, Any]] = []
    real = autoretry.get_exponential_backoff_interval

    def spy(**kwargs: Any) -> int:
        countdown = int(real(**kwargs))
        seen.append({**kwargs, "countdown": countdown})
        return countdown

    monkeypatch.setattr(autoretry, "get_exponential_backoff_interval", spy)
    return seen


@pytest.fixture
def retry_countdowns(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The ``countdown`` every ``Task.retry`` call was given."""
    seen: list[Any] = []
    real = Task.retry

    def spy(self: Task, *args: Any, **kwargs: Any) -> Any:
        seen.append(kwargs.get("countdown"))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Task, "retry", spy)
    return seen


def count_reads(monkeypatch: pytest.MonkeyPatch, app: Celery) -> list[str]:
    """The task ids the result backend's ``get_task_meta`` is asked for from now on."""
    reads: list[str] = []
    backend = app.backend
    real_read = backend.get_task_meta

    def counted_read(task_id: str, cache: bool = True) -> Any:
        reads.append(task_id)
        return real_read(task_id, cache=cache)

    monkeypatch.setattr(backend, "get_task_meta", counted_read)
    return reads


# --- retries ---------------------------------------------------------------------------------


def test_defaults_are_bounded_exponential_backoff_with_jitter(app: Celery) -> None:
    task = app.task(base=KafkaTask, name="t.defaults")(noop)
    assert set(task.autoretry_for) >= {ConnectionError, TimeoutError}
    assert task.autoretry_for == TRANSIENT_ERRORS
    assert task.retry_backoff is True
    assert task.retry_backoff_max == 300
    assert task.retry_jitter is True
    assert task.max_retries == 5
    assert task.idempotency_guard is True
    assert hasattr(task, "_orig_run"), "Celery did not wrap run() with its autoretry"


def test_transient_error_retries_max_retries_times_with_jittered_backoff(
    app: Celery, backoffs: list[dict[str, Any]], retry_countdowns: list[Any]
) -> None:
    runs: list[int] = []
    task = app.task(base=KafkaTask, name="t.always_down")(
        failing(runs, lambda: ConnectionError("down"), times=99)
    )
    result = task.apply(task_id=new_id())
    assert result.state == "FAILURE"
    assert isinstance(result.result, ConnectionError)
    assert len(runs) == 1 + 5  # the first run and max_retries=5 retries
    assert [b["retries"] for b in backoffs] == [0, 1, 2, 3, 4, 5]
    assert all(b["factor"] == 1 and b["maximum"] == 300 and b["full_jitter"] for b in backoffs)
    assert all(0 <= b["countdown"] <= min(300, 2 ** b["retries"]) for b in backoffs)
    assert retry_countdowns == [b["countdown"] for b in backoffs]


def test_transient_error_then_success_ends_success(app: Celery) -> None:
    runs: list[int] = []
    task = app.task(base=KafkaTask, name="t.flaky")(
        failing(runs, lambda: TimeoutError("slow"), times=2)
    )
    result = task.apply(task_id=new_id())
    assert (result.state, result.result) == ("SUCCESS", "ok")
    assert len(runs) == 3


def test_non_transient_error_fails_after_one_run(app: Celery) -> None:
    runs: list[int] = []
    task = app.task(base=KafkaTask, name="t.bad_input")(
        failing(runs, lambda: ValueError("bad"), times=99)
    )
    result = task.apply(task_id=new_id())
    assert result.state == "FAILURE"
    assert len(runs) == 1


def test_per_task_options_override_the_defaults(
    app: Celery, backoffs: list[dict[str, Any]]
) -> None:
    runs: list[int] = []
    task = app.task(
        base=KafkaTask,
        name="t.own_error",
        autoretry_for=(PlannedError,),
        max_retries=2,
        retry_backoff_max=7,
        retry_jitter=False,
    )(failing(runs, PlannedError, times=99))
    assert task.apply(task_id=new_id()).state == "FAILURE"
    assert len(runs) == 3
    assert {(b["maximum"], b["full_jitter"]) for b in backoffs} == {(7, False)}
    assert [b["countdown"] for b in backoffs] == [1, 2, 4]  # no jitter: exactly 2**retries

    runs.clear()
    other = app.task(base=KafkaTask, name="t.own_error_only", autoretry_for=(PlannedError,))(
        failing(runs, lambda: ConnectionError("down"), times=99)
    )
    assert other.apply(task_id=new_id()).state == "FAILURE"
    assert len(runs) == 1, "autoretry_for replaces the default tuple, it does not extend it"


def test_subclass_attributes_are_honoured(app: Celery) -> None:
    class Patient(KafkaTask):
        autoretry_for = (PlannedError,)
        max_retries = 1

    runs: list[int] = []
    task = app.task(base=Patient, name="t.subclass")(failing(runs, PlannedError, times=99))
    assert task.apply(task_id=new_id()).state == "FAILURE"
    assert len(runs) == 2


def test_tasks_without_the_base_class_keep_their_own_settings(app: Celery) -> None:
    app.task(base=KafkaTask, name="t.kafka")(noop)  # registering it changes nothing else
    plain_runs: list[int] = []
    plain = app.task(name="t.plain")(failing(plain_runs, lambda: ConnectionError("x"), times=99))
    assert plain.apply(task_id=new_id()).state == "FAILURE"
    assert len(plain_runs) == 1, "a plain task must not inherit the base class's autoretry"
    assert plain.max_retries == 3  # Celery's default

    own_runs: list[int] = []
    own = app.task(name="t.plain_own", autoretry_for=(ValueError,), max_retries=1)(
        failing(own_runs, lambda: ValueError("x"), times=99)
    )
    assert own.apply(task_id=new_id()).state == "FAILURE"
    assert len(own_runs) == 2

    twice_runs: list[int] = []
    unguarded = app.task(name="t.plain_twice")(appending(twice_runs))
    task_id = new_id()
    unguarded.apply(task_id=task_id)
    unguarded.apply(task_id=task_id)
    assert len(twice_runs) == 2, "plain tasks have no idempotency guard"


# --- idempotency guard -----------------------------------------------------------------------


def counting_task(app: Celery, name: str, **options: Any) -> tuple[Any, list[int]]:
    """A KafkaTask whose result is the number of times its body has run."""
    runs: list[int] = []

    def body(payload: Any) -> int:
        runs.append(1)
        return len(runs)

    return app.task(base=KafkaTask, name=name, **options)(body), runs


def test_a_succeeded_task_id_is_not_run_again(app: Celery, monkeypatch: pytest.MonkeyPatch) -> None:
    task, runs = counting_task(app, "t.once")
    task_id = new_id()
    first = task.apply(({"n": 1},), task_id=task_id)
    assert (first.state, first.result) == ("SUCCESS", 1)

    reads = count_reads(monkeypatch, app)
    second = task.apply(({"n": 1},), task_id=task_id)
    assert (second.state, second.result) == ("SUCCESS", 1), "the stored result comes back"
    assert len(runs) == 1
    assert reads == [task_id], "one read of the result backend"
    assert app.backend.get_task_meta(task_id)["result"] == 1

    assert task.apply(({"n": 1},), task_id=new_id()).result == 2, "another id runs"


def test_a_stored_none_result_also_counts_as_done(app: Celery) -> None:
    runs: list[int] = []
    task = app.task(base=KafkaTask, name="t.none")(appending(runs))
    task_id = new_id()
    task.apply(task_id=task_id)
    again = task.apply(task_id=task_id)
    assert (again.state, again.result) == ("SUCCESS", None)
    assert len(runs) == 1


def test_only_success_is_guarded_a_failed_id_runs_again(app: Celery) -> None:
    runs: list[int] = []
    task = app.task(base=KafkaTask, name="t.fail_then_ok")(
        failing(runs, lambda: ValueError("bad"), times=1)
    )
    task_id = new_id()
    assert task.apply(task_id=task_id).state == "FAILURE"
    assert task.apply(task_id=task_id).state == "SUCCESS"
    assert len(runs) == 2


def test_no_guard_with_rpc_results_which_store_nothing_to_read(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rpc = Celery("ckb-unit-rpc", broker="memory://", backend="rpc://", set_as_current=False)
    rpc.conf.task_store_eager_result = True  # else the guard skips eager calls anyway
    try:
        task, runs = counting_task(rpc, "t.rpc")
        with caplog.at_level(logging.WARNING, logger="tasks.base"):
            task.apply((None,), task_id=new_id())
        assert runs == [1]
        assert not [r for r in caplog.records if r.name == "tasks.base"], "no failed read"
    finally:
        rpc.close()


def test_guard_can_be_switched_off_per_task(app: Celery) -> None:
    task, runs = counting_task(app, "t.unguarded", idempotency_guard=False)
    task_id = new_id()
    task.apply((None,), task_id=task_id)
    assert task.apply((None,), task_id=task_id).result == 2
    assert len(runs) == 2


def test_skipped_duplicate_is_logged_with_the_id_not_the_payload(
    app: Celery, caplog: pytest.LogCaptureFixture
) -> None:
    task, _ = counting_task(app, "t.logged")
    task_id = new_id()
    secret = "card-4111-1111"
    task.apply(({"card": secret},), task_id=task_id)
    with caplog.at_level(logging.INFO, logger="tasks.base"):
        task.apply(({"card": secret},), task_id=task_id)
    skipped = [r for r in caplog.records if r.name == "tasks.base" and r.levelno == logging.INFO]
    assert len(skipped) == 1
    assert task_id in skipped[0].getMessage()
    assert all(secret not in r.getMessage() for r in caplog.records)


def test_a_failed_backend_read_runs_the_task(
    app: Celery, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    task, runs = counting_task(app, "t.backend_down")

    def broken(*_: Any, **__: Any) -> Any:
        raise ConnectionError("redis is down")

    monkeypatch.setattr(app.backend, "get_task_meta", broken)
    with caplog.at_level(logging.WARNING, logger="tasks.base"):
        result = task.apply((None,), task_id=new_id())
    assert result.state == "SUCCESS"
    assert len(runs) == 1, "an unreadable backend must not retry or skip the body"
    assert any(r.levelno == logging.WARNING for r in caplog.records if r.name == "tasks.base")


def test_no_backend_read_when_no_result_can_exist(
    app: Celery, monkeypatch: pytest.MonkeyPatch
) -> None:
    task, _ = counting_task(app, "t.direct")
    unstored, unstored_runs = counting_task(app, "t.unstored", store_eager_result=False)
    reads = count_reads(monkeypatch, app)
    task.apply((None,), task_id="direct-call")
    assert task({"n": 1}) == 2, "a direct call has no task id, so it always runs"
    task_id = new_id()
    unstored.apply((None,), task_id=task_id)
    unstored.apply((None,), task_id=task_id)
    assert len(unstored_runs) == 2, "eager runs that store nothing have nothing to find"
    assert reads == ["direct-call"]


@pytest.mark.parametrize(
    ("settings", "call"),
    [
        # task_always_eager without stored results: reading one would warn (an error here)
        ({"task_always_eager": True}, "apply_async"),
        # no result backend configured at all
        ({"result_backend": None, "task_store_eager_result": True}, "apply"),
    ],
)
def test_apps_that_store_no_results_just_run(
    settings: dict[str, Any],
    call: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    other = Celery("ckb-unit-other", broker="memory://", set_as_current=False)
    other.conf.update(result_backend="cache+memory://")
    other.conf.update(settings)
    try:
        task, runs = counting_task(other, "t.other")
        reads = count_reads(monkeypatch, other)
        task_id = new_id()
        with caplog.at_level(logging.INFO, logger="tasks.base"):
            getattr(task, call)((None,), task_id=task_id)
            getattr(task, call)((None,), task_id=task_id)
        assert len(runs) == 2
        assert reads == []
        assert [r for r in caplog.records if r.name == "tasks.base"] == []
    finally:
        other.close()


# --- Kafka origin ----------------------------------------------------------------------------


def test_kafka_origin_reads_the_bridge_headers(app: Celery) -> None:
    task = app.task(base=KafkaTask, bind=True, name="t.origin")(origin_of)
    task.push_request(
        ckb_topic="orders", ckb_partition=3, ckb_offset=42, ckb_key="k-1", ckb_timestamp=1700
    )
    try:
        origin = task.kafka_origin()
    finally:
        task.pop_request()
    assert origin == {
        "topic": "orders",
        "partition": 3,
        "offset": 42,
        "key": "k-1",
        "timestamp": 1700,
    }


def test_kafka_origin_is_all_none_without_the_bridge(app: Celery) -> None:
    task = app.task(base=KafkaTask, bind=True, name="t.no_origin")(origin_of)
    assert task.apply(task_id=new_id()).result == dict.fromkeys(
        ("topic", "partition", "offset", "key", "timestamp")
    )
    assert kafka_origin(object()) == dict.fromkeys(
        ("topic", "partition", "offset", "key", "timestamp")
    )
