"""A record's W3C trace context reaches the task; a record without one gets one."""

from __future__ import annotations

import json
from pathlib import Path

from bridge.stack import StackInfo
from tests.integration.harness import SHARED_QUEUE, Executions, Kafka, Worker, run_bridge_to_end

TRACEPARENT = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def test_trace_context_is_propagated_or_created(
    stack: StackInfo, kafka: Kafka, executions: Executions, shared_worker: Worker, work_dir: Path
) -> None:
    topic = kafka.create_topic(1, "trace")
    traced = [("traceparent", TRACEPARENT), ("tracestate", b"vendor=abc")]
    kafka.produce(topic, [json.dumps({"n": 0}).encode()], headers=traced)
    kafka.produce(topic, [json.dumps({"n": 1}).encode()])
    route = {"topic": topic, "task": "it.record", "queue": SHARED_QUEUE}
    run_bridge_to_end(stack, kafka, work_dir, [route], partitions=1)

    runs = {run["payload"]["n"]: run for run in executions.of(topic)}
    assert runs[0]["trace"] == {
        "traceparent": TRACEPARENT.decode(),
        "tracestate": "vendor=abc",
        "ckb_correlation_id": "0af7651916cd43dd8448eb211c80319c",
    }
    trace_id = runs[1]["task_id"].replace("-", "")
    assert runs[1]["trace"] == {
        "traceparent": f"00-{trace_id}-{trace_id[16:]}-00",
        "tracestate": None,
        "ckb_correlation_id": trace_id,
    }
