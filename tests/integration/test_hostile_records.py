"""Issue 10's acceptance: hostile records mid-stream on every partition of a real bridge.

The bridge never exits, every good record runs exactly once, every bad one is in the DLQ once
with its reason, and every offset is committed.
"""

from __future__ import annotations

import json
import os
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
from tests.integration.raw_producer import produce_with_raw_header

PARTITIONS = 3
MAX_PAYLOAD = 200_000
DLQ_MAX_MESSAGE = 250_000  # smaller than the source topic's 8 MB


def nested(depth: int, opening: bytes, closing: bytes) -> bytes:
    return b'{"payload": ' + opening * depth + b"1" + closing * depth + b"}"


#: key -> value (each a record no route can turn into a task call: ``call: kwargs``)
HOSTILE: dict[bytes, bytes | None] = {
    b"arrays-3000": b'{"payload": ' + b"[" * 3000 + b"]" * 3000 + b"}",
    b"objects-3000": nested(3000, b'{"a": ', b"}"),
    b"arrays-980": b'{"payload": ' + b"[" * 980 + b"]" * 980 + b"}",  # decodes; kombu can't
    b"digits-100000": b'{"payload": ' + b"7" * 100_000 + b"}",
    b"nan": b'{"payload": NaN}',
    b"invalid-utf8": b'{"payload": "\xc3\x28"}',
    b"lone-surrogate": b'{"payload": "\\udc00"}',
    b"null": b"null",
    b"empty": b"",
    b"list-for-kwargs": b'[{"payload": 1}]',
    b"nul-bytes": b'{"payload": "a\x00b"}',
    b"over-max-payload": b'{"payload": "' + b"x" * MAX_PAYLOAD + b'"}',
    # legal for the source topic, too large for its dead-letter topic (random: incompressible)
    b"too-large-for-dlq": os.urandom(300_000),
}
RAW_HEADER_KEY = b"header-name-not-utf8"


def test_hostile_records_mid_stream_never_stop_the_bridge(
    stack: StackInfo, kafka: Kafka, executions: Executions, shared_worker: Worker, work_dir: Path
) -> None:
    topic = unique("hostile")
    dlq = f"{topic}.dlq"
    admin = AdminClient({"bootstrap.servers": stack.kafka_bootstrap})
    created = admin.create_topics(
        [
            NewTopic(topic, PARTITIONS, 1, config={"max.message.bytes": str(8 * 2**20)}),
            NewTopic(dlq, 1, 1, config={"max.message.bytes": str(DLQ_MAX_MESSAGE)}),
        ]
    )
    for future in created.values():
        future.result(30)

    producer = Producer(
        {"bootstrap.servers": stack.kafka_bootstrap, "message.max.bytes": 8 * 2**20}
    )
    good: list[dict[str, int]] = []

    def produce_good(partition: int) -> None:
        payload = {"n": len(good)}
        good.append(payload)
        value = json.dumps({"payload": payload}).encode()
        producer.produce(topic, value=value, key=b"good", partition=partition)

    bad = list(HOSTILE.items())
    for index, (key, value) in enumerate(bad):
        partition = index % PARTITIONS
        produce_good(partition)
        producer.produce(topic, value=value, key=key, partition=partition)
    assert producer.flush(30) == 0
    for partition in range(PARTITIONS):  # a bad record in the middle of every partition
        produce_good(partition)
        produce_with_raw_header(
            stack.kafka_bootstrap, topic, partition, RAW_HEADER_KEY, b'{"payload": 1}', b"\xff\xfe"
        )
        produce_good(partition)
    assert producer.flush(30) == 0

    route = {
        "topic": topic,
        "task": "it.record",
        "queue": SHARED_QUEUE,
        "call": "kwargs",
        "max_payload_bytes": MAX_PAYLOAD,
    }
    bridge = start_bridge(bridge_config(stack, unique("g-hostile"), [route]), work_dir)
    group = bridge.config["kafka"]["group_id"]
    try:
        wait_for(
            lambda: kafka.caught_up(group, topic, PARTITIONS), 120, f"{topic} committed to its end"
        )
        assert bridge.alive(), bridge.log_tail()
    finally:
        exit_code = bridge.terminate()
    assert exit_code == 0, bridge.log_tail()

    expected_letters = len(HOSTILE) + PARTITIONS
    letters = kafka.read_all(dlq, expected_letters, timeout=60)
    keys = sorted(m.key() for m in letters)
    assert keys == sorted([*HOSTILE, *[RAW_HEADER_KEY] * PARTITIONS]), "each bad record once"
    headers = {m.key(): dict(m.headers() or []) for m in letters if m.key() != RAW_HEADER_KEY}
    assert {h["ckb.reason"] for h in headers.values()} == {b"decode_error"}
    message = {key: h["ckb.error.message"].decode() for key, h in headers.items()}
    assert "max_json_depth" in message[b"arrays-3000"]
    assert "max_json_depth" in message[b"objects-3000"]
    assert "max_json_depth" in message[b"arrays-980"]
    assert "too long" in message[b"digits-100000"]
    assert "NaN is not JSON" in message[b"nan"]
    assert "not valid UTF-8" in message[b"invalid-utf8"]
    assert "lone surrogate" in message[b"lone-surrogate"]
    assert "needs a JSON object" in message[b"null"]
    assert "not valid JSON" in message[b"empty"]
    assert "needs a JSON object, got list" in message[b"list-for-kwargs"]
    assert "not valid JSON" in message[b"nul-bytes"]
    assert "max_payload_bytes" in message[b"over-max-payload"]
    dropped = next(m for m in letters if m.key() == b"too-large-for-dlq")
    assert dropped.value() is None, "a letter too large for its topic is written without value"
    assert headers[b"too-large-for-dlq"]["ckb.value.dropped"] == b"300000"
    kept = next(m for m in letters if m.key() == b"over-max-payload")
    assert kept.value() == HOSTILE[b"over-max-payload"], "a letter that fits keeps its value"

    ran = sorted(r["payload"]["n"] for r in executions.of(topic))
    assert ran == sorted(p["n"] for p in good), "every good record ran exactly once"
