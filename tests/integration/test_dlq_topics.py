"""A missing dead-letter topic is created by the bridge, with the configured layout."""

from __future__ import annotations

from pathlib import Path

from confluent_kafka.admin import AdminClient, ConfigResource  # type: ignore[attr-defined]

from bridge.stack import StackInfo
from tests.integration.harness import SHARED_QUEUE, Kafka, Worker, run_bridge_to_end

RETENTION_MS = "1234567890"


def test_the_bridge_creates_a_missing_dead_letter_topic_as_configured(
    stack: StackInfo, kafka: Kafka, shared_worker: Worker, work_dir: Path
) -> None:
    topic = kafka.create_topic(2, "dlq-create")
    dlq = f"{topic}.dead"  # not the <topic>.dlq default: the route's own name is honoured
    kafka.produce(topic, [b"not json", b'{"n": 1}'], keys=[b"bad", b"good"])
    route = {"topic": topic, "task": "it.record", "queue": SHARED_QUEUE, "dlq_topic": dlq}
    # 3 partitions and a retention the broker would not pick: proof the bridge made it
    # (the test broker auto-creates topics with 1 partition and its default retention)
    layout = {"partitions": 3, "topic_config": {"retention.ms": RETENTION_MS}}
    bridge = run_bridge_to_end(
        stack, kafka, work_dir, [route], partitions=2, timeout=90, settings={"dead_letters": layout}
    )

    admin = AdminClient({"bootstrap.servers": stack.kafka_bootstrap})
    assert len(admin.list_topics(dlq, timeout=10).topics[dlq].partitions) == 3
    resource = ConfigResource(ConfigResource.Type.TOPIC, dlq)
    configs = admin.describe_configs([resource])[resource].result(30)
    assert configs["retention.ms"].value == RETENTION_MS
    [letter] = kafka.read_all(dlq, 1)
    assert letter.key() == b"bad"
    assert dict(letter.headers())["ckb.reason"] == b"decode_error"
    assert f"created dead-letter topic {dlq}" in bridge.log_tail(100_000)
