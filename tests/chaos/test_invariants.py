"""The invariant checker itself, on hand-made evidence: it must catch what it claims to catch.

Pure and fast (no stack); part of the chaos suite so a checker that stopped failing is noticed.
"""

from __future__ import annotations

import pytest

from tests.chaos.invariants import OK, Bounds, DeadLetter, Evidence, Execution, check

pytestmark = pytest.mark.chaos


def clean() -> Evidence:
    """p0: offsets 0..2 finish at t=1,2,3 (offset 1 dead-lettered); commits follow."""
    return Evidence(
        expected={(0, 0): OK, (0, 1): "task_failed", (0, 2): OK},
        numbers={(0, 0): 0, (0, 1): 1, (0, 2): 2},
        executions=[Execution(0, 0, 1.0, 0), Execution(0, 2, 3.0, 2)],
        dead_letters=[DeadLetter(0, 1, "task_failed", 2.0)],
        samples=[(0.5, {0: -1001}), (1.5, {0: 1}), (2.5, {0: 2}), (3.5, {0: 3})],
        end_offsets={0: 3},
        recovery=1.0,
    )


def test_clean_run_passes() -> None:
    report = check(clean(), Bounds(recovery=5))
    assert report.ok, report.violations
    assert (report.duplicates, report.dead_letters) == (0, 1)
    assert report.max_commit_lag == pytest.approx(0.5)


def test_commit_ahead_of_an_unfinished_record_is_caught() -> None:
    evidence = clean()
    evidence.samples.insert(1, (1.2, {0: 3}))  # at 1.2 only offset 0 had finished
    violations = check(evidence, Bounds()).violations
    assert any(v.startswith("I2") and "@1" in v for v in violations), violations
    assert any(v.startswith("I3") and "went back" in v for v in violations), violations


def test_lost_and_wrongly_ended_records_are_caught() -> None:
    evidence = clean()
    evidence.executions = [Execution(0, 0, 1.0, 0), Execution(0, 1, 2.0, 1)]
    evidence.dead_letters = []
    violations = check(evidence, Bounds()).violations
    assert any("lost 1 records: p0@2" in v for v in violations), violations
    assert any("ended wrongly: p0@1" in v for v in violations), violations


def test_duplicates_spurious_dead_letters_and_stalls_are_bounded() -> None:
    evidence = clean()
    evidence.executions.append(Execution(0, 0, 1.4, 0))
    evidence.dead_letters.append(DeadLetter(0, 2, "task_failed", 3.0))
    evidence.recovery = None
    report = check(evidence, Bounds(duplicates=0, recovery=5))
    assert (report.duplicates, report.spurious_dead_letters) == (1, 1)
    text = " ".join(report.violations)
    assert "I4 1 duplicate executions" in text
    assert "although a run succeeded" in text
    assert "I5" in text
    assert check(evidence, Bounds(duplicates=1, spurious_dead_letters=1)).ok


def test_a_run_of_another_records_payload_is_caught() -> None:
    evidence = clean()
    evidence.executions[0] = Execution(0, 0, 1.0, n=2)
    assert any("another record's payload" in v for v in check(evidence, Bounds()).violations)


def test_commits_must_end_at_the_end_offsets() -> None:
    evidence = clean()
    evidence.samples = evidence.samples[:-1]
    assert any("not the end offsets" in v for v in check(evidence, Bounds()).violations)
