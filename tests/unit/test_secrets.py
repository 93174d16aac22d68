"""Masking secrets before anything is printed or logged (DESIGN semantics 10)."""

from __future__ import annotations

import pytest

from bridge.secrets import MASK, is_secret_key, mask, mask_url

PASSWORD = "hunter2-Zq9"


@pytest.mark.parametrize(
    "key",
    [
        "sasl.password",
        "ssl.key.password",
        "ssl.keystore.password",
        "sasl.oauthbearer.client.secret",
        "sasl.jaas.config",
        "SASL.PASSWORD",
        "api_token",
    ],
)
def test_secret_keys_are_masked(key: str) -> None:
    masked = mask({key: PASSWORD})
    assert masked == {key: MASK}
    assert is_secret_key(key)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("bootstrap.servers", "broker:9092"),
        ("sasl.username", "bridge"),
        ("sasl.mechanism", "SCRAM-SHA-512"),
        ("security.protocol", "SASL_SSL"),
        ("ssl.ca.location", "/etc/ssl/ca.pem"),
        ("group_id", "orders-bridge"),
        ("port", 9108),
        ("enabled", True),
        ("ratio", 0.5),
        ("queue", None),
    ],
)
def test_non_secrets_untouched(key: str, value: object) -> None:
    assert mask({key: value}) == {key: value}
    assert not is_secret_key(key)


def test_secret_with_non_string_value_is_masked() -> None:
    assert mask({"sasl.password": 12345}) == {"sasl.password": MASK}


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://user:pw@host:6379/0", "redis://user:****@host:6379/0"),
        ("redis://:pw@host:6379/1", "redis://:****@host:6379/1"),
        (
            f"rediss://bridge:{PASSWORD}@redis.example:6380/0",
            "rediss://bridge:****@redis.example:6380/0",
        ),
        ("redis://host:6379/0", "redis://host:6379/0"),
        ("redis://127.0.0.1:6379", "redis://127.0.0.1:6379"),
        ("unix:///run/redis.sock", "unix:///run/redis.sock"),
        ("redis://user:pa:ss@host", "redis://user:****@host"),
    ],
)
def test_mask_url(url: str, expected: str) -> None:
    assert mask_url(url) == expected


def test_failover_urls_each_masked() -> None:
    masked = mask_url("redis://:one@h1:6379/0;redis://:two@h2:6379/0")
    assert masked == "redis://:****@h1:6379/0;redis://:****@h2:6379/0"


def test_mask_url_password_containing_at_sign() -> None:
    masked = mask_url("redis://user:p@ss-tail@host:6379/0")
    assert "ss-tail" not in masked
    assert masked == "redis://user:****@host:6379/0"


def test_private_key_pem_is_masked() -> None:
    pem = "-----BEGIN PRIVATE KEY-----\nMIIEv...\n-----END PRIVATE KEY-----"
    assert mask({"ssl.key.pem": pem}) == {"ssl.key.pem": MASK}


def test_nested_settings_dump() -> None:
    dump = {
        "kafka": {
            "bootstrap_servers": "broker:9092",
            "consumer": {"sasl.username": "bridge", "sasl.password": PASSWORD},
            "producer": {"ssl.key.password": PASSWORD},
        },
        "celery": {
            "broker_url": f"redis://bridge:{PASSWORD}@redis:6379/0",
            "result_backend": f"redis://:{PASSWORD}@redis:6379/1",
            "options": {"broker_transport_options": {"sentinel_kwargs": {"password": PASSWORD}}},
        },
        "routes": [{"topic": "orders", "task": "tasks.x"}],
        "list_of_urls": [f"redis://:{PASSWORD}@a:1/0", "plain"],
    }
    masked = mask(dump)
    assert PASSWORD not in repr(masked)
    assert masked["kafka"]["consumer"] == {"sasl.username": "bridge", "sasl.password": MASK}
    assert masked["kafka"]["producer"] == {"ssl.key.password": MASK}
    assert masked["kafka"]["bootstrap_servers"] == "broker:9092"
    assert masked["celery"]["broker_url"] == "redis://bridge:****@redis:6379/0"
    assert masked["celery"]["result_backend"] == "redis://:****@redis:6379/1"
    assert masked["celery"]["options"]["broker_transport_options"]["sentinel_kwargs"] == {
        "password": MASK
    }
    assert masked["routes"] == [{"topic": "orders", "task": "tasks.x"}]
    assert masked["list_of_urls"] == ["redis://:****@a:1/0", "plain"]
    # the input is not modified
    assert dump["kafka"]["consumer"]["sasl.password"] == PASSWORD  # type: ignore[index]


def test_list_under_secret_key_is_masked_element_wise() -> None:
    assert mask({"sasl.password": [PASSWORD, "x"]}) == {"sasl.password": [MASK, MASK]}
