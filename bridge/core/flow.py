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


def decide_flow(
    parts: Mapping[TP, PartitionWork[Any]], open_total: int, limits: Limits
) -> FlowChange:
    """Pause partitions at their cap (or all, at the total cap); resume drained ones.

    Each partition resumes on its own terms: one paused at its own cap once it drained to
    ``resume_ratio`` of it (whatever the others hold, as long as the total is not full); one
    paused because the total was full once the total drained to ``resume_ratio``. Updates
    each partition's pause flags to what the change does.
    """
    total_full = open_total >= limits.max_in_flight_total
    total_low = open_total <= limits.max_in_flight_total * limits.resume_ratio
    change = FlowChange()
    for tp, part in parts.items():
        count = part.open_count
        own_full = count >= part.cap
        if not part.paused:
            if own_full or total_full:
                part.paused = True
                part.paused_by_total = not own_full
                change.pause.append(tp)
            continue
        if part.paused_by_total and own_full:
            part.paused_by_total = False  # its own cap holds it now
        # "not own_full": with resume_ratio 1 a partition at its cap would flap every turn
        drained = not own_full and count <= part.cap * limits.resume_ratio
        if drained and not total_full and (total_low or not part.paused_by_total):
            part.paused = False
            change.resume.append(tp)
    return change
