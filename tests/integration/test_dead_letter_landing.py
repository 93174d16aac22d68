"""Dead letters that always land (issue 10): a letter too large for its topic is written
without its value; a topic that refuses every write holds its record, shows in ``/readyz``
and the metrics, and does not hold up the shutdown."""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from bench.common import create_topic
from bridge.stack import StackInfo
from tests.figures import figure
from tests.integration.harness import (
    SHARED_QUEUE,
    Executions,
    Kafka,
    Worker,
    bridge_config,
    free_port,
    run_bridge_to_end,
    start_bridge,
    unique,
    wait_for,
)

#: the dead-letter topic's limit: a 20,000-byte random value cannot fit, even compressed
DLQ_MAX_MESSAGE_BYTES = 4000
BIG = 20_000


def test_a_dead_letter_too_large_for_its_topic_lands_without_its_value(
    stack: StackInfo,
    kafka: Kafka,
    executions: Executions,
    shared_worker: Worker,
    work_dir: Path,
) -> None:
    topic = kafka.create_topic(2, "dlq-large")
    dlq = f"{topic}-small-dlq"
    admin = AdminClient({"bootstrap.servers": stack.kafka_bootstrap})
    limit = {"max.message.bytes": str(DLQ_MAX_MESSAGE_BYTES)}
    admin.create_topics([NewTopic(dlq, 1, 1, config=limit)])[dlq].result(30)
    # per partition: good records around the bad ones, so the commit point must pass them
    values: list[bytes] = []
    keys: list[bytes] = []
    for i in range(40):
        if i in (10, 11):  # two records no letter of which fits: invalid UTF-8, incompressible
            values.append(b"\xff" + os.urandom(BIG - 1))
        elif i % 7 == 3:  # small undecodable records, written in the same batches as the big
            values.append(b"not json %d" % i)
        else:
            values.append(json.dumps({"n": i}).encode())
        keys.append(b"key-%d" % i)
    headers = [("trace", b"t-1")]
    kafka.produce(topic, values, keys=keys, partition_of=lambda i: i % 2, headers=headers)
    route = {"topic": topic, "task": "it.record", "queue": SHARED_QUEUE, "dlq_topic": dlq}

    bridge = run_bridge_to_end(stack, kafka, work_dir, [route], partitions=2, timeout=90)

    bad = [i for i, value in enumerate(values) if not value.startswith(b"{")]
    letters = {letter.key(): letter for letter in kafka.read_all(dlq, len(bad))}
    assert sorted(letters) == sorted(keys[i] for i in bad)
    for i in bad:
        letter = letters[keys[i]]
        headers_of = dict(letter.headers())
        assert headers_of["trace"] == b"t-1", "the record's headers are kept"
        assert headers_of["ckb.reason"] == b"decode_error"
        if len(values[i]) == BIG:
            assert letter.value() is None
            assert headers_of["ckb.value.dropped"] == str(BIG).encode()
        else:  # batched with a big one and refused with it: tried alone, kept whole
            assert letter.value() == values[i]
            assert "ckb.value.dropped" not in headers_of
    assert executions.count(topic) == len(values) - len(bad)
    assert "too large for" in bridge.log_tail(200_000)


def get(url: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url, timeout=2) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return 0, {}


def metric(base: str, name: str, **labels: str) -> float | None:
    try:
        with urllib.request.urlopen(f"{base}/metrics", timeout=2) as reply:
            text = reply.read().decode()
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None
    wanted = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    series = f"{name}{{{wanted}}} " if wanted else f"{name} "
    for line in text.splitlines():
        if line.startswith(series):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_a_refused_dead_letter_topic_holds_its_record_but_not_the_shutdown(
    stack: StackInfo, kafka: Kafka, shared_worker: Worker, work_dir: Path
) -> None:
    # a legal 246-character topic: its default dead-letter topic <topic>.dlq has 250
    # characters, a name Kafka refuses (TOPIC_EXCEPTION) for every write
    name = unique("dlq-refused")
    topic = name + "x" * (246 - len(name))
    dlq = f"{topic}.dlq"
    create_topic(stack.kafka_bootstrap, topic, 1)
    kafka.produce(topic, [b'{"n": 0}', b"not json", b'{"n": 2}'])
    group = unique("g")
    port = free_port()
    route = {"topic": topic, "task": "it.record", "queue": SHARED_QUEUE}
    config = bridge_config(
        stack,
        group,
        [route],
        metrics={"enabled": True, "host": "127.0.0.1", "port": port},
        limits={"shutdown_grace": 30},
    )
    bridge = start_bridge(config, work_dir)
    base = f"http://127.0.0.1:{port}"
    try:

        def refused_shown() -> bool:
            status, body = get(f"{base}/readyz")
            return status == 503 and any(dlq in reason for reason in body.get("reasons", []))

        wait_for(refused_shown, 60, "/readyz to name the refusing dead-letter topic")
        pending = metric(base, "ckb_dlq_pending_records", dlq_topic=dlq, state="refused")
        assert pending == 1
        # the good record after it ran; the commit stops at the record whose letter is refused
        wait_for(lambda: kafka.committed(group, topic, 1)[0] == 1, 60, "offset 1 committed")
    finally:
        began = time.monotonic()
        code = bridge.terminate()
        took = time.monotonic() - began
    assert code == 0, bridge.log_tail()
    figure(f"shutdown with a dead letter its topic refuses: {took:.1f}s (shutdown_grace 30 s)")
    assert took < 15, f"shutdown took {took:.1f}s (a letter that cannot land?): {bridge.log_tail()}"
    assert kafka.committed(group, topic, 1)[0] == 1, "the refused record is not committed"
    log = bridge.log_tail(200_000)
    assert f"cannot write dead letters to {dlq} (TOPIC_EXCEPTION" in log


def test_a_revoke_does_not_wait_for_dead_letters_that_cannot_land(
    stack: StackInfo, kafka: Kafka, shared_worker: Worker, work_dir: Path
) -> None:
    name = unique("dlq-revoke")
    topic = name + "x" * (246 - len(name))  # its default dead-letter topic is refused
    create_topic(stack.kafka_bootstrap, topic, 2)
    kafka.produce(topic, [b"not json", b"not json"], partition_of=lambda i: i)
    group = unique("g")
    route = {"topic": topic, "task": "it.record", "queue": SHARED_QUEUE}
    port = free_port()
    limits = {"revoke_grace": 20}
    first = start_bridge(
        bridge_config(
            stack,
            group,
            [route],
            limits=limits,
            metrics={"enabled": True, "host": "127.0.0.1", "port": port},
        ),
        work_dir,
        "first",
    )
    second = None
    try:
        wait_for(
            lambda: (
                metric(
                    f"http://127.0.0.1:{port}",
                    "ckb_dlq_pending_records",
                    dlq_topic=f"{topic}.dlq",
                    state="refused",
                )
                == 2
            ),
            60,
            "both dead letters refused",
        )
        second = start_bridge(
            bridge_config(stack, group, [route], limits=limits), work_dir, "second"
        )
        wait_for(lambda: "revoked " in first.log_tail(200_000), 60, "the first bridge to revoke")
        line = next(x for x in first.log_tail(200_000).splitlines() if "revoked " in x)
        waited = float(line.split("(waited ")[1].split("s")[0])
        figure(f"revoke with dead letters their topic refuses: waited {waited:.1f}s (grace 20 s)")
        assert waited < 5, line
    finally:
        for bridge in (second, first):
            if bridge is not None:
                assert bridge.terminate() == 0, bridge.log_tail()
