"""What a replay is given and what it gives back.

:class:`ReplayOptions` (source topic, replay group, selection, ``--limit``, ``--dry-run``),
:class:`ReplayResult`, the progress callback's shape, and :class:`ReplayError` for the
failures a user should read.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from bridge.replay.selection import Selection
from bridge.replay.stats import ReplayStats

GROUP_PREFIX = "ckb-replay."


class ReplayError(Exception):
    """A runtime failure the user should read (Kafka unreachable, missing topic, …)."""


def default_group(source: str) -> str:
    return f"{GROUP_PREFIX}{source}"


@dataclass(frozen=True)
class ReplayOptions:
    source: str
    group: str
    selection: Selection = field(default_factory=Selection)
    limit: int | None = None
    dry_run: bool = False


@dataclass
class ReplayResult:
    stats: ReplayStats = field(default_factory=ReplayStats)
    #: listing rows of the letters a dry run would replay (empty for a real run)
    selected: list[tuple[str, ...]] = field(default_factory=list)
    #: listing rows of the letters a dry run refuses, with the refusal (empty for a real run)
    refused: list[tuple[str, ...]] = field(default_factory=list)
    #: why the run ended early: an error message, or None
    error: str | None = None
    interrupted: bool = False


#: called as ``progress(examined, selected, total)``; total is an upper bound (``--limit``)
ProgressCallback = Callable[[int, int, int], None]
