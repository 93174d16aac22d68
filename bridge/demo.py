"""``ckb demo``: the whole path on this machine, with live progress.

Starts (or reuses) the local stack, a Celery worker with the example tasks, a bridge in this
process, and produces sample orders (a few malformed on purpose, to show the dead-letter
topic). Ctrl-C stops everything it started. With Flower (``--flower``) the worker sends task
events, and the stack stays up afterwards so the tasks can be looked at; ``ckb stack down``.
"""

from __future__ import annotations

import gc
import json
import os
import random
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from bridge.core.vocabulary import Outcome
from bridge.logging_setup import configure_logging
from bridge.service import Bridge, build_bridge
from bridge.settings import ConfigError, Settings
from bridge.stack import LocalStack, StackError, StackInfo
from bridge.stack.credentials import write_private
from bridge.stack.kafka_acls import ADMIN_USER, DLQ_PREFIX, SOURCE_PREFIX

DEMO_QUEUE = "ckb-demo"
MALFORMED_EVERY = 100


class DemoError(Exception):
    """The demo could not run; the message says why and what to do."""


@dataclass
class DemoRun:
    topic: str
    group: str
    records: int
    malformed: int
    config_path: Path
    dlq_topic: str
    #: how the demo itself creates the topic and produces (the admin on a secured stack)
    producer: dict[str, Any]


def sample_order(n: int, rng: random.Random) -> bytes:
    if n % MALFORMED_EVERY == MALFORMED_EVERY - 1:
        return b"{this is not json"  # lands in the DLQ with reason decode_error
    items = [
        {
            "sku": f"SKU-{rng.randint(1, 999):03d}",
            "qty": rng.randint(1, 5),
            "price": rng.randint(1, 99),
        }
        for _ in range(rng.randint(1, 4))
    ]
    return json.dumps({"id": n, "customer": f"c{rng.randint(1, 50)}", "items": items}).encode()


def demo_settings(info: StackInfo, topic: str, group: str) -> Settings:
    route = {"topic": topic, "task": "tasks.examples.process_order", "queue": DEMO_QUEUE}
    config: dict[str, Any] = {
        "kafka": {"bootstrap_servers": info.kafka_bootstrap, "group_id": group},
        "celery": {
            "broker_url": info.broker_url,
            "result_backend": info.result_backend,
            "options": info.celery_options,  # a sentinel:// URL's master_name
        },
        "routes": [route],
        "results": {"reconcile_interval": 2.0},
        "metrics": {"enabled": False},
    }
    if info.secure is not None:  # the least-privilege users; dead letters where it may write
        secured = info.secure.bridge_settings()
        config["kafka"].update(secured["kafka"])
        config["celery"] = secured["celery"]
        route["dlq_topic"] = f"{DLQ_PREFIX}{topic}"
    return Settings.model_validate(config)


def producer_settings(info: StackInfo) -> dict[str, Any]:
    if info.secure is not None:
        return info.secure.kafka(ADMIN_USER)
    return {"bootstrap.servers": info.kafka_bootstrap}


def write_config(settings: Settings, state_dir: Path) -> Path:
    import yaml

    path = state_dir / "demo-bridge.yaml"
    dump = yaml.safe_dump(settings.model_dump(mode="json", by_alias=True), sort_keys=False)
    write_private(path, dump)  # passwords, on a secured stack
    return path


def worker_command(flower: bool) -> list[str]:
    """The demo worker; with Flower watching it sends task events (``-E``) from the start."""
    command = [sys.executable, "-m", "celery", "-A", "tasks", "worker", "-Q", DEMO_QUEUE,
               "-c", "4", "--loglevel", "WARNING", "-n", "ckb-demo@%h"]  # fmt: skip
    return [*command, "-E"] if flower else command


def start_worker(info: StackInfo, log_path: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "CKB_CELERY__BROKER_URL": info.broker_url,
        "CKB_CELERY__RESULT_BACKEND": info.result_backend,
        "CKB_CELERY__OPTIONS": json.dumps(info.celery_options),
    }
    if info.secure is not None:
        env.update(info.secure.worker_env())
    command = worker_command(flower=info.flower_url is not None)
    with log_path.open("ab") as log:
        return subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)


def create_topic(clients: dict[str, Any], topic: str, partitions: int) -> None:
    admin = AdminClient(clients)
    admin.create_topics([NewTopic(topic, partitions, 1)])[topic].result(30)


def produce(
    clients: dict[str, Any], topic: str, count: int, progress: Progress, task: object
) -> None:
    producer = Producer({**clients, "linger.ms": 10})
    rng = random.Random(42)
    for n in range(count):
        while True:
            try:
                producer.produce(topic, sample_order(n, rng), key=f"c{n % 50}".encode())
                break
            except BufferError:
                producer.poll(0.05)
        if n % 200 == 0:
            producer.poll(0)
            progress.update(task, completed=n)  # type: ignore[arg-type]
            time.sleep(0.02)  # a gentle stream rather than one burst
    producer.flush(30)
    progress.update(task, completed=count)  # type: ignore[arg-type]


def watch(bridge: Bridge, thread: threading.Thread, run: DemoRun, console: Console) -> None:
    totals = bridge.totals
    columns = (TextColumn("{task.description:<14}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())  # fmt: skip
    with Progress(*columns, console=console) as progress:
        produced = progress.add_task("produced", total=run.records)
        dispatched = progress.add_task("dispatched", total=run.records - run.malformed)
        succeeded = progress.add_task("succeeded", total=run.records - run.malformed)
        dead = progress.add_task("dead-lettered", total=run.malformed)
        committed = progress.add_task("committed", total=run.records)
        feeder = threading.Thread(
            target=produce,
            args=(
                run.producer,
                run.topic,
                run.records,
                progress,
                produced,
            ),
            daemon=True,
        )
        feeder.start()
        while True:
            progress.update(dispatched, completed=totals.dispatched)
            progress.update(succeeded, completed=totals.outcomes[Outcome.SUCCESS])
            progress.update(dead, completed=totals.dead_lettered)
            done = sum(totals.committed.values())
            progress.update(committed, completed=done)
            if done >= run.records and not feeder.is_alive():
                break
            if not thread.is_alive():
                raise DemoError("the bridge stopped unexpectedly; see the log lines above")
            time.sleep(0.2)


def summary(
    console: Console, run: DemoRun, bridge: Bridge, elapsed: float, flower_url: str | None
) -> None:
    totals = bridge.totals
    table = Table(title="demo summary", show_header=False)
    table.add_row("records produced", str(run.records))
    table.add_row("tasks succeeded", str(totals.outcomes[Outcome.SUCCESS]))
    table.add_row("dead-lettered (malformed on purpose)", str(totals.dead_lettered))
    table.add_row("committed offsets (sum)", str(sum(totals.committed.values())))
    table.add_row("time", f"{elapsed:.1f}s ({run.records / elapsed:.0f} records/s)")
    console.print(table)
    if flower_url is not None:
        console.print(
            f"Flower: [bold]{flower_url}/tasks[/] lists every task by its id; it keeps running "
            "with Kafka and Redis until [bold]ckb stack down[/]"
        )
    keep = "" if flower_url else " (run [bold]ckb demo --keep-stack[/] to keep Kafka and Redis up)"
    console.print(
        f"Where to look next{keep}:\n"
        f"  ckb status -c {run.config_path}\n      committed offset, end offset and lag\n"
        f"  ckb check-config -c {run.config_path}\n      the effective config\n"
        f"  dead letters: topic [bold]{run.dlq_topic}[/] (headers ckb.reason, ckb.error.*)\n"
        "  README.md: configuration, commit semantics, failure model, operations"
    )


def run_demo(
    records: int,
    partitions: int,
    kafka_port: int,
    redis_port: int,
    state_dir: Path | None,
    keep_stack: bool,
    flower_port: int | None = None,
    rabbitmq_port: int | None = None,
    secure: bool = False,
    postgres_port: int | None = None,
    sentinel: bool = False,
    rpc_results: bool = False,
) -> None:
    """``rpc_results``: Celery's ``rpc://`` result backend (with ``rabbitmq_port``)."""
    console = Console()
    configure_logging("WARNING")
    stack = LocalStack(
        state_dir,
        kafka_port,
        redis_port,
        flower_port,
        rabbitmq_port,
        secure,
        postgres_port,
        sentinel=sentinel,
    )
    was_running = stack.status()["kafka"]["running"]
    try:
        info = stack.up(progress=lambda line: console.print(f"[dim]{line}[/]"))
    except StackError as exc:
        raise DemoError(str(exc)) from exc
    info = replace(info, rpc_results=rpc_results)  # no server of its own: replies over RabbitMQ
    if info.flower_url is not None:
        keep_stack = True  # Flower is for looking at the tasks after the run
        console.print(
            f"Flower: [bold]{info.flower_url}[/] (task list: {info.flower_url}/tasks); "
            "it stays up after the demo, `ckb stack down` stops it"
        )
    stamp = time.strftime("%Y%m%d-%H%M%S")
    topic, group = f"demo-orders-{stamp}", f"ckb-demo-{stamp}"
    if info.secure is not None:
        topic = f"{SOURCE_PREFIX}orders-{stamp}"  # where the bridge user may read (kafka_acls)
    settings = demo_settings(info, topic, group)
    run = DemoRun(topic, group, records, records // MALFORMED_EVERY,
                  write_config(settings, info.state_dir),
                  settings.routes[0].dlq_for(topic), producer_settings(info))  # fmt: skip
    worker = start_worker(info, info.state_dir / "demo-worker.log")
    bridge: Bridge | None = None
    thread: threading.Thread | None = None
    try:
        create_topic(run.producer, topic, partitions)
        bridge = build_bridge(settings)
        thread = threading.Thread(target=bridge.run, name="ckb-bridge", daemon=True)
        thread.start()
        started = time.monotonic()
        console.print(f"bridge: topic [bold]{topic}[/] → tasks.examples.process_order "
                      f"(worker log: {info.state_dir / 'demo-worker.log'})")  # fmt: skip
        watch(bridge, thread, run, console)
        summary(console, run, bridge, time.monotonic() - started, info.flower_url)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted: stopping what the demo started[/]")
    except ConfigError as exc:  # e.g. --backend postgres without the ckb[postgres] extra
        raise DemoError(str(exc)) from None
    finally:
        if bridge is not None and thread is not None:
            bridge.stop()
            thread.join(60)
        worker.terminate()
        worker.wait(30)
        bridge = None
        gc.collect()  # closes the bridge's Kafka clients before their broker goes away
        if not (keep_stack or was_running):
            stack.down()
            console.print("[dim]local stack stopped (use --keep-stack to leave it running)[/]")
