"""Counting a replay: examined letters per reason and outcome, refusals per rule, and the
summary line."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from bridge.replay.selection import Verdict
from bridge.replay.trust import Refusal

OUTCOMES = ("replayed", "filtered", "skipped", "failed", "refused")
NO_REASON = "(none)"


@dataclass
class ReplayStats:
    """Examined letters per reason and outcome (``replayed`` means *would be* in a dry run)."""

    by_reason: dict[str, Counter[str]] = field(default_factory=dict)
    #: refused letters per rule (:class:`~bridge.replay.trust.Refusal` value)
    refusals: Counter[str] = field(default_factory=Counter)

    def count(self, reason: str | None, outcome: str, refusal: Refusal | None = None) -> None:
        if outcome not in OUTCOMES:
            raise ValueError(f"unknown outcome {outcome!r}")
        self.by_reason.setdefault(reason or NO_REASON, Counter())[outcome] += 1
        if refusal is not None:
            self.refusals[refusal.value] += 1

    def totals(self) -> Counter[str]:
        total: Counter[str] = Counter()
        for counts in self.by_reason.values():
            total.update(counts)
        return total

    @property
    def examined(self) -> int:
        return sum(self.totals().values())

    @property
    def replayed(self) -> int:
        return self.totals()["replayed"]

    def summary_line(self, dry_run: bool = False) -> str:
        totals = self.totals()
        replayed = "would replay" if dry_run else "replayed"
        line = (
            f"examined {self.examined}, {replayed} {totals['replayed']}, "
            f"filtered out {totals['filtered']}, skipped {totals['skipped']}"
        )
        if totals["failed"]:
            line += f", failed {totals['failed']}"
        if totals["refused"]:
            line += f", refused {totals['refused']}"
        return line


def outcome_of(verdict: Verdict) -> str:
    outcomes = {
        Verdict.REPLAY: "replayed",
        Verdict.FILTERED: "filtered",
        Verdict.REFUSED: "refused",
    }
    return outcomes.get(verdict, "skipped")
