"""The dead letters not yet acknowledged, as data: what each one is waiting for, and what the
backlog shows (``ckb_dlq_pending_records``, the ``/readyz`` reason). No I/O here."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from bridge.dead_letter_headers import Failure
from bridge.records import Record

#: seconds a dead letter may stay unacknowledged before ``/readyz`` names it
STUCK_AFTER = 60.0


@dataclass(eq=False)
class Letter:
    """One dead letter on its way; compared by identity."""

    record: Record
    topic: str
    failure: Failure
    on_done: Callable[[], None]
    #: False once the record's partition moved away: a failed write is then not retried
    wanted: Callable[[], bool]
    since: float
    attempt: int = 0
    #: refused as too large in a batch: try it alone before dropping its value
    suspect: bool = False
    #: written without its value (its size in bytes), after it was refused alone
    dropped: int | None = None
    #: refused even without its value: it waits for an operator and is then tried whole only
    #: (never without its value again, so a fix never races a value-less write)
    whole_only: bool = False
    #: the last error was permanent ("refused"): how to fix it
    refused: str | None = None
    last_error: str = ""


def summarize(
    letters: Iterable[Letter], sending: set[Letter], now: float
) -> tuple[dict[tuple[str, str], int], str | None]:
    """Letters by (dead-letter topic, ``writing|retrying|refused``), and why they are stuck
    (a topic refuses them, or one waits for over :data:`STUCK_AFTER`), or None."""
    pending: Counter[tuple[str, str]] = Counter()
    refused: dict[str, Letter] = {}
    oldest: Letter | None = None
    for letter in letters:
        if letter.refused is not None:
            pending[(letter.topic, "refused")] += 1
            refused.setdefault(letter.topic, letter)
        else:
            pending[(letter.topic, "writing" if letter in sending else "retrying")] += 1
        if oldest is None or letter.since < oldest.since:
            oldest = letter
    problem = None
    if refused:
        problem = "; ".join(
            f"dead letters: {item.topic} refuses them ({item.last_error}): {item.refused}"
            for item in refused.values()
        )
    elif oldest is not None and now - oldest.since > STUCK_AFTER:
        problem = (
            f"dead letters: {sum(pending.values())} not acknowledged for over "
            f"{STUCK_AFTER:.0f}s (oldest to {oldest.topic}"
            + (f": {oldest.last_error})" if oldest.last_error else ")")
        )
    return dict(pending), problem
