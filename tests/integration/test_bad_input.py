"""Bad input, tried as a new user would: each lands in the DLQ saying what was wrong."""

from __future__ import annotations

import json
from pathlib import Path

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from bridge.stack import StackInfo
from tests.integration.harness import (
    SHARED_QUEUE,
    Executions,
    Kafka,
    Worker,
    bridge_config,
    start_bridge,
    unique,
    wait_for,
)

BIG_LIMIT = str(8 * 1024 * 1024)


def create_big_topics(stack: StackInfo, *names: str) -> None:
    """Topics (and their DLQs) that accept records of several MB, as an operator sets them."""
    admin = AdminClient({"bootstrap.servers": stack.kafka_bootstrap})
    topics = [NewTopic(n, 1, 1, config={"max.message.bytes": BIG_LIMIT}) for n in names]
    for future in admin.create_topics(topics).values():
        future.result(30)


def test_each_kind_of_bad_record_is_dead_lettered_and_the_partition_flows(
    stack: StackInfo, kafka: Kafka, executions: Executions, shared_worker: Worker, work_dir: Path
) -> None:
    json_topic, text_topic = unique("bad-json"), unique("bad-text")
    create_big_topics(stack, json_topic, f"{json_topic}.dlq", text_topic, f"{text_topic}.dlq")
    five_mb = json.dumps({"payload": "x" * (5 * 1024 * 1024)}).encode()
    json_records: list[tuple[bytes | None, bytes | None]] = [
        (b"k1", b"this is not json"),
        (b"k2", b"[1, 2, 3]"),  # JSON, but kwargs needs an object
        (b"k3", b""),  # empty value
        (b"k4", None),  # tombstone
        (b"k5", five_mb),
        (None, json.dumps({"payload": {"n": "null-key"}}).encode()),  # fine: runs
        (b"k7", json.dumps({"payload": {"n": "after"}}).encode()),  # fine: runs
    ]
    producer = Producer(
        {"bootstrap.servers": stack.kafka_bootstrap, "message.max.bytes": int(BIG_LIMIT)}
    )
    for key, value in json_records:
        producer.produce(json_topic, value=value, key=key)
    producer.produce(text_topic, value=b"caf\xe9 latin-1, not UTF-8")
    producer.produce(text_topic, value="café".encode())
    assert producer.flush(30) == 0

    routes = [
        {"topic": json_topic, "task": "it.record", "queue": SHARED_QUEUE, "call": "kwargs"},
        {"topic": text_topic, "task": "it.record", "queue": SHARED_QUEUE, "payload": "text"},
    ]
    bridge = start_bridge(bridge_config(stack, unique("g-bad"), routes), work_dir)
    group = bridge.config["kafka"]["group_id"]
    try:
        for topic in (json_topic, text_topic):
            wait_for(
                lambda t=topic: kafka.caught_up(group, t, 1),  # type: ignore[misc]
                90,
                f"{topic} to be committed to its end",
            )
        assert bridge.alive(), bridge.log_tail()
    finally:
        exit_code = bridge.terminate()
    assert exit_code == 0, bridge.log_tail()

    dead = kafka.read_all(f"{json_topic}.dlq", 5)
    messages = {m.key(): dict(m.headers())["ckb.error.message"].decode() for m in dead}
    assert {dict(m.headers())["ckb.reason"] for m in dead} == {b"decode_error"}
    assert "not valid JSON" in messages[b"k1"]
    assert "needs a JSON object, got list" in messages[b"k2"]
    assert "not valid JSON" in messages[b"k3"]
    assert "no value (null)" in messages[b"k4"]
    assert "over the route's max_payload_bytes" in messages[b"k5"]
    big = next(m for m in dead if m.key() == b"k5")
    assert big.value() == five_mb, "the dead letter keeps the whole value"
    assert "x" * 100 not in " ".join(messages.values()), "errors never quote the payload"

    ran = {json.dumps(r["payload"], sort_keys=True) for r in executions.of(json_topic)}
    assert ran == {json.dumps({"n": "null-key"}), json.dumps({"n": "after"})}

    text_dead = kafka.read_all(f"{text_topic}.dlq", 1)
    assert len(text_dead) == 1
    assert "not valid UTF-8" in dict(text_dead[0].headers())["ckb.error.message"].decode()
    assert [r["payload"] for r in executions.of(text_topic)] == ["café"]
