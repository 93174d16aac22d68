"""CPU per record of the path tracing touches, with tracing off or on (issue 13).

    python -m bench.tracing_overhead [--tracing] [--records 20000] [--rounds 7]

What the loop does per record there, in process: the observer fan-out (``on_consumed``,
``on_dispatched``, ``on_task_finished``, with the totals and Prometheus observers a bridge has)
and ``Intake.request_for`` (the task message, whose trace headers are where the publish span
starts). No Kafka or Redis: the cost of the spans alone. With ``--tracing``: the bridge's spans
(``bridge.otel``) exported by OTLP/HTTP as the ``OTEL_*`` environment says; without an
``OTEL_EXPORTER_OTLP_ENDPOINT``, to a receiver started here (the tests' one, in its own
process, so its CPU is not counted). Process CPU time (every thread: the export included).

"Before and after" a change: run this file with ``PYTHONPATH`` set to a copy of each
version's ``bridge`` (``git archive <rev> bridge | tar -x -C DIR``;
``PYTHONPATH=DIR python bench/tracing_overhead.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from bridge.core.jobs import Job
from bridge.events import Observer, Observers, Totals
from bridge.intake import Intake
from bridge.metrics import PrometheusObserver
from bridge.records import Record
from bridge.routing import Router
from bridge.settings import Settings

TRACEPARENT = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
RECEIVER = (
    "import time\n"
    "from tests.integration.otlp_receiver import OtlpReceiver\n"
    "print(OtlpReceiver().start().endpoint, flush=True)\n"
    "time.sleep(3600)\n"
)


def measure(
    intake: Intake, fan_out: Observers, records: int, first: int, then: Callable[[], Any]
) -> float:
    """CPU µs per record over ``records`` records (every other one with a traceparent),
    ``then`` (the export of their spans) included."""
    value = json.dumps({"order": 1, "items": [1, 2, 3], "customer": "c-1"}).encode()
    jobs = []
    for offset in range(first, first + records):
        headers = (("traceparent", TRACEPARENT),) if offset % 2 else ()
        job = intake.read(Record("orders", 0, offset, b"k", value, headers, 1), 1)
        assert isinstance(job, Job)
        jobs.append(job)
    began = time.process_time()
    for job in jobs:
        record = job.item.record
        fan_out.on_consumed(record)
        Intake.request_for(job)
        fan_out.on_dispatched(record, "tasks.process", False)
        fan_out.on_task_finished(record, "tasks.process", "success", 0.01)
    then()
    return (time.process_time() - began) / records * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--tracing", action="store_true")
    options = parser.parse_args()
    extra: dict[str, Any] = {"tracing": {"enabled": True}} if options.tracing else {}
    settings = Settings(routes=[{"topic": "orders", "task": "tasks.process"}], **extra)
    observers: list[Observer] = [Totals(), PrometheusObserver()]
    receiver = None
    flush: Callable[[], Any] = lambda: None  # noqa: E731
    if options.tracing:
        # room for a round's spans: none dropped, every one exported and counted
        os.environ.setdefault("OTEL_BSP_MAX_QUEUE_SIZE", str(2 * options.records))
        if not os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
            receiver = subprocess.Popen(
                [sys.executable, "-c", RECEIVER], stdout=subprocess.PIPE, text=True
            )
            assert receiver.stdout is not None
            os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = receiver.stdout.readline().strip()
        from bridge.otel import start_tracing

        tracing = start_tracing(settings)
        observers.append(tracing.observer)
        flush = tracing.flush  # the export of a round's spans counts too
    fan_out = Observers(observers)
    intake = Intake(settings, Router(settings.routes))
    results = []
    try:
        for round_ in range(options.rounds):
            first = round_ * options.records
            results.append(measure(intake, fan_out, options.records, first, flush))
        if options.tracing:
            tracing.shutdown()
    finally:
        if receiver is not None:
            receiver.kill()
            receiver.wait()
    print(
        f"tracing {'on' if options.tracing else 'off'}: CPU per record "
        f"{statistics.median(results):.2f} µs (median of {options.rounds} rounds of "
        f"{options.records}; min {min(results):.2f})"
    )


if __name__ == "__main__":
    main()
