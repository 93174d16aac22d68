"""The core path on the secured stack (``ckb stack up --secure``) with the least-privilege users.

Kafka demands SASL_SSL and refuses what no ACL allows; Redis demands TLS and an ACL user. The
bridge runs as ``ckb-bridge`` (Kafka and Redis), a real Celery worker as ``ckb-worker``; only the
test itself (topics, records, reading commits and dead letters) uses the admin users. Records
run and are committed after success, never ahead; a failing task is dead-lettered; the lag
metric and ``ckb status`` work, and ``ckb dlq replay`` as its own least-privilege user
(``ckb-replay``); nothing the bridge wrote holds a password.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from confluent_kafka import KafkaError, Producer

from bridge.stack import LocalStack, StackInfo
from bridge.stack.kafka_acls import ADMIN_USER, DLQ_PREFIX, SOURCE_PREFIX
from bridge.stack.redis_acl import ADMIN_USER as REDIS_ADMIN
from bridge.stack.redis_acl import RULES
from bridge.stack.secure import KAFKA_USERS, SecureClients
from tests.figures import figure
from tests.integration.harness import (
    REPO,
    Executions,
    Kafka,
    Worker,
    bridge_config,
    free_port,
    start_bridge,
    start_worker,
    unique,
    wait_for,
)
from tests.integration.test_core_path import CommitProbe

LAG = "ckb_consumer_lag_records"


@pytest.fixture(scope="module")
def clients(secure_stack: StackInfo) -> SecureClients:
    assert secure_stack.secure is not None
    return secure_stack.secure


@pytest.fixture(scope="module")
def admin_kafka(secure_stack: StackInfo, clients: SecureClients) -> Kafka:
    """The test's own Kafka clients, as the super user."""
    return Kafka(secure_stack.kafka_bootstrap, clients.setup.kafka_client(ADMIN_USER))


@pytest.fixture(scope="module")
def recorded(clients: SecureClients) -> Iterator[Executions]:
    client = redis.Redis.from_url(clients.redis_url(REDIS_ADMIN, 2))
    yield Executions(client)
    client.close()


@pytest.fixture(scope="module")
def queue() -> str:
    return unique("ckb-secure")  # the queues the stack's Redis users may use: ckb-*


@pytest.fixture(scope="module")
def secure_worker(
    secure_stack: StackInfo,
    clients: SecureClients,
    queue: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Worker]:
    """A real worker on TLS Redis as ``ckb-worker``; the test's recorder writes as admin."""
    env = {**clients.worker_env(), "CKB_IT_RECORDER_URL": clients.redis_url(REDIS_ADMIN, 2)}
    worker = start_worker(secure_stack, queue, tmp_path_factory.mktemp("secure-worker"), 4, env=env)
    yield worker
    worker.stop()


def least_privilege_config(
    stack: StackInfo, clients: SecureClients, group: str, topic: str, queue: str
) -> dict[str, object]:
    """The bridge's config: the connection sections ``ckb stack up --secure`` writes
    (``ckb-bridge`` everywhere), dead letters under the prefix it may write."""
    route = {"topic": topic, "task": "it.record", "queue": queue, "call": "arg",
             "dlq_topic": f"{DLQ_PREFIX}{topic}"}  # fmt: skip
    sections = clients.bridge_settings()
    assert sections["kafka"]["consumer"]["sasl.username"] == "ckb-bridge"
    metrics = {"enabled": True, "host": "127.0.0.1", "port": free_port()}
    return bridge_config(stack, group, [route], metrics=metrics, **sections)


def replay_as_its_user(
    config: dict[str, Any], clients: SecureClients, dlq: str, work_dir: Path
) -> subprocess.CompletedProcess[str]:
    """``ckb dlq replay --from dlq`` with the bridge's config but the ``ckb-replay`` user."""
    kafka = {**config["kafka"], **clients.replay_settings()["kafka"]}
    path = work_dir / "replay.yaml"
    path.write_text(yaml.safe_dump({**config, "kafka": kafka}))
    return subprocess.run(
        [sys.executable, "-m", "bridge", "dlq", "replay", "--from", dlq, "-c", str(path)],
        cwd=REPO, capture_output=True, text=True, timeout=90, check=False,
    )  # fmt: skip


def write_refused(clients: SecureClients, topic: str) -> bool:
    """Whether Kafka refuses ``ckb-bridge`` a write to ``topic`` (it is not a super user)."""
    errors: list[KafkaError | None] = []
    producer = Producer({**clients.kafka(), "message.timeout.ms": 10_000})
    producer.produce(topic, b"not allowed", on_delivery=lambda error, _: errors.append(error))
    producer.flush(15)
    return [e and e.code() for e in errors] == [KafkaError.TOPIC_AUTHORIZATION_FAILED]


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        return str(reply.read().decode())


def lag_of(text: str, topic: str) -> float | None:
    """The summed lag gauge of ``topic``'s partitions; None while it has none."""
    values = [
        float(line.rpartition(" ")[2])
        for line in text.splitlines()
        if line.startswith(f"{LAG}{{") and f'topic="{topic}"' in line
    ]
    return sum(values) if values else None


def test_core_path_dead_letters_status_and_no_password_anywhere(
    secure_stack: StackInfo,
    clients: SecureClients,
    admin_kafka: Kafka,
    recorded: Executions,
    secure_worker: Worker,
    queue: str,
    work_dir: Path,
) -> None:
    partitions, total = 3, 600
    topic = admin_kafka.create_topic(partitions, prefix=f"{SOURCE_PREFIX}secure")
    group = unique("ckb-secure")
    failing = {n for n in range(total) if n % 50 == 7}
    rng = random.Random(15)
    payloads = [
        {
            "n": n,
            "sleep_ms": rng.randint(0, 10),
            **({"mode": "always_fail"} if n in failing else {}),
        }
        for n in range(total)
    ]
    admin_kafka.produce(
        topic, (json.dumps(p).encode() for p in payloads), partition_of=lambda i: i % partitions
    )
    assert write_refused(clients, topic), "ckb-bridge may write its source topic"
    config = least_privilege_config(secure_stack, clients, group, topic, queue)
    port = config["metrics"]["port"]  # type: ignore[index]
    bridge = start_bridge(config, work_dir)
    started = time.monotonic()
    scrapes: list[str] = []
    try:
        with CommitProbe(admin_kafka, group, topic, partitions) as probe:
            wait_for(lambda: admin_kafka.caught_up(group, topic, partitions), 90, "all committed")
        elapsed = time.monotonic() - started

        def lag_is_zero() -> bool:
            scrapes.append(scrape(port))
            return lag_of(scrapes[-1], topic) == 0

        wait_for(lag_is_zero, 30, f"{LAG} of {topic} at 0", interval=0.5)
        status = subprocess.run(
            [sys.executable, "-m", "bridge", "status", "--json", "-c", str(bridge.config_path)],
            cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
    finally:
        exit_code = bridge.terminate()
    assert exit_code == 0, bridge.log_tail()

    # every record that succeeded ran; none was committed before it finished
    runs = recorded.of(topic)
    finished: dict[tuple[int, int], float] = {}
    for run in runs:
        where = (run["ckb_partition"], run["ckb_offset"])
        finished[where] = min(finished.get(where, run["end"]), run["end"])
    assert len(finished) == total - len(failing), "records that never ran"
    assert {run["payload"]["n"] for run in runs}.isdisjoint(failing)

    # each failing task dead-lettered once, as task_failed; its record counts as finished
    # when its letter was produced (before the broker acknowledged it)
    dlq = f"{DLQ_PREFIX}{topic}"
    letters = admin_kafka.read_all(dlq, sum(admin_kafka.end_offsets(dlq).values()))
    headers = [dict(letter.headers() or []) for letter in letters]
    assert sorted(json.loads(letter.value())["n"] for letter in letters) == sorted(failing)
    assert {h["ckb.reason"] for h in headers} == {b"task_failed"}
    for letter, header in zip(letters, headers, strict=True):
        where = (int(header["ckb.original.partition"]), int(header["ckb.original.offset"]))
        finished[where] = letter.timestamp()[1] / 1000
    ahead = [
        (p, offset)
        for read_at, sample in probe.samples
        for p, committed in sample.items()
        for offset in range(max(committed, 0))
        if finished.get((p, offset), float("inf")) > read_at
    ]
    assert not ahead, f"committed past unfinished records: {ahead[:5]}"

    # ckb status, as ckb-bridge: every partition at its end, lag 0
    assert status.returncode == 0, status.stdout + status.stderr
    rows = json.loads(status.stdout)
    assert {(row["topic"], row["partition"]) for row in rows} == {
        (topic, p) for p in range(partitions)
    }
    assert all(row["lag"] == 0 for row in rows), rows

    # ckb dlq replay as ckb-replay (read dead letters, write sources): the letters go back
    replay = replay_as_its_user(bridge.config, clients, dlq, work_dir)
    assert replay.returncode == 0, replay.stdout + replay.stderr
    wait_for(
        lambda: sum(admin_kafka.end_offsets(topic).values()) == total + len(failing),
        30,
        "the replayed letters on the source topic",
    )

    # nothing the bridge wrote holds a password: its log, /metrics, the dead letters
    secrets = clients.setup.credentials.known()
    assert len(secrets) == len(KAFKA_USERS) + len(RULES)
    written = [bridge.log_path.read_text(), *scrapes, status.stdout, status.stderr]
    written += [replay.stdout, replay.stderr]
    for letter, header in zip(letters, headers, strict=True):
        written += [repr(letter.value()), *(repr(value) for value in header.values())]
    leaks = [secret[:4] for secret in secrets if any(secret in text for text in written)]
    assert not leaks, f"passwords found in what the bridge wrote (first characters): {leaks}"
    figure(
        f"secured stack core path: {total} records ({len(failing)} dead-lettered), "
        f"{partitions} partitions, SASL_SSL + TLS Redis, committed in {elapsed:.1f}s"
    )


def test_stack_up_secure_prints_the_settings_and_no_password(
    secure_stack: StackInfo, clients: SecureClients
) -> None:
    """``ckb stack up --secure`` again on the running stack: idempotent, the client settings
    printed with every password masked; the complete files only its owner may read."""
    kafka_port = secure_stack.kafka_bootstrap.rpartition(":")[2]
    command = [sys.executable, "-m", "bridge", "stack", "up", "--secure",
               "--state-dir", str(secure_stack.state_dir), "--kafka-port", kafka_port,
               "--redis-port", str(clients.redis_port)]  # fmt: skip
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "sasl.username: ckb-bridge" in done.stdout
    assert f"rediss://ckb-bridge:****@127.0.0.1:{clients.redis_port}/0" in done.stdout
    printed = done.stdout + done.stderr
    assert not [s[:4] for s in clients.setup.credentials.known() if s in printed]
    for path in (clients.bridge_file, clients.worker_file, clients.replay_file):
        assert path.stat().st_mode & 0o077 == 0, f"{path} readable by others"
    assert clients.setup.kafka_password("ckb-bridge") in clients.bridge_file.read_text()


#: librdkafka's line when the bridge's consumer cannot reach the broker
CONSUMER_FAIL = "FAIL [ckb-consumer-"


@pytest.mark.chaos
def test_a_broker_restart_on_the_secured_stack_loses_nothing_and_never_commits_ahead(
    secure_local_stack: LocalStack,
    secure_stack: StackInfo,
    clients: SecureClients,
    admin_kafka: Kafka,
    recorded: Executions,
    secure_worker: Worker,
    queue: str,
    work_dir: Path,
) -> None:
    """Kafka (SASL_SSL, ACLs) stopped and started while the least-privilege bridge has a
    backlog: it logs in again (SCRAM over TLS) and goes on; every record runs, none is committed
    before it finished, duplicates stay within what was in flight."""
    partitions, total, window = 3, 450, 20
    topic = admin_kafka.create_topic(partitions, prefix=f"{SOURCE_PREFIX}restart")
    rng = random.Random(16)
    values = (json.dumps({"n": n, "sleep_ms": rng.randint(20, 60)}).encode() for n in range(total))
    admin_kafka.produce(topic, values, partition_of=lambda i: i % partitions)
    config = least_privilege_config(secure_stack, clients, unique("ckb-restart"), topic, queue)
    config["routes"][0]["max_in_flight"] = window  # type: ignore[index]
    group = str(config["kafka"]["group_id"])  # type: ignore[index]
    bridge = start_bridge(config, work_dir)
    try:
        with CommitProbe(admin_kafka, group, topic, partitions) as probe:
            wait_for(lambda: recorded.count(topic) >= total // 4, 90, "a quarter run")
            failures = bridge.log_path.read_text().count(CONSUMER_FAIL)
            down = time.monotonic()
            try:
                secure_local_stack.stop_kafka()
                wait_for(
                    lambda: bridge.log_path.read_text().count(CONSUMER_FAIL) > failures,
                    60,
                    "the bridge's consumer to report the broker gone",
                )
                assert bridge.alive(), bridge.log_tail()
            finally:
                secure_local_stack.start_kafka()
            away = time.monotonic() - down
            back = time.monotonic()
            wait_for(lambda: admin_kafka.caught_up(group, topic, partitions), 120, "all committed")
            recovery = time.monotonic() - back
    finally:
        exit_code = bridge.terminate()
    assert exit_code == 0, bridge.log_tail()
    runs = recorded.of(topic)
    numbers = [run["payload"]["n"] for run in runs]
    assert set(numbers) == set(range(total)), f"{total - len(set(numbers))} records never ran"
    duplicates = len(numbers) - total
    assert duplicates <= window * partitions, f"{duplicates} duplicate runs"
    finished: dict[tuple[int, int], float] = {}
    for run in runs:
        where = (run["ckb_partition"], run["ckb_offset"])
        finished[where] = min(finished.get(where, run["end"]), run["end"])
    ahead = [
        (p, offset)
        for read_at, sample in probe.samples
        for p, committed in sample.items()
        for offset in range(max(committed, 0))
        if finished.get((p, offset), float("inf")) > read_at
    ]
    assert not ahead, f"committed past unfinished records: {ahead[:5]}"
    log = bridge.log_path.read_text()
    assert not [s[:4] for s in clients.setup.credentials.known() if s in log]
    figure(
        f"secured stack, Kafka restarted: {total} records, Kafka away {away:.1f}s, all "
        f"committed {recovery:.1f}s after it was back, {duplicates} duplicate runs"
    )
