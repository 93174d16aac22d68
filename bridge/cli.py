"""``ckb``: the command line. Thin: parse, build, call; user mistakes exit 2 with a message."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
from pathlib import Path

import click
import yaml

from bridge.cli_exit import EXIT_USAGE, fail
from bridge.secrets import mask
from bridge.settings import ConfigError, Settings, load_settings
from bridge.stack_cli import demo, stack

config_option = click.option(
    "-c",
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="CKB_CONFIG",
    help="YAML config file (env CKB_CONFIG). CKB_* variables override its values.",
)


def settings_or_exit(path: Path | None) -> Settings:
    try:
        return load_settings(path)
    except ConfigError as exc:
        fail(str(exc), EXIT_USAGE)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="celery-kafka-bridge")
def main() -> None:
    """celery-kafka-bridge: process Kafka topics with your Celery workers."""


@main.command()
@config_option
def run(config_path: Path | None) -> None:
    """Run the bridge until SIGTERM/SIGINT."""
    # before the imports below: an old kombu fails the dispatcher's import with a traceback
    from bridge.compat import kombu_problem

    if problem := kombu_problem():
        fail(problem, EXIT_USAGE)
    from bridge.logging_setup import configure_logging
    from bridge.loop import FatalConsumerError
    from bridge.service import build_bridge, install_signal_handlers

    settings = settings_or_exit(config_path)
    configure_logging(settings.logging.level, settings.logging.json_format)
    log = logging.getLogger("bridge")
    log.info(
        "starting: group %s, %d routes, Kafka %s",
        settings.kafka.group_id,
        len(settings.routes),
        settings.kafka.bootstrap_servers,
    )
    # a stop signal while starting up: nothing consumed yet, so just leave
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        bridge = build_bridge(settings)
        install_signal_handlers(bridge)
        bridge.run()
        if not bridge.loop.closed_cleanly:
            # a thread is still inside Consumer.close(); interpreter finalization would wait
            # on the same unresponsive broker, so leave now (logged by the loop already)
            logging.shutdown()
            os._exit(0)
    except FatalConsumerError as exc:
        fail(str(exc))
    except ConfigError as exc:  # found while building: e.g. TLS settings Celery refuses
        fail(str(exc), EXIT_USAGE)
    except Exception as exc:  # KafkaException on bad client config, …
        log.exception("bridge stopped by an error")
        fail(f"{type(exc).__name__}: {exc}")


@main.command("check-config")
@config_option
@click.option(
    "--probe",
    is_flag=True,
    help="Also ask the running Celery workers (remote control) whether the bridge will see "
    "the outcomes of the tasks it sends: result backend, serializer, ignore_result, queues.",
)
def check_config(config_path: Path | None, probe: bool) -> None:
    """Validate the config; print the effective config with secrets masked."""
    settings = settings_or_exit(config_path)
    effective = mask(settings.model_dump(mode="json", by_alias=True))
    click.echo(yaml.safe_dump(effective, sort_keys=False), nl=False)
    click.secho("config ok", fg="green", err=True)
    if probe:
        probe_workers_or_exit(settings)


def probe_workers_or_exit(settings: Settings) -> None:
    from bridge.celery_app import make_celery_app
    from bridge.worker_probe import probe

    app = make_celery_app(settings.celery)
    try:
        found = probe(app, settings)
    finally:
        app.close()
    for finding in found:
        color = "red" if finding.level == "error" else "yellow"
        click.secho(f"{finding.level}: {finding.message}", fg=color, err=True)
    if any(finding.level == "error" for finding in found):
        raise SystemExit(1)
    click.secho("workers ok" if not found else "workers: see the warnings", fg="green", err=True)


@main.command()
@config_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option(
    "--bridge",
    "bridges",
    multiple=True,
    metavar="URL",
    help="A running bridge's HTTP endpoint (its /status), for in-flight and paused per partition "
    "(repeatable; default: try http://127.0.0.1:<metrics.port> quietly).",
)
def status(config_path: Path | None, as_json: bool, bridges: tuple[str, ...]) -> None:
    """Per partition: committed offset, end offset, lag; in flight and paused from a bridge."""
    from bridge.access_errors import AccessRefusedError
    from bridge.status import add_bridge_state, group_status, render_status

    settings = settings_or_exit(config_path)
    try:
        rows = group_status(settings)
    except AccessRefusedError as exc:
        fail(str(exc), exc.problem.exit_code)
    except Exception as exc:
        fail(f"cannot read the group's offsets from {settings.kafka.bootstrap_servers}: {exc}")
    for warning in add_bridge_state(rows, settings, bridges):
        click.secho(f"warning: {warning}", fg="yellow", err=True)
    if as_json:
        click.echo(json.dumps([row.__dict__ for row in rows], indent=2))
    else:
        render_status(settings.kafka.group_id, rows)


@main.group()
def dlq() -> None:
    """Dead-letter topics."""


def _reason_choice() -> click.Choice[str]:
    from bridge.core.vocabulary import Reason

    return click.Choice([reason.value for reason in Reason])


@dlq.command("replay")
@click.option("--from", "source", required=True, metavar="TOPIC", help="Dead-letter topic to read.")
@click.option(
    "--to",
    "to_topic",
    metavar="TOPIC",
    help="Send every letter here instead of its ckb.original.topic.",
)
@click.option(
    "--reason",
    "reasons",
    multiple=True,
    type=_reason_choice(),
    help="Replay only letters with this ckb.reason (repeatable).",
)
@click.option(
    "--since",
    metavar="T",
    help="Replay only letters that failed at or after T: ISO-8601 (UTC if no zone) or an "
    "age such as 30m, 2h, 1d.",
)
@click.option(
    "--limit", type=click.IntRange(min=1), metavar="N", help="Stop after N replayed letters."
)
@click.option(
    "--dry-run", is_flag=True, help="List what would be replayed; produce and commit nothing."
)
@config_option
@click.option(
    "--group",
    metavar="G",
    help="Consumer group that keeps the replay's progress (default ckb-replay.<from-topic>).",
)
@click.option(
    "--any-group",
    is_flag=True,
    help="Also replay letters whose ckb.group is not kafka.group_id (or that have none).",
)
@click.option(
    "--allow-any-topic",
    is_flag=True,
    help="Also replay letters to an original topic that no route consumes.",
)
@click.option(
    "--max-replays",
    type=click.IntRange(min=1),
    default=3,
    show_default=True,
    metavar="N",
    help="Refuse letters already replayed N times (ckb.replay.count).",
)
def dlq_replay(
    source: str,
    to_topic: str | None,
    reasons: tuple[str, ...],
    since: str | None,
    limit: int | None,
    dry_run: bool,
    config_path: Path | None,
    group: str | None,
    any_group: bool,
    allow_any_topic: bool,
    max_replays: int,
) -> None:
    """Re-produce dead letters to their original topic (key, value, headers; ckb.* stripped,
    ckb.replay.count added).

    Reads from the replay group's committed position up to the end offsets seen at start,
    and commits its progress only after Kafka acknowledged the replayed records. Letters of
    another group, for a topic no route consumes, or replayed --max-replays times already are
    refused: counted, not replayed, left in the dead-letter topic.
    """
    from rich.console import Console

    from bridge.replay import (
        ReplayError,
        ReplayOptions,
        Selection,
        default_group,
        render_refused,
        render_selected,
        render_summary,
        run_with_progress,
        since_option,
        trust_for,
    )

    if to_topic is not None and to_topic == source:
        raise click.BadParameter("must differ from --from", param_hint="'--to'")
    try:
        since_at = since_option(since)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="'--since'") from exc
    settings = settings_or_exit(config_path)
    trust = trust_for(settings, any_group, allow_any_topic, max_replays)
    selection = Selection(frozenset(reasons), since_at, to_topic, trust)
    options = ReplayOptions(source, group or default_group(source), selection, limit, dry_run)
    try:
        result = run_with_progress(settings.kafka, options)
    except ReplayError as exc:
        fail(str(exc))
    except Exception as exc:  # KafkaException on bad client properties, …
        fail(f"replay failed: {type(exc).__name__}: {exc}")
    console = Console()
    if dry_run:
        render_selected(result.selected, console)
        render_refused(result.refused, console)
    render_summary(result, options, console)
    if result.error is not None:
        fail(result.error)
    if result.interrupted:
        fail(
            f"interrupted; progress is committed under group {options.group!r}: run again to go on"
        )


main.add_command(stack)
main.add_command(demo)
