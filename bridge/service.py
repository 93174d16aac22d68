"""Wiring: build every part from the settings, run the loop, stop cleanly on a signal."""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

import redis
from confluent_kafka import Consumer, Producer

from bridge.celery_app import make_celery_app
from bridge.dead_letters import DeadLetterWriter
from bridge.dispatcher import Dispatcher
from bridge.events import Observer, Observers, Totals
from bridge.kafka_clients import consumer_config, producer_config
from bridge.loop import ConsumerLoop
from bridge.results import ResultWatcher
from bridge.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class Bridge:
    """A built bridge: the loop and the parts it needs, ready to :meth:`run`."""

    settings: Settings
    loop: ConsumerLoop
    watcher: ResultWatcher
    dispatcher: Dispatcher
    producer: Any
    totals: Totals
    closers: list[Callable[[], None]] = field(default_factory=list)

    def run(self) -> None:
        self.watcher.start()
        summary = SummaryLog(self, interval=30.0)
        summary.start()
        try:
            self.loop.run()
        finally:
            summary.stop()
            self.watcher.stop()
            self.dispatcher.close()
            for close in self.closers:
                close()

    def stop(self) -> None:
        self.loop.request_stop()


def build_bridge(settings: Settings, observers: list[Observer] | None = None) -> Bridge:
    app = make_celery_app(settings.celery)
    backend = settings.celery.result_backend

    def redis_client() -> redis.Redis:
        return redis.Redis.from_url(backend, socket_timeout=10, socket_connect_timeout=5)

    decoder = app.backend.decode
    watcher = ResultWatcher(
        redis_client,
        key_prefix=settings.results.key_prefix,
        reconcile_interval=settings.results.reconcile_interval,
        decoder=decoder,
    )
    producer = Producer(producer_config(settings.kafka))
    dead_letters = DeadLetterWriter(producer, settings.kafka.group_id)
    dispatcher = Dispatcher(app, batch_size=settings.kafka.poll_batch)
    totals = Totals()
    fan_out = Observers([totals, *(observers or [])])
    results_client = redis_client()
    loop = ConsumerLoop(
        settings,
        Consumer(consumer_config(settings.kafka)),
        dispatcher,
        watcher,
        results_client,
        dead_letters,
        fan_out,
        decoder,
    )
    return Bridge(settings, loop, watcher, dispatcher, producer, totals, [results_client.close])


def install_signal_handlers(bridge: Bridge) -> None:
    """First SIGTERM/SIGINT: graceful stop. A second one: stop waiting for tasks."""

    def handler(signum: int, _frame: FrameType | None) -> None:
        if bridge.loop.stopping:
            log.warning("second %s: not waiting for running tasks", signal.Signals(signum).name)
            bridge.loop.hurry = True
            return
        log.info("%s received: stopping", signal.Signals(signum).name)
        bridge.stop()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


class SummaryLog:
    """One INFO line every ``interval`` seconds: rates, in flight, committed."""

    def __init__(self, bridge: Bridge, interval: float) -> None:
        self._bridge = bridge
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ckb-summary", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        totals = self._bridge.totals
        last, last_at = totals.consumed, time.monotonic()
        while not self._stop.wait(self._interval):
            now = time.monotonic()
            rate = (totals.consumed - last) / max(now - last_at, 1e-9)
            last, last_at = totals.consumed, now
            log.info(
                "%.0f records/s; consumed %d, in flight %d, succeeded %d, dead-lettered %d",
                rate,
                totals.consumed,
                len(self._bridge.loop.jobs),
                totals.outcomes["success"],
                totals.dead_lettered,
            )
