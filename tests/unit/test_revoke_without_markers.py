"""Without dispatch markers (``rpc://``, ``results.dispatch_markers: false``) nobody adopts the
tasks a revoked partition has in flight: a revoke that comes while the bridge is stopping (a
member joined during the shutdown's wait) must wait for them and commit what finished before
returning, or the new owner sends them all again."""

from __future__ import annotations

import types
from typing import Any

import pytest
from confluent_kafka import TopicPartition

from bridge.events import Observers
from bridge.rebalance import RebalanceCallbacks


class Engine:
    """Three tasks in flight on the revoked partition, one finishing per turn."""

    def __init__(self) -> None:
        self.left = 3

    def partition(self, tp: Any) -> None:
        return None

    def in_flight_of(self, tps: Any) -> int:
        return self.left

    def drop(self, tp: Any) -> None:
        return None


def revoke_while_stopping(markers: bool, hurry: bool = False) -> tuple[Engine, list[bool], float]:
    engine, commits, now = Engine(), list[bool](), [0.0]

    def wait_turn() -> None:
        now[0] += 0.05
        engine.left = max(engine.left - 1, 0)

    callbacks = RebalanceCallbacks(
        engine,  # type: ignore[arg-type]
        None,  # type: ignore[arg-type]
        types.SimpleNamespace(commit=lambda sync, tps: commits.append(sync)),  # type: ignore[arg-type]
        types.SimpleNamespace(pending_for=lambda tps: 0, forget=lambda tps: None),  # type: ignore[arg-type]
        types.SimpleNamespace(unwatch=lambda task_id: None),  # type: ignore[arg-type]
        Observers(),
        lambda: now[0],
        revoke_grace=20.0,
        stopping=lambda: True,
        wait_turn=wait_turn,
        markers=markers,
        hurry=lambda: hurry,
    )
    callbacks.on_revoke(None, [TopicPartition("orders", 0)])
    return engine, commits, now[0]


def test_without_markers_a_revoke_during_shutdown_waits_and_commits_synchronously() -> None:
    engine, commits, waited = revoke_while_stopping(markers=False)
    assert engine.left == 0 and waited == pytest.approx(0.15), "waited for the three"
    assert commits == [True], "the group (and the new owner) wait for this commit"


def test_with_markers_a_revoke_during_shutdown_hands_the_tasks_on_at_once() -> None:
    engine, commits, waited = revoke_while_stopping(markers=True)
    assert (engine.left, waited, commits) == (3, 0.0, [False])


def test_a_second_stop_signal_ends_that_wait_too() -> None:
    engine, _, waited = revoke_while_stopping(markers=False, hurry=True)
    assert (engine.left, waited) == (3, 0.0)
