"""``ckb stack`` and ``ckb demo``: the local Kafka + Redis (+ RabbitMQ, Flower) and the quick
start on it. Heavy imports stay inside the commands, so ``ckb --help`` stays quick."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from bridge.cli_exit import EXIT_RUNTIME, fail


@click.group()
def stack() -> None:
    """A local Kafka (KRaft) + Redis (+ Flower) for trying things out; no Docker needed."""


state_dir_option = click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where data, logs and pid files live (default $CKB_STATE_DIR or ~/.local/state/ckb).",
)


flower_option = click.option("--flower", is_flag=True, help="Also start Flower on 127.0.0.1.")
flower_port_option = click.option("--flower-port", type=int, help="Default 5555; implies --flower.")
broker_option = click.option(
    "--broker",
    type=click.Choice(["redis", "rabbitmq", "sentinel"]),
    default="redis",
    show_default=True,
    help="The Celery broker: Redis (database 0), a local RabbitMQ, or Redis behind a local "
    "Sentinel set (a replica, three sentinels; results through it too: sentinel://).",
)
secure_option = click.option(
    "--secure",
    is_flag=True,
    help="Kafka on SASL_SSL with ACLs, Redis on TLS with ACL users; a mode of the state dir.",
)
backend_option = click.option(
    "--backend",
    type=click.Choice(["redis", "postgres", "rpc"]),
    default="redis",
    show_default=True,
    help="The Celery result backend: Redis (database 1), a local PostgreSQL (db+postgresql), or "
    "rpc:// (replies over RabbitMQ, nothing more to start: needs --broker rabbitmq).",
)
postgres_port_option = click.option(
    "--postgres-port",
    type=int,
    help="Port of PostgreSQL (default 5432); implies --backend postgres.",
)
rabbitmq_port_option = click.option(
    "--rabbitmq-port",
    type=int,
    help="AMQP port of RabbitMQ (default 5672); implies --broker rabbitmq.",
)


def _postgres_port(backend: str, port: int | None) -> int | None:
    from bridge.stack.postgres import DEFAULT_POSTGRES_PORT

    if port is None and backend == "postgres":
        return DEFAULT_POSTGRES_PORT
    return port


def _celery(info: Any) -> str:
    """The bridge's ``celery`` section for the stack ``info`` describes, as YAML."""
    import yaml

    section = {"broker_url": info.broker_url, "result_backend": info.result_backend}
    return yaml.safe_dump({"celery": {**section, "options": info.celery_options}}, sort_keys=False)


def _rabbitmq_port(broker: str, port: int | None) -> int | None:
    from bridge.stack import DEFAULT_RABBITMQ_PORT

    if port is not None:
        return port
    return DEFAULT_RABBITMQ_PORT if broker == "rabbitmq" else None


def _rpc_over_rabbitmq(backend: str, broker: str, rabbitmq_port: int | None) -> None:
    if backend == "rpc" and _rabbitmq_port(broker, rabbitmq_port) is None:
        fail("--backend rpc sends the results through RabbitMQ: add --broker rabbitmq")


@stack.command("up")
@click.option("--kafka-port", type=int, default=9092, show_default=True)
@click.option("--redis-port", type=int, default=6379, show_default=True)
@broker_option
@rabbitmq_port_option
@backend_option
@postgres_port_option
@flower_option
@flower_port_option
@state_dir_option
@secure_option
def stack_up(
    kafka_port: int,
    redis_port: int,
    broker: str,
    rabbitmq_port: int | None,
    backend: str,
    postgres_port: int | None,
    flower: bool,
    flower_port: int | None,
    state_dir: Path | None,
    secure: bool,
) -> None:
    """Start Kafka and Redis (and RabbitMQ, Flower) in the background (idempotent)."""
    from bridge.stack import LocalStack, StackError, flower_port_for

    _rpc_over_rabbitmq(backend, broker, rabbitmq_port)
    local = LocalStack(
        state_dir,
        kafka_port=kafka_port,
        redis_port=redis_port,
        flower_port=flower_port_for(flower, flower_port),
        rabbitmq_port=_rabbitmq_port(broker, rabbitmq_port),
        secure=secure,
        postgres_port=_postgres_port(backend, postgres_port),
        sentinel=broker == "sentinel",
    )
    try:
        info = local.up(progress=lambda line: click.echo(line, err=True))
    except StackError as exc:
        fail(str(exc))
    click.echo(f"kafka: {info.kafka_bootstrap}\nredis: {info.redis_url}")
    if info.rabbitmq_url is not None:
        click.echo(f"rabbitmq: {info.rabbitmq_url}")
    if backend == "rpc":
        click.echo("result backend: rpc:// (celery.result_backend on the bridge and the workers)")
    if info.postgres_url is not None:
        click.echo(f"postgres: {info.postgres_url} (result backend {info.result_backend})")
    if info.flower_url is not None:
        click.echo(f"flower: {info.flower_url}")
    if info.secure is not None:
        click.echo(f"\nclient settings (secured stack):\n{info.secure.summary()}", nl=False)
    if info.sentinel is not None:
        click.echo(
            "\nclient settings (the workers take the same: CKB_CELERY__BROKER_URL, "
            f"CKB_CELERY__RESULT_BACKEND, CKB_CELERY__OPTIONS as JSON):\n{_celery(info)}"
        )


@stack.command("down")
@state_dir_option
def stack_down(state_dir: Path | None) -> None:
    """Stop the local Kafka, Redis, RabbitMQ and Flower."""
    from bridge.stack import LocalStack, StackError

    try:
        LocalStack(state_dir).down()
    except StackError as exc:
        fail(str(exc))
    click.echo("stopped")


@stack.command("status")
@state_dir_option
@click.option("--json", "as_json", is_flag=True)
def stack_status(state_dir: Path | None, as_json: bool) -> None:
    """Whether the local Kafka, Redis (and RabbitMQ, Flower) run, and where."""
    from bridge.stack import LocalStack

    report: dict[str, Any] = LocalStack(state_dir).status()
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    for name in ("kafka", "redis", "sentinel", "rabbitmq", "postgres", "flower"):
        part = report[name]
        if name in ("sentinel", "rabbitmq", "postgres", "flower") and not part["url"]:
            continue
        where = part.get("bootstrap") or part.get("url")
        state = "running" if part["running"] else "stopped"
        click.echo(f"{name:8} {state:8} {where}")
    if not (report["kafka"]["running"] and report["redis"]["running"]):
        sys.exit(EXIT_RUNTIME)


@click.command()
@click.option("--records", type=int, default=2000, show_default=True)
@click.option("--partitions", type=int, default=6, show_default=True)
@click.option("--kafka-port", type=int, default=9092, show_default=True)
@click.option("--redis-port", type=int, default=6379, show_default=True)
@state_dir_option
@click.option("--keep-stack", is_flag=True, help="Leave Kafka and Redis running afterwards.")
@broker_option
@rabbitmq_port_option
@backend_option
@postgres_port_option
@flower_option
@flower_port_option
@secure_option
def demo(
    records: int,
    partitions: int,
    kafka_port: int,
    redis_port: int,
    state_dir: Path | None,
    keep_stack: bool,
    broker: str,
    rabbitmq_port: int | None,
    backend: str,
    postgres_port: int | None,
    flower: bool,
    flower_port: int | None,
    secure: bool,
) -> None:
    """Local Kafka + Redis + worker + bridge + sample traffic, with live progress."""
    from bridge.demo import DemoError, run_demo
    from bridge.stack import flower_port_for

    _rpc_over_rabbitmq(backend, broker, rabbitmq_port)
    try:
        run_demo(
            records=records,
            partitions=partitions,
            kafka_port=kafka_port,
            redis_port=redis_port,
            state_dir=state_dir,
            keep_stack=keep_stack,
            flower_port=flower_port_for(flower, flower_port),
            rabbitmq_port=_rabbitmq_port(broker, rabbitmq_port),
            secure=secure,
            postgres_port=_postgres_port(backend, postgres_port),
            sentinel=broker == "sentinel",
            rpc_results=backend == "rpc",
        )
    except DemoError as exc:
        fail(str(exc))
