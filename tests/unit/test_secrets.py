"""Masking secrets before anything is printed or logged (DESIGN semantics 10)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from bridge.cli import main as ckb_main
from bridge.secrets import MASK, is_secret_key, mask, mask_text, mask_url

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


# --- hardening (issue 10): passwords with "/", query passwords, OAUTHBEARER config, free text


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://:pa/ss@host:6379/0", "redis://:****@host:6379/0"),
        ("redis://user:a/b/c@host", "redis://user:****@host"),
        ("rediss://:p/w@redis.example:6380/0?ssl_cert_reqs=required", None),
        ("redis://host:6379/0?password=hunter2", "redis://host:6379/0?password=****"),
        ("redis://host/0?db=1&password=hunter2&x=1", "redis://host/0?db=1&password=****&x=1"),
        (
            "sentinel://h:26379?sentinel_password=s3cr3t",
            "sentinel://h:26379?sentinel_password=****",
        ),
    ],
)
def test_mask_url_hardened(url: str, expected: str | None) -> None:
    masked = mask_url(url)
    for secret in ("pa/ss", "a/b/c", "p/w", "hunter2", "s3cr3t"):
        assert secret not in masked
    if expected is not None:
        assert masked == expected


def test_failover_urls_with_slash_passwords_each_masked() -> None:
    masked = mask_url("redis://:o/ne@h1:6379/0;redis://:t/wo@h2:6379/0")
    assert masked == "redis://:****@h1:6379/0;redis://:****@h2:6379/0"


@pytest.mark.parametrize(
    "key",
    [
        "sasl.oauthbearer.config",
        "sasl.oauthbearer.assertion.private.key.passphrase",
        "ssl.keystore.passphrase",
        "api_key",
    ],
)
def test_more_secret_keys(key: str) -> None:
    assert is_secret_key(key)
    assert mask({key: "principal=bridge clientSecret=abc"}) == {key: MASK}


def test_secret_in_a_plain_string_value_is_masked() -> None:
    masked = mask({"options": {"broker_url": "redis://h:6379/0?password=hunter2"}})
    assert "hunter2" not in repr(masked)


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("Error connecting to redis://:pa/ss@redis:6379/0: refused", "pa/ss"),
        ("cannot reach rediss://bridge:hunter2@redis.example:6380/1.", "hunter2"),
        ("login failed: password=hunter2 for user bob", "hunter2"),
        ("login failed: sasl.password=hunter2, retrying", "hunter2"),
        ("GET /api?user=bob&api_key=abc123&page=2 -> 401", "abc123"),
        ("config {'sasl.password': 'hunter 2', 'acks': 'all'}", "hunter 2"),
        ('payload {"token": "tok-XYZ", "n": 1}', "tok-XYZ"),
        ("client_secret: s3cr3t-value", "s3cr3t-value"),
        ("headers: Authorization: Bearer eyJhbGciOi.abc.def", "eyJhbGciOi.abc.def"),
        ("sasl.oauthbearer.config=clientId=a clientSecret=zz9", "zz9"),
        ("ValueError('bad secret=\"q w e\"')", "q w e"),
    ],
)
def test_mask_text_hides_secrets(text: str, secret: str) -> None:
    masked = mask_text(text)
    assert secret not in masked
    assert MASK in masked


@pytest.mark.parametrize(
    "text",
    [
        "ValueError: invalid literal for int() with base 10: 'abc'",
        "KeyError: 'order_id'",
        "duplicate key=orders-17 in batch",
        "timeout after 30s talking to redis://redis:6379/0",
        "x=1 y=2 user=bob",
        "see https://docs.example/a?b=c#d",
        "mail admin@example.com",
        "",
    ],
)
def test_mask_text_leaves_ordinary_text(text: str) -> None:
    assert mask_text(text) == text


def test_mask_text_keeps_the_surroundings() -> None:
    masked = mask_text("connect redis://u:pw@h:1/0 failed (password=x y) next")
    assert masked == "connect redis://u:****@h:1/0 failed (password=**** y) next"


@pytest.mark.parametrize(
    "text",
    ["password" * 25_000, "x=y" * 70_000, 'password="a ' * 20_000, "a.b-" * 50_000],
    ids=["secret-words", "pairs", "open-quotes", "one-long-name"],
)
def test_mask_text_is_linear_on_hostile_text(text: str) -> None:
    # a worker's exception text is chosen by whoever wrote the task (or its input)
    started = time.perf_counter()
    mask_text(text)
    assert time.perf_counter() - started < 1.0


CHECKED_CONFIG = """\
kafka:
  consumer:
    sasl.password: 0123
    sasl.oauthbearer.config: clientId=bridge clientSecret=Oauth-S3cret
    ssl.keystore.passphrase: keystore-pass
celery:
  broker_url: redis://bridge:br%2Fsecret@redis:6379/0
  result_backend: redis://redis:6379/1?password=rb-secret
  options:
    broker_transport_options: {sentinel_kwargs: {password: sentinel-secret}}
routes: [{topic: orders, task: tasks.examples.process_order}]
"""


def test_check_config_prints_no_secret(tmp_path: Path) -> None:
    config = tmp_path / "bridge.yaml"
    config.write_text(CHECKED_CONFIG, encoding="utf-8")
    result = CliRunner().invoke(ckb_main, ["check-config", "-c", str(config)])
    assert result.exit_code == 0, result.output
    printed = result.stdout + result.stderr
    for secret in (
        "0123",
        "Oauth-S3cret",
        "keystore-pass",
        "br%2Fsecret",
        "rb-secret",
        "sentinel-secret",
    ):
        assert secret not in printed, secret
    assert "sasl.oauthbearer.config: '****'" in printed
    assert "redis://bridge:****@redis:6379/0" in printed
