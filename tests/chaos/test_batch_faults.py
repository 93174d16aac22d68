"""Batch tasks (``routes[].batch``) under the faults single tasks are tested with: a rolling
restart with SIGTERM and a Kafka broker restart.

A batch is one Celery task carrying consecutive records of one partition; the bridge commits
its records only once the batch task succeeded. The invariants are checked per *record* (the
kit reads each batch run as one run of each of its records): nothing lost, never committed
ahead of an unfinished record, duplicates within the bound, commits resuming after the fault.
"""

from __future__ import annotations

import time

import pytest

from bridge.stack import LocalStack
from tests.chaos.invariants import Bounds
from tests.chaos.kit import PROFILE, Profile, RunFactory, numbered
from tests.chaos.test_scenarios import consumer_failures, progress_points
from tests.integration.harness import wait_for

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(PROFILE.timeout)]

#: at most 10 records or 0.5 s of waiting per batch task
BATCH_ROUTE = {"task": "it.batch", "batch": {"max_records": 10, "max_wait": 0.5}}


def test_12_batches_through_a_rolling_restart_with_sigterm(
    run: RunFactory, profile: Profile
) -> None:
    partitions, instances = 6, 3
    planned = numbered(profile.records(900), partitions, seed=12, sleep_ms=(2, 10))
    restarts = instances * profile.rounds
    with run("12-batches-rolling-sigterm", planned, partitions, route=BATCH_ROUTE) as sc:
        sc.start(bridges=instances, rate=90)
        for point in progress_points(restarts, 0.1, 0.8):
            sc.wait_executed(point)
            oldest = sc.fleet.running()[0]
            assert sc.fleet.stop(oldest) == 0, oldest.log_tail()
            sc.fleet.start()
        sc.fault_over()
        # a leaving bridge hands its queued batches on: the next owner finds their markers,
        # the records' ones too, and forms an earlier owner's partial batches again exactly
        sc.finish(Bounds(duplicates=0, recovery=90))


def test_13_batches_through_a_kafka_restart(
    run: RunFactory, profile: Profile, local_stack: LocalStack
) -> None:
    partitions, window = 3, 20
    planned = numbered(profile.records(450), partitions, seed=13, sleep_ms=(10, 40))
    outages = []
    with run("13-batches-kafka-restart", planned, partitions, route=BATCH_ROUTE) as sc:
        sc.start(bridges=2)
        sc.producer_done()
        for point in progress_points(profile.rounds, 0.25, 0.6):
            sc.wait_executed(point)
            bridges = sc.fleet.running()
            before = consumer_failures(bridges)
            down = time.monotonic()
            try:
                local_stack.stop_kafka()
                wait_for(
                    lambda bridges=bridges, before=before: all(
                        now > then
                        for now, then in zip(consumer_failures(bridges), before, strict=True)
                    ),
                    60,
                    "every bridge's consumer to report the broker gone",
                )
                assert all(b.alive() for b in bridges), "a bridge died with Kafka"
            finally:
                local_stack.start_kafka()  # ALWAYS: the whole session shares this broker
            outages.append(round(time.monotonic() - down, 1))
            sc.fault_over()
        sc.note(f"Kafka away {outages}s")
        # a batch re-sent after a rebalance runs all its records again
        sc.finish(Bounds(duplicates=10 * window * partitions * profile.rounds, recovery=120))
