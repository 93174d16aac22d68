"""Observers: a fan-out that never lets one observer's failure reach the loop."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from bridge.events import DeadLetterState, Observer, Observers, PartitionState, QueueWindow, Totals
from bridge.records import Record

RECORD = Record("orders", 0, 5, None, b"{}", (), 1)

CALLS: list[tuple[str, tuple[Any, ...]]] = [
    ("on_consumed", (RECORD,)),
    ("on_dispatched", (RECORD, "tasks.x", False)),
    ("on_rate_limited", ("orders", 3, 0.02)),
    ("on_task_finished", (RECORD, "tasks.x", "success", 0.5)),
    ("on_dead_lettered", (RECORD, "decode_error")),
    ("on_committed", (("orders", 0), 6)),
    ("on_rebalance", ("assign", [("orders", 0)])),
    ("on_paused", (2,)),
    ("on_snapshot", ([PartitionState("orders", 0, 1, 1, 5, 0.5, False)],)),
    ("on_windows", ([QueueWindow("celery", 32, 3, 10.0)],)),
    ("on_offset_reset", (("orders", 0),)),
    ("on_unobservable", (RECORD, "tasks.x")),
    ("on_dead_letter_state", (DeadLetterState(),)),
]


def test_the_fan_out_forwards_every_event_of_the_one_observer_base() -> None:
    events = {name for name in vars(Observer) if name.startswith("on_")}
    assert {name for name, _ in CALLS} == events
    assert events <= set(vars(Observers)), "an event Observers would swallow"


class Recorder(Observer):
    def __init__(self) -> None:
        self.seen: list[tuple[str, tuple[Any, ...]]] = []

    def __getattribute__(self, name: str) -> Any:
        if name.startswith("on_"):
            return lambda *args: self.seen.append((name, args))
        return super().__getattribute__(name)


class Exploding(Observer):
    def __getattribute__(self, name: str) -> Any:
        if name.startswith("on_"):

            def explode(*args: Any) -> None:
                raise RuntimeError(f"boom in {name}")

            return explode
        return super().__getattribute__(name)


@pytest.mark.parametrize(("method", "args"), CALLS, ids=[name for name, _ in CALLS])
def test_fan_out_reaches_every_observer(method: str, args: tuple[Any, ...]) -> None:
    first, second = Recorder(), Recorder()
    observers = Observers([first])
    observers.add(second)
    getattr(observers, method)(*args)
    assert first.seen == [(method, args)]
    assert second.seen == [(method, args)]


@pytest.mark.parametrize(("method", "args"), CALLS, ids=[name for name, _ in CALLS])
def test_failing_observer_is_logged_and_others_still_called(
    method: str, args: tuple[Any, ...], caplog: pytest.LogCaptureFixture
) -> None:
    before, after = Recorder(), Recorder()
    observers = Observers([before, Exploding(), after])
    with caplog.at_level(logging.ERROR, logger="bridge.events"):
        getattr(observers, method)(*args)  # must not raise
    assert before.seen == [(method, args)]
    assert after.seen == [(method, args)]
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1
    assert "Exploding" in errors[0].getMessage()
    assert method in errors[0].getMessage()
    assert errors[0].exc_info is not None
    assert f"boom in {method}" in str(errors[0].exc_info[1])


def test_empty_fan_out_is_a_no_op() -> None:
    Observers().on_consumed(RECORD)  # nothing to call, nothing raised


def test_totals_counts_events() -> None:
    totals = Totals()
    observers = Observers([totals])
    observers.on_consumed(RECORD)
    observers.on_consumed(RECORD)
    observers.on_dispatched(RECORD, "tasks.x", False)
    observers.on_dispatched(RECORD, "tasks.x", True)
    observers.on_task_finished(RECORD, "tasks.x", "success", 0.1)
    observers.on_task_finished(RECORD, "tasks.x", "timeout", None)
    observers.on_task_finished(RECORD, "tasks.x", "success", 0.2)
    observers.on_dead_lettered(RECORD, "task_timeout")
    observers.on_committed(("orders", 0), 3)
    observers.on_committed(("orders", 0), 9)
    assert totals.consumed == 2
    assert (totals.dispatched, totals.redispatched) == (1, 1)
    assert totals.outcomes == {"success": 2, "timeout": 1}
    assert totals.dead_lettered == 1
    assert totals.committed == {("orders", 0): 9}
