"""The invariants every chaos scenario is checked against, as pure functions of its evidence.

Evidence is what the run left behind: the records produced (and what each should end as),
every execution the ``it.record`` task recorded, every dead letter on the DLQ topic, and the
committed offsets a probe sampled while the run went on. No I/O here.

- I1 no loss: every produced record ends as a successful execution or a dead letter, and as
  the one it should (a record meant to succeed is not dead-lettered, a poison record is);
- I2 no commit ahead: no sampled commit covers a record not finished at the time of the
  sample (finished = earliest successful execution end, or the dead letter's timestamp);
- I3 no gaps: per partition the committed offset never moves backwards, never passes the end,
  and ends at the end offset;
- I4 duplicates: executions beyond one per record (and dead letters beyond one) stay within
  the scenario's bound (0 after clean stops, the in-flight window after hard faults);
- I5 progress: everything was committed within the bound after the fault ended (or after
  the last record was produced, when production went on longer).
"""

from __future__ import annotations

import bisect
import math
from collections import Counter
from dataclasses import dataclass, field

OK = "ok"
Coordinates = tuple[int, int]  # (partition, offset)
Sample = tuple[float, dict[int, int]]  # (wall time the read returned, partition → committed)
NOTHING_COMMITTED = -1001


@dataclass(frozen=True)
class Execution:
    partition: int
    offset: int
    end: float
    n: int | None = None  # the record number in the payload, when it has one


@dataclass(frozen=True)
class DeadLetter:
    partition: int
    offset: int
    reason: str
    timestamp: float  # seconds; the write's create time, never after its acknowledgement


@dataclass
class Evidence:
    #: every produced record: coordinates → ``OK`` or the DLQ reason it must end with
    expected: dict[Coordinates, str]
    #: coordinates → record number, to check each execution ran its own record
    numbers: dict[Coordinates, int]
    executions: list[Execution]
    dead_letters: list[DeadLetter]
    samples: list[Sample]
    end_offsets: dict[int, int]
    #: seconds from the end of the fault (and of production) to everything committed;
    #: None: never got there
    recovery: float | None = None


@dataclass(frozen=True)
class Bounds:
    duplicates: int = 0
    #: records meant to succeed that may end dead-lettered although a run of them succeeded
    #: (Celery records FAILURE when it cannot store a finished task's result: Redis away)
    spurious_dead_letters: int = 0
    #: None: no fault, the run only has to finish (the scenario's own timeout)
    recovery: float | None = None


@dataclass
class Report:
    records: int
    executions: int
    duplicates: int
    dead_letters: int
    dlq_duplicates: int
    spurious_dead_letters: int
    max_commit_lag: float
    recovery: float | None
    samples: int
    bounds: Bounds
    violations: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations

    def line(self, name: str) -> str:
        recovery = "-" if self.recovery is None else f"{self.recovery:.1f}s"
        if self.bounds.recovery is not None:
            recovery += f"/<={self.bounds.recovery:.0f}s"
        spurious = ""
        if self.spurious_dead_letters or self.bounds.spurious_dead_letters:
            spurious = (
                f"spurious_dlq={self.spurious_dead_letters}/<={self.bounds.spurious_dead_letters} "
            )
        return (
            f"chaos {name}: records={self.records} executions={self.executions} "
            f"duplicates={self.duplicates}/<={self.bounds.duplicates} dlq={self.dead_letters} "
            f"dlq_duplicates={self.dlq_duplicates} {spurious}"
            f"max_commit_lag={self.max_commit_lag:.1f}s "
            f"recovery={recovery} commit_samples={self.samples} "
            f"{'OK' if self.ok else 'VIOLATED: ' + '; '.join(self.violations)}"
        )


def check(evidence: Evidence, bounds: Bounds) -> Report:
    finished = finish_times(evidence)
    runs = Counter((e.partition, e.offset) for e in evidence.executions)
    letters = Counter((d.partition, d.offset) for d in evidence.dead_letters)
    duplicates = sum(count - 1 for count in runs.values())
    dlq_duplicates = sum(count - 1 for count in letters.values())
    spurious = spurious_dead_letters(evidence)
    violations = [
        *no_loss(evidence, spurious),
        *no_commit_ahead(evidence, finished),
        *no_gaps(evidence),
        *within_bounds(evidence, bounds, duplicates, dlq_duplicates),
    ]
    if len(spurious) > bounds.spurious_dead_letters:
        violations.append(
            f"I1 {len(spurious)} records dead-lettered although a run succeeded "
            f"> bound {bounds.spurious_dead_letters}: {_first(spurious)}"
        )
    return Report(
        records=len(evidence.expected),
        executions=len(evidence.executions),
        duplicates=duplicates,
        dead_letters=len(letters),
        dlq_duplicates=dlq_duplicates,
        spurious_dead_letters=len(spurious),
        max_commit_lag=max_commit_lag(evidence, finished),
        recovery=evidence.recovery,
        samples=len(evidence.samples),
        bounds=bounds,
        violations=violations,
    )


def finish_times(evidence: Evidence) -> dict[Coordinates, float]:
    """When each record first finished: its earliest successful run or dead letter."""
    finished: dict[Coordinates, float] = {}
    events = [((e.partition, e.offset), e.end) for e in evidence.executions] + [
        ((d.partition, d.offset), d.timestamp) for d in evidence.dead_letters
    ]
    for key, at in events:
        finished[key] = min(finished.get(key, at), at)
    return finished


def _first(items: list[Coordinates], limit: int = 5) -> str:
    return ", ".join(f"p{p}@{o}" for p, o in sorted(items)[:limit]) + (
        f" (+{len(items) - limit} more)" if len(items) > limit else ""
    )


def spurious_dead_letters(evidence: Evidence) -> list[Coordinates]:
    """Records meant to succeed that were dead-lettered, although one of their runs succeeded."""
    ran = {(e.partition, e.offset) for e in evidence.executions}
    return sorted(
        {(d.partition, d.offset) for d in evidence.dead_letters}
        & ran
        & {key for key, expect in evidence.expected.items() if expect == OK}
    )


def no_loss(evidence: Evidence, spurious: list[Coordinates]) -> list[str]:
    """I1, and that each record ended as it should (``spurious`` ones are bounded apart)."""
    ran = {(e.partition, e.offset) for e in evidence.executions}
    reasons: dict[Coordinates, set[str]] = {}
    for letter in evidence.dead_letters:
        reasons.setdefault((letter.partition, letter.offset), set()).add(letter.reason)
    lost, wrong = [], []
    for key, expect in evidence.expected.items():
        if key not in ran and key not in reasons:
            lost.append(key)
        elif expect == OK and key in reasons and key not in spurious:
            wrong.append((key, f"dead-lettered ({', '.join(sorted(reasons[key]))})"))
        elif expect != OK and (key in ran or expect not in reasons.get(key, set())):
            wrong.append((key, f"expected dead letter {expect}"))
    violations = []
    if lost:
        violations.append(f"I1 lost {len(lost)} records: {_first(lost)}")
    if wrong:
        detail = ", ".join(f"p{p}@{o} {why}" for (p, o), why in sorted(wrong)[:5])
        violations.append(f"I1 {len(wrong)} records ended wrongly: {detail}")
    unknown = (ran | set(reasons)) - set(evidence.expected)
    if unknown:
        violations.append(
            f"I1 runs or dead letters of records never produced: {_first([*unknown])}"
        )
    mismatched = [
        (e.partition, e.offset)
        for e in evidence.executions
        if e.n is not None and evidence.numbers.get((e.partition, e.offset), e.n) != e.n
    ]
    if mismatched:
        violations.append(f"I1 runs carried another record's payload: {_first(mismatched)}")
    return violations


def _committed(value: int) -> int:
    return 0 if value == NOTHING_COMMITTED else value


def _prefix_max_finish(
    evidence: Evidence, finished: dict[Coordinates, float]
) -> dict[int, list[float]]:
    """Per partition, ``prefix[k]`` = latest finish time among offsets below ``k``."""
    prefix: dict[int, list[float]] = {}
    for partition, end in evidence.end_offsets.items():
        running, values = -math.inf, [-math.inf]
        for offset in range(end):
            running = max(running, finished.get((partition, offset), math.inf))
            values.append(running)
        prefix[partition] = values
    return prefix


def no_commit_ahead(evidence: Evidence, finished: dict[Coordinates, float]) -> list[str]:
    """I2: a sample read at ``t`` may only cover records finished before ``t``."""
    prefix = _prefix_max_finish(evidence, finished)
    ahead: list[str] = []
    for read_at, sample in evidence.samples:
        for partition, value in sample.items():
            committed = _committed(value)
            values = prefix.get(partition, [-math.inf])
            if values[min(committed, len(values) - 1)] <= read_at:
                continue
            offset = next(
                o for o in range(committed) if finished.get((partition, o), math.inf) > read_at
            )
            ahead.append(f"p{partition} committed {committed} at {read_at:.2f} over @{offset}")
    if not ahead:
        return []
    return [f"I2 {len(ahead)} samples committed ahead of unfinished work: {ahead[:3]}"]


def no_gaps(evidence: Evidence) -> list[str]:
    """I3: monotonic, never past the end, ending at the end."""
    violations = []
    last: dict[int, int] = {}
    for read_at, sample in evidence.samples:
        for partition, value in sample.items():
            committed = _committed(value)
            if committed < last.get(partition, 0):
                violations.append(
                    f"I3 p{partition} committed offset went back from "
                    f"{last[partition]} to {committed} at {read_at:.2f}"
                )
            if committed > evidence.end_offsets.get(partition, 0):
                violations.append(f"I3 p{partition} committed {committed} past the end")
            last[partition] = committed
    final = {p: last.get(p, 0) for p in evidence.end_offsets}
    if final != evidence.end_offsets:
        violations.append(f"I3 last commits {final} are not the end offsets {evidence.end_offsets}")
    return violations[:5]


def within_bounds(
    evidence: Evidence, bounds: Bounds, duplicates: int, dlq_duplicates: int
) -> list[str]:
    """I4 and I5."""
    violations = []
    if duplicates > bounds.duplicates:
        violations.append(f"I4 {duplicates} duplicate executions > bound {bounds.duplicates}")
    if dlq_duplicates > bounds.duplicates:
        violations.append(f"I4 {dlq_duplicates} duplicate dead letters > bound {bounds.duplicates}")
    if bounds.recovery is not None and (
        evidence.recovery is None or evidence.recovery > bounds.recovery
    ):
        took = "never" if evidence.recovery is None else f"{evidence.recovery:.1f}s"
        violations.append(
            f"I5 not all committed within {bounds.recovery:.0f}s of the fault: {took}"
        )
    return violations


def max_commit_lag(evidence: Evidence, finished: dict[Coordinates, float]) -> float:
    """Longest a finished record waited until a sample showed it committed (seconds)."""
    worst = 0.0
    per_partition: dict[int, tuple[list[float], list[int]]] = {}
    for read_at, sample in sorted(evidence.samples, key=lambda s: s[0]):
        for partition, value in sample.items():
            times, highs = per_partition.setdefault(partition, ([], []))
            times.append(read_at)
            highs.append(max(_committed(value), highs[-1] if highs else 0))
    for (partition, offset), done in finished.items():
        times, highs = per_partition.get(partition, ([], []))
        index = bisect.bisect_right(highs, offset)  # first sample that covers ``offset``
        if index < len(times) and times[index] >= done:
            worst = max(worst, times[index] - done)
    return worst
