"""Wiring: build every part from the settings, run the loop, stop cleanly on a signal."""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType
from typing import Any, Protocol

from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient

from bridge.access_errors import KafkaClient, RedisClient
from bridge.access_problems import AccessProblems, KafkaAccess, RedisAccess, RepeatedRefusals
from bridge.celery_app import make_celery_app
from bridge.core.vocabulary import Outcome
from bridge.dead_letters import DeadLetterWriter
from bridge.dispatcher import Dispatcher
from bridge.dlq_topics import DeadLetterTopics
from bridge.events import Observer, Observers, Totals
from bridge.http_server import OpsApp, OpsServer, Probes
from bridge.kafka_clients import (
    admin_config,
    connection_settings,
    consumer_config,
    producer_config,
)
from bridge.lag import LagMonitor
from bridge.loop import CommitReports, ConsumerLoop
from bridge.metrics import PrometheusObserver
from bridge.rate_limit import TokenBuckets
from bridge.redis_clients import check_sentinel_masters
from bridge.result_source import ResultSource, open_results
from bridge.routing import Router
from bridge.settings import Settings
from bridge.worker_probe import WorkerCheck

log = logging.getLogger(__name__)


class Service(Protocol):
    """A helper thread that runs alongside the loop (lag monitor, HTTP endpoint)."""

    def start(self) -> None: ...
    def stop(self) -> None: ...


@dataclass
class Bridge:
    """A built bridge: the loop and the parts it needs, ready to :meth:`run`."""

    settings: Settings
    loop: ConsumerLoop
    watcher: ResultSource
    dispatcher: Dispatcher
    producer: Any
    totals: Totals
    closers: list[Callable[[], None]] = field(default_factory=list)
    #: started after the result watcher, stopped (in reverse order) when the loop ends
    services: list[Service] = field(default_factory=list)

    def run(self) -> None:
        self.watcher.start()
        summary = SummaryLog(self, interval=30.0)
        summary.start()
        try:
            for service in self.services:
                service.start()
            self.loop.run()
        finally:
            for service in reversed(self.services):
                service.stop()
            summary.stop()
            self.watcher.stop()
            self.dispatcher.close()
            for close in self.closers:
                close()

    def stop(self) -> None:
        self.loop.request_stop()


def build_bridge(settings: Settings, observers: list[Observer] | None = None) -> Bridge:
    app = make_celery_app(settings.celery)
    check_sentinel_masters(settings.celery)  # a master_name no sentinel knows: ConfigError
    # the result source, the ledger and the rate limiter's Redis, chosen from
    # celery.result_backend (raises ConfigError naming it)
    # a refused password, certificate or grant: one ERROR line with its fix, a /readyz reason
    access = AccessProblems(logging.getLogger("bridge.access"))
    results = open_results(settings, app, access)
    watcher = results.source
    if not results.markers:  # rpc://: a revoke or shutdown waits for every task in flight
        off = settings.results.model_copy(update={"dispatch_markers": False})
        settings = settings.model_copy(update={"results": off})
    # librdkafka's own lines (connection failures, coordinator changes) go through the bridge's
    # logging, JSON included, instead of raw "%3|…" lines on stderr; they are served inside
    # each client's poll(): the loop's consume(), the dead-letter writer's poll() (producer and
    # admin client) and the lag monitor's rounds
    kafka_log = logging.getLogger("bridge.librdkafka")
    RepeatedRefusals(access).install(kafka_log)  # said once by the bridge instead

    # a refused login or certificate reaches each client only through its error_cb
    own = connection_settings(settings.kafka.producer)  # else the consumer's reach it
    writer = KafkaClient.of(
        producer_config(settings.kafka), f"kafka.{'producer' if own else 'consumer'}"
    )
    writer_errors = KafkaAccess(writer, access, "kafka:dead-letters").on_error

    def dead_letter_producer() -> Producer:
        config = producer_config(settings.kafka)
        return Producer({**config, "logger": kafka_log, "error_cb": writer_errors})

    producer = dead_letter_producer()
    admin_settings: dict[str, Any] = {
        **admin_config(settings.kafka),
        "logger": kafka_log,
        "error_cb": writer_errors,
    }
    router = Router(settings.routes)
    dead_letters = DeadLetterWriter(
        producer,
        settings.kafka.group_id,
        topics=DeadLetterTopics(
            AdminClient(admin_settings), settings.dead_letters, KafkaClient.of(admin_settings)
        ),
        # a fatal error of the idempotent producer: a new one takes over its letters
        rebuild=dead_letter_producer,
        consumes=lambda topic: router.match(topic) is not None,
        client=writer,
    )
    broker = RedisClient.from_url("celery.broker_url", str(app.conf.broker_url))
    dispatcher = Dispatcher(
        app,
        settings.kafka.poll_batch,
        access=RedisAccess(broker, access, "redis:broker"),
        reply_to=results.reply_to,
    )
    totals = Totals()
    metrics = PrometheusObserver() if settings.metrics.enabled else None
    # fed by the loop's partition snapshots; feeds the lag gauge, /status and readiness
    lag = LagMonitor.for_settings(
        settings.kafka, kafka_log, metrics.set_lag if metrics else None, access
    )
    spans: list[Observer] = []
    closers: list[Callable[[], None]] = []
    if settings.tracing.enabled:  # the otel extra (checked by the settings): imported only now
        from bridge.otel import start_tracing

        tracing = start_tracing(settings)
        spans.append(tracing.observer)
        closers.append(tracing.shutdown)  # when the loop has stopped: spans flushed last
    fan_out = Observers([totals, lag, *([metrics] if metrics else []), *spans, *(observers or [])])
    commit_reports = CommitReports()  # filled inside consume(), drained by the loop
    backend = RedisClient.from_url("celery.result_backend", settings.celery.result_backend)
    rate_access = RedisAccess(backend, access, "redis:rate")
    reader = KafkaClient.of(consumer_config(settings.kafka))
    reader_errors = KafkaAccess(reader, access, "kafka:connection", settings.kafka.group_id)
    loop = ConsumerLoop(
        settings,
        Consumer(
            {
                **consumer_config(settings.kafka),
                "on_commit": commit_reports,
                "logger": kafka_log,
                "error_cb": reader_errors.on_error,
            }
        ),
        dispatcher,
        watcher,
        results.ledger,
        dead_letters,
        fan_out,
        commit_reports=commit_reports,
        access=access,
        # the routes' rate limits hold for the whole group: one bucket per route in Redis
        buckets=TokenBuckets(results.redis, settings.kafka.group_id, rate_access)
        if results.redis is not None and any(route.rate_limit for route in settings.routes)
        else None,
    )
    bridge = Bridge(
        settings, loop, watcher, dispatcher, producer, totals, [*results.closers, *closers]
    )
    bridge.services.extend(
        ops_services(settings, lag, metrics, loop, watcher, dead_letters, access)
    )
    # once, in the background: can the bridge see the outcomes of what it sends?
    bridge.services.append(WorkerCheck(settings, make_celery_app, loop.lost.hold_lost_tasks_of))
    return bridge


def ops_services(
    settings: Settings,
    lag: LagMonitor,
    metrics: PrometheusObserver | None,
    loop: ConsumerLoop,
    watcher: ResultSource,
    dead_letters: DeadLetterWriter | None = None,
    access: AccessProblems | None = None,
) -> list[Service]:
    """The lag monitor and the /healthz, /readyz, /status endpoint, whether or not metrics
    are enabled (the container health check and the probes call them); /metrics with them."""
    probes = Probes(
        last_iteration=lambda: loop.last_iteration,
        stopping=lambda: loop.stopping,
        redis_ok=lambda: watcher.healthy,
        kafka_ok=lag.reachable,
        dead_letters=lambda: dead_letters.problem if dead_letters else None,
        access=access.reasons if access is not None else list,
    )
    app = OpsApp(
        None if metrics is None else metrics.registry,
        probes,
        lambda: {"group": settings.kafka.group_id, **lag.status()},
    )
    return [lag, OpsServer(app, settings.metrics.host, settings.metrics.port)]


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
                "%.0f records/s; consumed %d, open %d, in flight %d, succeeded %d, "
                "dead-lettered %d, paused partitions %d",
                rate,
                totals.consumed,
                self._bridge.loop.engine.open_total,
                self._bridge.loop.engine.in_flight,
                totals.outcomes[Outcome.SUCCESS],
                totals.dead_lettered,
                self._bridge.loop.engine.paused_count,
            )
