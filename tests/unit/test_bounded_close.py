"""close_within: a close that hangs (an unresponsive broker) no longer holds the caller."""

from __future__ import annotations

import logging
import threading
import time

import pytest

from bridge.bounded_close import close_within


def test_a_close_that_returns_is_clean() -> None:
    calls: list[str] = []
    assert close_within(lambda: calls.append("closed"), 5.0, "consumer") is True
    assert calls == ["closed"]


def test_a_close_that_hangs_is_given_up_after_the_timeout(
    caplog: pytest.LogCaptureFixture,
) -> None:
    release = threading.Event()
    began = time.monotonic()
    try:
        assert close_within(lambda: release.wait(30), 0.3, "consumer") is False
        took = time.monotonic() - began
    finally:
        release.set()  # let the abandoned thread end
    assert 0.25 <= took < 5, f"gave up after {took:.2f}s"
    assert "closing the consumer did not finish within 0.3s" in caplog.text


def test_a_close_that_raises_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    def broken() -> None:
        raise RuntimeError("already closed")

    with caplog.at_level(logging.WARNING):
        assert close_within(broken, 5.0, "consumer") is True
    assert "closing the consumer failed: already closed" in caplog.text
