"""Pause and resume: which partitions stop fetching, and when each may fetch again."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from bridge.core.partition import PartitionWork
from bridge.core.policy import Limits
from bridge.core.vocabulary import TP


@dataclass(slots=True)
class FlowChange:
    """Partitions to pause and to resume now."""

    pause: list[TP] = field(default_factory=list)
    resume: list[TP] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Totals:
    """What all partitions hold together: open records and their bytes."""

    records: int
    size: int

    def full(self, limits: Limits) -> bool:
        return (
            self.records >= limits.max_in_flight_total
            or self.size >= limits.max_in_flight_bytes_total
        )

    def low(self, limits: Limits) -> bool:
        ratio = limits.resume_ratio
        return (
            self.records <= limits.max_in_flight_total * ratio
            and self.size <= limits.max_in_flight_bytes_total * ratio
        )


def decide_flow(
    parts: Mapping[TP, PartitionWork[Any]], totals: Totals, limits: Limits
) -> FlowChange:
    """Pause partitions at their caps (or all, at a total cap); resume drained ones.

    A cap is a number of open records or of their bytes, whichever is reached first.

    Each partition resumes on its own terms: one paused at its own cap once it drained to
    ``resume_ratio`` of it (whatever the others hold, as long as the total is not full); one
    paused because the total was full once the total drained to ``resume_ratio``. Updates
    each partition's pause flags to what the change does.
    """
    total_full = totals.full(limits)
    total_low = totals.low(limits)
    change = FlowChange()
    for tp, part in parts.items():
        own_full = part.full
        if not part.paused:
            if own_full or total_full:
                part.paused = True
                part.paused_by_total = not own_full
                change.pause.append(tp)
            continue
        if part.paused_by_total and own_full:
            part.paused_by_total = False  # its own cap holds it now
        drained = part.drained(limits.resume_ratio)
        if drained and not total_full and (total_low or not part.paused_by_total):
            part.paused = False
            change.resume.append(tp)
    return change
