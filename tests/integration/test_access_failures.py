"""Kafka and TLS refusals produced for real, each said in one line with its fix.

On the secured stack (``ckb stack up --secure``: SASL_SSL, the StandardAuthorizer, the bridge
user ``ckb-bridge`` with only its ACLs): a wrong password (``ckb status`` exits 2), a CA that
did not sign the broker's certificate, a consumer group and a source topic the bridge may not
read, a dead-letter topic it may neither create nor write (``ckb run``: one ERROR line each and
a ``/readyz`` reason). Against a TLS endpoint of the test's own: an expired certificate and one
for another host, as librdkafka and redis-py see them. No output holds a password.
"""

from __future__ import annotations

import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

from bridge.access_errors import AccessRefusedError, RedisClient, redis_problem
from bridge.settings import Settings
from bridge.stack import StackInfo
from bridge.stack.certificates import Certificates, ensure_certificates
from bridge.stack.kafka_acls import ADMIN_USER, DLQ_PREFIX, SOURCE_PREFIX
from bridge.stack.secure import SecureClients
from bridge.status import group_status
from tests.integration.harness import (
    REPO,
    Kafka,
    bridge_config,
    free_port,
    start_bridge,
    unique,
    wait_for,
)
from tests.integration.test_redis_acl import readiness


@pytest.fixture(scope="module")
def clients(secure_stack: StackInfo) -> SecureClients:
    assert secure_stack.secure is not None
    return secure_stack.secure


@pytest.fixture(scope="module")
def admin_kafka(secure_stack: StackInfo, clients: SecureClients) -> Kafka:
    return Kafka(secure_stack.kafka_bootstrap, clients.setup.kafka_client(ADMIN_USER))


def settings_for(consumer: dict[str, Any], bootstrap: str, topic: str = "t") -> Settings:
    return Settings.model_validate(
        {
            "kafka": {"bootstrap_servers": bootstrap, "group_id": "ckb-x", "consumer": consumer},
            "routes": [{"topic": topic, "task": "it.record"}],
        }
    )


def test_ckb_status_with_a_wrong_password_exits_2_with_one_line(
    secure_stack: StackInfo, clients: SecureClients, tmp_path: Path
) -> None:
    wrong = "wrong-" + clients.setup.kafka_password("ckb-bridge")[:6]
    consumer = {**clients.setup.kafka_client("ckb-bridge"), "sasl.password": wrong}
    config = {
        "kafka": {
            "bootstrap_servers": secure_stack.kafka_bootstrap,
            "group_id": "ckb-status",
            "consumer": consumer,
        },
        "routes": [{"topic": f"{SOURCE_PREFIX}x", "task": "it.record"}],
    }
    path = tmp_path / "status.yaml"
    path.write_text(yaml.safe_dump(config))
    done = subprocess.run(
        [sys.executable, "-m", "bridge", "status", "-c", str(path)],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.strip() == (
        f"error: Kafka at {secure_stack.kafka_bootstrap} refused the login of user 'ckb-bridge' "
        "with SCRAM-SHA-512 (SASL authentication failed): wrong password, or no such user on "
        "the broker: fix kafka.consumer sasl.username and sasl.password (and sasl.mechanism)"
    )
    assert wrong not in done.stdout + done.stderr


def test_a_ca_that_did_not_sign_the_brokers_certificate(
    secure_stack: StackInfo, clients: SecureClients, tmp_path: Path
) -> None:
    other = ensure_certificates(tmp_path / "other")
    consumer = {**clients.setup.kafka_client("ckb-bridge"), "ssl.ca.location": str(other.ca)}
    with pytest.raises(AccessRefusedError) as refused:
        group_status(settings_for(consumer, secure_stack.kafka_bootstrap), timeout=10)
    assert refused.value.problem.exit_code == 2
    assert str(refused.value) == (
        f"Kafka at {secure_stack.kafka_bootstrap}: the broker's TLS certificate is not signed by "
        "a CA this client trusts (certificate verify failed): set kafka.consumer "
        "ssl.ca.location to the file of the CA that signed it"
    )


# == certificates the client must refuse, on a TLS endpoint of the test's own =================
def openssl(where: Path, *args: str) -> None:
    subprocess.run(["openssl", *args], cwd=where, check=True, capture_output=True, timeout=60)


def signed(certs: Certificates, name: str, san: str, days: int) -> tuple[Path, Path]:
    """A server certificate signed by ``certs``' CA for ``san``, valid for ``days`` (0: it
    expires the second it is made)."""
    where = certs.directory
    openssl(where, "req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
            "-keyout", f"{name}.key", "-out", f"{name}.csr")  # fmt: skip
    (where / f"{name}.ext").write_text(f"subjectAltName={san}\n")
    openssl(where, "x509", "-req", "-in", f"{name}.csr", "-CA", str(certs.ca), "-CAkey",
            str(certs.ca_key), "-CAcreateserial", "-days", str(days), "-extfile", f"{name}.ext",
            "-out", f"{name}.pem")  # fmt: skip
    return where / f"{name}.pem", where / f"{name}.key"


@contextmanager
def tls_endpoint(cert: Path, key: Path) -> Iterator[int]:
    """A TLS server on 127.0.0.1 presenting ``cert``: every handshake, nothing after it."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                connection, _ = server.accept()
            except OSError:
                continue
            connection.settimeout(2)
            try:
                with context.wrap_socket(connection, server_side=True) as tls:
                    tls.recv(1)
            except OSError:  # the client refused the certificate: what the test wants
                connection.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        thread.join(5)
        server.close()


@pytest.fixture(scope="module")
def local_ca(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return ensure_certificates(tmp_path_factory.mktemp("tls-endpoint"))


@pytest.mark.parametrize(
    ("name", "san", "days", "kafka_says", "redis_says"),
    [
        ("expired", "IP:127.0.0.1", 0, "has expired", "has expired"),
        ("elsewhere", "DNS:elsewhere.invalid", 1, "hostname mismatch", "hostname mismatch"),
    ],
)
def test_an_expired_or_another_hosts_certificate(
    local_ca: Certificates, name: str, san: str, days: int, kafka_says: str, redis_says: str
) -> None:
    cert, key = signed(local_ca, name, san, days)
    with tls_endpoint(cert, key) as port:
        address = f"127.0.0.1:{port}"
        consumer = {"security.protocol": "SSL", "ssl.ca.location": str(local_ca.ca)}
        with pytest.raises(AccessRefusedError) as refused:
            group_status(settings_for(consumer, address), timeout=10)
        assert str(refused.value).startswith(f"Kafka at {address}: the broker's TLS certificate")
        assert kafka_says in str(refused.value)
        assert refused.value.problem.exit_code == 2

        url = f"rediss://ckb-bridge:pw-not-said@127.0.0.1:{port}/1"
        client = redis.Redis(
            host="127.0.0.1", port=port, ssl=True, ssl_ca_certs=str(local_ca.ca), password="x"
        )
        with pytest.raises(redis.ConnectionError) as failed:
            client.ping()
        problem = redis_problem(failed.value, RedisClient.from_url("celery.result_backend", url))
        assert problem is not None and problem.exit_code == 2
        assert problem.message.startswith(
            f"Redis at {address} (celery.result_backend): the server's TLS certificate"
        )
        assert redis_says in problem.message and "pw-not-said" not in problem.message


# == missing ACLs: ckb run says each once and is not ready ====================================
def run_until_reasons(
    config: dict[str, Any], work_dir: Path, port: int, wanted: list[str]
) -> tuple[list[str], str]:
    """Run ``ckb run`` until ``/readyz`` gives every reason in ``wanted``; its reasons and log."""
    bridge = start_bridge(config, work_dir)
    reasons: list[str] = []

    def given() -> bool:
        reasons[:] = readiness(port)
        return all(any(part in reason for reason in reasons) for part in wanted)

    try:
        wait_for(given, 45, f"/readyz to say {wanted}")
        assert bridge.alive(), bridge.log_tail()
    finally:
        bridge.terminate()
    return reasons, bridge.log_path.read_text()


def least_privilege(
    stack: StackInfo, clients: SecureClients, group: str, routes: list[dict[str, Any]]
) -> tuple[dict[str, Any], int]:
    port = free_port()
    metrics = {"enabled": True, "host": "127.0.0.1", "port": port}
    sections = clients.bridge_settings()
    return bridge_config(stack, group, routes, metrics=metrics, **sections), port


def test_a_group_the_bridge_may_not_read(
    secure_stack: StackInfo, clients: SecureClients, admin_kafka: Kafka, work_dir: Path
) -> None:
    topic = admin_kafka.create_topic(1, prefix=f"{SOURCE_PREFIX}acl")
    group = unique("other")  # outside the ckb- prefix the bridge may use
    route = {"topic": topic, "task": "it.record", "dlq_topic": f"{DLQ_PREFIX}{topic}"}
    config, port = least_privilege(secure_stack, clients, group, [route])
    line = (
        f"Kafka refused group '{group}': the principal User:ckb-bridge needs READ on group "
        f"{group}: kafka-acls --bootstrap-server {secure_stack.kafka_bootstrap} --add "
        f"--allow-principal User:ckb-bridge --operation Read --group {group}"
    )
    reasons, log = run_until_reasons(config, work_dir, port, [line])
    assert line in reasons
    assert [entry for entry in log.splitlines() if line in entry and " ERROR " in entry]
    assert_no_password(clients, log)


def test_a_source_topic_and_a_dead_letter_topic_the_bridge_may_not_use(
    secure_stack: StackInfo, clients: SecureClients, admin_kafka: Kafka, work_dir: Path
) -> None:
    allowed = admin_kafka.create_topic(1, prefix=f"{SOURCE_PREFIX}acl")
    refused = admin_kafka.create_topic(1, prefix="other")  # no ACL lets ckb-bridge read it
    admin_kafka.produce(allowed, [b"not json"])  # dead-lettered at once: decode_error
    dead_letters = f"{allowed}.dlq"  # the default name: no ACL lets ckb-bridge create or write it
    routes = [
        {"topic": allowed, "task": "it.record", "payload": "json"},
        {"topic": refused, "task": "it.record"},
    ]
    config, port = least_privilege(secure_stack, clients, unique("ckb-acl"), routes)
    topic_line = (
        f"Kafka refused topic '{refused}': the principal User:ckb-bridge needs READ and DESCRIBE "
        f"on topic {refused}: kafka-acls --bootstrap-server {secure_stack.kafka_bootstrap} --add "
        f"--allow-principal User:ckb-bridge --operation Read --operation Describe --topic "
        f"{refused}"
    )
    write_grant = (
        f"needs WRITE and DESCRIBE on topic {dead_letters}: kafka-acls --bootstrap-server "
        f"{secure_stack.kafka_bootstrap} --add --allow-principal User:ckb-bridge --operation "
        f"Write --operation Describe --topic {dead_letters}"
    )
    reasons, log = run_until_reasons(config, work_dir, port, [topic_line, write_grant])
    assert topic_line in reasons
    assert sum(topic_line in entry and " ERROR " in entry for entry in log.splitlines()) == 1
    create = f"cannot create dead-letter topic {dead_letters}: Kafka refused topic"
    assert create in log and f"needs CREATE on topic {dead_letters}" in log
    assert f"cannot write dead letters to {dead_letters}" in log
    assert_no_password(clients, log)


def assert_no_password(clients: SecureClients, text: str) -> None:
    leaks = [secret[:3] for secret in clients.setup.credentials.known() if secret in text]
    assert not leaks, f"passwords in the output (first characters): {leaks}"


def test_ckb_dlq_replay_as_a_user_that_may_not_read_the_dead_letters(
    secure_stack: StackInfo, clients: SecureClients, admin_kafka: Kafka, tmp_path: Path
) -> None:
    """``ckb-bridge`` may write dead letters but not read them: a replay as it stops with the
    grant it lacks (the replay has its own user, ``ckb-replay``)."""
    dead_letters = admin_kafka.create_topic(1, prefix=f"{DLQ_PREFIX}replay")
    admin_kafka.produce(dead_letters, [b"a letter"])
    config = {
        **clients.bridge_settings(),
        "routes": [{"topic": f"{SOURCE_PREFIX}x", "task": "it.record"}],
    }
    config["kafka"]["group_id"] = "ckb-replay-test"
    path = tmp_path / "replay.yaml"
    path.write_text(yaml.safe_dump(config))
    done = subprocess.run(
        [sys.executable, "-m", "bridge", "dlq", "replay", "--from", dead_letters, "-c", str(path)],
        cwd=REPO, capture_output=True, text=True, timeout=90, check=False,
    )  # fmt: skip
    output = done.stdout + done.stderr
    assert done.returncode == 1, output
    assert (
        f"Kafka refused topic '{dead_letters}': the principal User:ckb-bridge needs READ and "
        f"DESCRIBE on topic {dead_letters}: kafka-acls --bootstrap-server "
        f"{secure_stack.kafka_bootstrap} --add --allow-principal User:ckb-bridge --operation Read "
        f"--operation Describe --topic {dead_letters}"
    ) in " ".join(output.split())
    assert_no_password(clients, output)


def test_ckb_run_with_a_wrong_kafka_password_says_so_once_and_is_not_ready(
    secure_stack: StackInfo, clients: SecureClients, admin_kafka: Kafka, work_dir: Path
) -> None:
    topic = admin_kafka.create_topic(1, prefix=f"{SOURCE_PREFIX}pw")
    route = {"topic": topic, "task": "it.record", "dlq_topic": f"{DLQ_PREFIX}{topic}"}
    config, port = least_privilege(secure_stack, clients, unique("ckb-pw"), [route])
    wrong = "wrong-" + clients.setup.kafka_password("ckb-bridge")[:6]
    config["kafka"]["consumer"]["sasl.password"] = wrong
    line = (
        f"Kafka at {secure_stack.kafka_bootstrap} refused the login of user 'ckb-bridge' with "
        "SCRAM-SHA-512 (SASL authentication failed)"
    )
    _, log = run_until_reasons(config, work_dir, port, [line])
    assert sum(line in entry and " ERROR " in entry for entry in log.splitlines()) == 1, log
    # librdkafka's own line, once per reconnect of each client, only until the bridge said it
    repeats = log.count("SASL authentication error")
    assert repeats <= 8, f"{repeats} librdkafka lines about the refused login"
    assert wrong not in log
    assert_no_password(clients, log)
