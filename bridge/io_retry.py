"""The bridge's own I/O retries (tenacity), logged once per outage rather than per record."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_delay,
    wait_exponential,
    wait_random,
)

P = ParamSpec("P")
T = TypeVar("T")


class OutageLog:
    """Says once that a dependency went away, and once that it came back."""

    def __init__(self, logger: logging.Logger, what: str) -> None:
        self._log = logger
        self._what = what
        self.down = False

    def failed(self, error: BaseException | None) -> None:
        if not self.down:
            self.down = True
            self._log.warning("%s unavailable, retrying: %r", self._what, error)

    def recovered(self) -> None:
        if self.down:
            self.down = False
            self._log.warning("%s available again", self._what)


def retry_io(
    func: Callable[P, T],
    outage: OutageLog,
    retry_for: float,
    initial: float = 0.1,
    maximum: float = 2.0,
    retry_on: tuple[type[BaseException], ...] = (Exception,),
) -> Callable[P, T]:
    """``func`` retried with exponential backoff and jitter for up to ``retry_for`` seconds,
    on the exceptions in ``retry_on`` only (the others are raised at once)."""

    def before_sleep(state: RetryCallState) -> None:
        outcome = state.outcome
        outage.failed(outcome.exception() if outcome is not None else None)

    retrying = Retrying(
        stop=stop_after_delay(retry_for),
        # exponential with jitter, spelled so every supported tenacity takes it without a
        # DeprecationWarning (9.2 renamed wait_exponential_jitter's ``initial``)
        wait=wait_exponential(multiplier=initial, max=maximum) + wait_random(0, initial),
        before_sleep=before_sleep,
        retry=retry_if_exception_type(retry_on),
        reraise=True,
    )

    def call(*args: P.args, **kwargs: P.kwargs) -> T:
        result: Any = retrying(func, *args, **kwargs)
        return result  # type: ignore[no-any-return]

    return call
