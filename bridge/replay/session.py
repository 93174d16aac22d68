"""One replay run: its Kafka clients and partition plan, and a clean end on SIGINT/SIGTERM."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from confluent_kafka import KafkaException

from bridge.access_errors import KafkaClient, RefusalEvents, refusal
from bridge.kafka_clients import quiet_kafka_logger
from bridge.replay.clients import (
    replay_admin_config,
    replay_consumer_config,
    replay_producer_config,
)
from bridge.replay.commits import GroupOffsets
from bridge.replay.engine import Replayer
from bridge.replay.options import ProgressCallback, ReplayError, ReplayOptions, ReplayResult
from bridge.replay.plan import plan_topic
from bridge.settings import KafkaSettings


@contextmanager
def stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """SIGINT/SIGTERM end the replay cleanly: flush, commit, summarise."""

    def handler(_signum: int, _frame: Any) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


@contextmanager
def replay_session(kafka: KafkaSettings, options: ReplayOptions) -> Iterator[Replayer]:
    """Clients and the partition plan for one replay; raises :class:`ReplayError` when the
    dead-letter topic cannot be read. The consumer is closed on exit (the producer was
    flushed by :meth:`Replayer.run`)."""
    from confluent_kafka import Consumer, Producer
    from confluent_kafka.admin import AdminClient

    logger: dict[str, Any] = {"logger": quiet_kafka_logger("replay")}
    config = replay_consumer_config(kafka, options.group)
    events = RefusalEvents()  # why a request timed out: a refused password or certificate
    consumer = Consumer({**config, **logger, "error_cb": events})
    client = KafkaClient.of(config)
    try:
        try:
            plans = plan_topic(consumer, options.source)
        except KafkaException as exc:
            consumer.poll(0)  # serves the error events
            problem = refusal(exc, events, client, options.group)
            raise ReplayError(
                str(problem)
                if problem is not None
                else f"cannot read {options.source!r} from Kafka at {kafka.bootstrap_servers}: "
                f"{exc}"
            ) from exc
        if options.dry_run:
            yield Replayer(consumer, None, options, plans, None)
            return
        producer = Producer({**replay_producer_config(kafka), **logger})
        admin = AdminClient({**replay_admin_config(kafka), **logger})
        replayer = Replayer(consumer, producer, options, plans, GroupOffsets(admin, options.group))
        replayer.client = client
        yield replayer
    finally:
        consumer.close()


def replay(
    kafka: KafkaSettings, options: ReplayOptions, progress: ProgressCallback | None = None
) -> ReplayResult:
    """Run one replay; SIGINT/SIGTERM end it cleanly (flush, commit, summary)."""
    with replay_session(kafka, options) as replayer, stop_on_signals(replayer.stop):
        return replayer.run(progress or (lambda _examined, _chosen, _total: None))
