"""What a replay prints: the dry-run listings (selected, refused) and the summary, which
says what was refused, why, and how to replay it. Never a payload."""

from __future__ import annotations

from datetime import UTC

from rich.console import Console
from rich.table import Table

from bridge.replay.letters import DeadLetter
from bridge.replay.options import ReplayOptions, ReplayResult
from bridge.replay.stats import NO_REASON, OUTCOMES
from bridge.replay.trust import Refusal, Trust

LISTING_COLUMNS = ("dead letter", "reason", "original", "failed at", "error class")


def listing_row(letter: DeadLetter) -> tuple[str, ...]:
    """One dry-run row: coordinates and context (failed at, in UTC), never the payload."""
    moment = letter.failed_at
    failed_at = "-" if moment is None else f"{moment.astimezone(UTC):%Y-%m-%d %H:%M:%S}Z"
    return (
        letter.record.coordinates(),
        letter.reason or NO_REASON,
        letter.origin(),
        failed_at,
        letter.error_class or "-",
    )


def render_selected(rows: list[tuple[str, ...]], console: Console) -> None:
    table = Table(title=f"{len(rows)} dead letters selected")
    for name in LISTING_COLUMNS:
        table.add_column(name, overflow="fold")
    for row in rows:
        table.add_row(*row)
    console.print(table)


def render_refused(rows: list[tuple[str, ...]], console: Console) -> None:
    """The dry run's list of refused letters, each with the rule it failed."""
    if not rows:
        return
    table = Table(title=f"{len(rows)} dead letters refused")
    for name in (*LISTING_COLUMNS, "refused"):
        table.add_column(name, overflow="fold")
    for row in rows:
        table.add_row(*row)
    console.print(table)


def refusal_notes(refusals: dict[str, int], trust: Trust) -> list[str]:
    """One line per rule that refused letters: how many, why, and the option that lifts it."""
    why = {
        Refusal.OTHER_GROUP.value: f"ckb.group is not {trust.group} (kafka.group_id), or "
        "missing: written by another bridge or by hand; --any-group replays them",
        Refusal.UNROUTED_TOPIC.value: "their ckb.original.topic is one no route consumes: "
        "--to TOPIC sends them somewhere, --allow-any-topic back where they came from",
        Refusal.MAX_REPLAYS.value: f"replayed --max-replays ({trust.max_replays}) times "
        "already (ckb.replay.count, or it is garbled): records that fail every time; "
        "a dry run lists them, a higher --max-replays tries again",
        Refusal.VALUE_DROPPED.value: "written without the record's value (ckb.value.dropped: "
        "too large for the dead-letter topic): never replayed, it would be a record without a "
        "value; read it from its source topic at ckb.original.partition/offset",
    }
    return [f"refused {refusals[rule]}: {why[rule]}" for rule in why if refusals.get(rule)]


def render_summary(result: ReplayResult, options: ReplayOptions, console: Console) -> None:
    """Counts per reason, then one plain line: ``done|stopped|dry run: examined N, …``."""
    stats = result.stats
    table = Table(title=f"{options.source} (group {options.group})")
    table.add_column("reason")
    replayed = "would replay" if options.dry_run else "replayed"
    headings = ("examined", replayed, "filtered out", "skipped", "failed", "refused")
    for heading in headings:
        table.add_column(heading, justify="right")
    for reason, counts in sorted(stats.by_reason.items()):
        table.add_row(reason, str(sum(counts.values())), *(str(counts[o]) for o in OUTCOMES))
    totals = stats.totals()
    table.add_row("total", str(stats.examined), *(str(totals[o]) for o in OUTCOMES), style="bold")
    if stats.examined:
        console.print(table)
    stopped = result.error is not None or result.interrupted
    prefix = "dry run" if options.dry_run else "stopped" if stopped else "done"
    console.print(f"{prefix}: {stats.summary_line(options.dry_run)}", highlight=False)
    totals = stats.totals()
    if totals["filtered"] and not options.dry_run:
        console.print(
            f"filtered out {totals['filtered']}: examined, so committed past under group "
            f"{options.group}; replay them later under another --group",
            highlight=False,
        )
    skipped = totals["skipped"]
    if skipped:
        console.print(
            f"skipped {skipped}: not a ckb dead letter (no ckb.original.topic); "
            "pass --to TOPIC --any-group to replay such records",
            highlight=False,
        )
    for note in refusal_notes(stats.refusals, options.selection.trust):
        console.print(note, highlight=False)
    if totals["refused"] and not options.dry_run:
        console.print(
            f"refused letters were not replayed: they stay in {options.source}, committed past "
            f"under group {options.group}; to replay them later, use another --group with the "
            "option above",
            highlight=False,
        )
    if options.dry_run:
        console.print("dry run: nothing produced, nothing committed", highlight=False)
