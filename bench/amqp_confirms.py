"""Dispatch throughput to RabbitMQ with and without publisher confirms (issue 14).

    python -m bench.amqp_confirms [--tasks 10000] [--batch 500] [--rounds 2]

Starts a throw-away RabbitMQ (the local stack's, ``bridge.stack.rabbitmq``) and publishes the
same encoded task messages with the bridge's ``Dispatcher``: in batches confirmed once each
(the bridge's way), one message per confirm (what kombu's ``confirm_publish`` does), and
unconfirmed. No worker: the messages stay in their queue. Prints tasks/s per round.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import uuid
from pathlib import Path

from bridge.celery_app import make_celery_app
from bridge.dispatcher import Dispatcher, EncodedTask, TaskRequest
from bridge.settings import CelerySettings
from bridge.stack.paths import StatePaths
from bridge.stack.processes import free_port
from bridge.stack.rabbitmq import RabbitNode


def _tasks(dispatcher: Dispatcher, count: int, queue: str) -> list[EncodedTask]:
    headers = {"ckb_topic": "bench"}
    return [
        dispatcher.encode(
            TaskRequest(f"b-{i}", "bench.noop", [{"n": i, "pad": "x" * 99}], {}, queue, headers, "")
        )
        for i in range(count)
    ]


def measure(url: str, mode: str, count: int, batch: int) -> float:
    """Tasks per second publishing ``count`` tasks in ``mode``."""
    options = {"broker_transport_options": {"confirm_publish": mode != "unconfirmed"}}
    settings = CelerySettings(
        broker_url=url, result_backend="redis://127.0.0.1:1/1", options=options
    )
    dispatcher = Dispatcher(make_celery_app(settings), batch_size=batch)
    queue = f"bench-{uuid.uuid4().hex[:8]}"
    tasks = _tasks(dispatcher, count, queue)
    dispatcher.publish(tasks[:1])  # connect and declare the queue outside the clock
    step = 1 if mode == "per-message" else batch
    started = time.perf_counter()
    for i in range(0, count, step):
        dispatcher.publish(tasks[i : i + step])
    elapsed = time.perf_counter() - started
    dispatcher.close()
    return count / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ckb-bench-rabbitmq-") as state:
        node = RabbitNode(StatePaths(Path(state)), free_port(), free_port(), free_port())
        node.start(print)
        try:
            for round_ in range(1, args.rounds + 1):
                for mode in ("batch-confirmed", "per-message", "unconfirmed"):
                    rate = measure(node.url, mode, args.tasks, args.batch)
                    print(f"round {round_}: {mode:16} {rate:8.0f} tasks/s")
        finally:
            node.stop()


if __name__ == "__main__":
    main()
