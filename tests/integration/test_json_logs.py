"""With ``logging.json`` every line the bridge writes is JSON, librdkafka's own lines too."""

from __future__ import annotations

import json
from pathlib import Path

from bridge.stack import StackInfo
from tests.integration.harness import SHARED_QUEUE, Kafka, Worker, run_bridge_to_end


def test_every_log_line_is_json_including_librdkafka_ones(
    stack: StackInfo, kafka: Kafka, shared_worker: Worker, work_dir: Path
) -> None:
    topic = kafka.create_topic(2, "json-logs")
    kafka.produce(
        topic, [json.dumps({"n": n}).encode() for n in range(20)], partition_of=lambda i: i % 2
    )
    route = {"topic": topic, "task": "it.record", "queue": SHARED_QUEUE}
    # bootstrap addresses that refuse connections: librdkafka logs a failure (level 3). Each
    # client tries one bootstrap address at a time, picked at random, so with one dead address
    # a quick run may never try it (seen in CI); with eight, every client (consumer, dead-letter
    # producer and admin, lag monitor) would have to pick the live one first: (1/9)^4
    dead = [f"127.0.0.1:{port}" for port in range(1, 9)]
    bootstrap = ",".join([*dead, stack.kafka_bootstrap])
    bridge = run_bridge_to_end(
        stack,
        kafka,
        work_dir,
        [route],
        partitions=2,
        settings={
            "kafka": {"bootstrap_servers": bootstrap},
            "logging": {"json": True},
            # the lag monitor and the HTTP endpoint too: every client and thread of `ckb run`
            "metrics": {"enabled": True, "host": "127.0.0.1", "port": 0},
        },
    )
    lines = [line for line in bridge.log_path.read_text().splitlines() if line.strip()]
    entries = []
    for line in lines:
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:
            raise AssertionError(f"not a JSON log line: {line!r}") from None
    loggers = {entry["logger"] for entry in entries}
    assert "bridge.librdkafka" in loggers, f"no librdkafka line came through logging: {loggers}"
    assert any(any(a in entry["message"] for a in dead) for entry in entries)
