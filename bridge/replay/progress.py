"""A replay run with a rich progress bar (and transient Kafka warnings) on stderr."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from bridge.replay.options import ReplayOptions, ReplayResult
from bridge.replay.session import replay_session, stop_on_signals
from bridge.settings import KafkaSettings


def run_with_progress(kafka: KafkaSettings, options: ReplayOptions) -> ReplayResult:
    """:func:`replay` with a rich progress bar on stderr."""
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[chosen]} selected"),
        TimeElapsedColumn(),
    )
    verb = "scanning" if options.dry_run else "replaying"
    with replay_session(kafka, options) as replayer, stop_on_signals(replayer.stop):
        bar = Progress(*columns, console=Console(stderr=True))
        task = bar.add_task(f"{verb} {options.source}", total=replayer.total, chosen=0)

        def update(examined: int, chosen: int, total: int) -> None:
            bar.update(task, completed=examined, chosen=chosen, total=total)

        def warn(message: str) -> None:
            bar.console.print(f"warning: {message}", style="yellow", markup=False)

        replayer.on_warning = warn

        with bar:
            result = replayer.run(update)
            bar.update(task, completed=result.stats.examined)
    return result
