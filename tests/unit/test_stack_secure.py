"""The secured stack's configuration: passwords kept private, never in what is printed, the
ACL tables as the servers get them."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AclOperation,
    ResourcePatternType,
    ResourceType,
)

from bridge.stack.credentials import Credentials
from bridge.stack.kafka_acls import BRIDGE_USER, DLQ_PREFIX, acl_bindings, bridge_grants
from bridge.stack.processes import StackError
from bridge.stack.redis_acl import RULES, acl_file_text, password_hash
from bridge.stack.secure import SecureClients, SecureSetup


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_password_is_made_once_private_and_read_back(tmp_path: Path) -> None:
    credentials = Credentials(tmp_path / "secrets")
    first = credentials.password("kafka-ckb-bridge")
    assert len(first) >= 32
    assert credentials.password("kafka-ckb-bridge") == first
    assert credentials.password("redis-ckb-bridge") != first
    assert mode(credentials.path("kafka-ckb-bridge")) == 0o600
    assert mode(tmp_path / "secrets") == 0o700
    assert sorted(credentials.known()) == sorted([first, credentials.password("redis-ckb-bridge")])


def test_the_redis_acl_file_holds_hashes_and_turns_the_default_user_off() -> None:
    passwords = {user: f"secret-of-{user}" for user in RULES}
    text = acl_file_text(passwords)
    assert text.splitlines()[0] == "user default off"
    for user, password in passwords.items():
        assert password not in text
        assert f"user {user} on #{password_hash(password)} " in text


def test_create_on_dead_letter_topics_only_when_the_bridge_creates_them() -> None:
    def operations(create: bool) -> set[tuple[object, str, object]]:
        bindings = acl_bindings(BRIDGE_USER, bridge_grants(create_topics=create))
        assert all(b.resource_pattern_type == ResourcePatternType.PREFIXED for b in bindings)
        assert {b.principal for b in bindings} == {f"User:{BRIDGE_USER}"}
        return {(b.restype, b.name, b.operation) for b in bindings}

    created = (ResourceType.TOPIC, DLQ_PREFIX, AclOperation.CREATE)
    assert created in operations(True)
    assert created not in operations(False)
    assert all(op is not AclOperation.ALL for _, _, op in operations(True))


def test_what_is_printed_masks_every_password_and_the_files_are_private(tmp_path: Path) -> None:
    setup = SecureSetup(tmp_path)
    for user in ("ckb-admin", "ckb-bridge"):
        setup.kafka_password(user)
    for user in RULES:
        setup.redis_password(user)
    clients = SecureClients(setup, "127.0.0.1:9092", 6379)
    summary = clients.summary()
    assert setup.credentials.known()
    for secret in setup.credentials.known():
        assert secret not in summary
    assert "sasl.password: '****'" in summary or "sasl.password: ****" in summary
    clients.write_files()
    assert setup.kafka_password("ckb-bridge") in clients.bridge_file.read_text()
    assert mode(clients.bridge_file) == mode(clients.worker_file) == 0o600
    assert setup.redact(f"x{setup.redis_password('ckb-worker')}y") == "x****y"


def test_a_plain_stack_is_not_secured_in_place_and_extras_are_refused(tmp_path: Path) -> None:
    setup = SecureSetup(tmp_path)
    with pytest.raises(StackError, match="--state-dir"):
        setup.check(asked=True, formatted=True, extras=False)
    with pytest.raises(StackError, match="--flower, --broker and --backend"):
        setup.check(asked=True, formatted=False, extras=True)
    assert not setup.secrets_dir.exists()
