"""`ckb check-config`: exit codes and messages a user can act on (no Kafka needed)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from bridge.cli import main

GOOD = """
kafka: {bootstrap_servers: "127.0.0.1:9092", group_id: g,
        consumer: {security.protocol: SASL_SSL, sasl.password: hunter2-secret}}
celery: {broker_url: "redis://user:pw-secret@127.0.0.1:6379/0"}
routes:
  - {topic: orders, task: tasks.examples.process_order}
"""


def run(tmp_path: Path, text: str, *extra: str) -> tuple[int, str]:
    path = tmp_path / "bridge.yaml"
    path.write_text(text)
    result = CliRunner().invoke(main, ["check-config", "-c", str(path), *extra])
    return result.exit_code, result.output


def test_good_config_prints_effective_config_with_secrets_masked(tmp_path: Path) -> None:
    code, output = run(tmp_path, GOOD)
    assert code == 0, output
    assert "hunter2-secret" not in output and "pw-secret" not in output
    assert "sasl.password: '****'" in output
    assert "redis://user:****@127.0.0.1:6379/0" in output
    assert "task_timeout: 300.0" in output  # defaults are shown: it is the effective config


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("routes: [{topic: a, task: t, max_in_flight: lots}]", "routes.0.max_in_flight"),
        ("kafka: {bootstrapservers: x}\nroutes: [{topic: a, task: t}]", "kafka.bootstrapservers"),
        ("routes: [{topic: a}]", "routes.0.task"),
        ("routes: [{topic: '^a[', task: t}]", "routes.0.topic"),
        ("routes: []", "routes"),
        (
            "kafka: {consumer: {enable.auto.commit: true}}\nroutes: [{topic: a, task: t}]",
            "kafka.consumer",
        ),
    ],
)
def test_broken_config_exits_2_naming_the_field(tmp_path: Path, text: str, field: str) -> None:
    code, output = run(tmp_path, text)
    assert code == 2
    assert field in output
    assert "Traceback" not in output


def test_unknown_key_message_says_how_to_fix(tmp_path: Path) -> None:
    code, output = run(tmp_path, "routes: [{topic: a, task: t, colour: red}]")
    assert code == 2
    assert "routes.0.colour: unknown key" in output


def test_invalid_yaml_and_missing_file_exit_2(tmp_path: Path) -> None:
    assert run(tmp_path, "routes: [unclosed")[0] == 2
    result = CliRunner().invoke(main, ["check-config", "-c", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 2 and "file not found" in result.output


def test_environment_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CKB_KAFKA__BOOTSTRAP_SERVERS", "broker-from-env:9093")
    code, output = run(tmp_path, GOOD)
    assert code == 0
    assert "bootstrap_servers: broker-from-env:9093" in output


def test_run_exits_2_on_a_tls_setting_celery_refuses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found while building the bridge (Celery reads the result backend's TLS settings):
    a usage error with the fix, no traceback, and no password."""
    # the root logger stays pytest's: no handler on the runner's soon-closed streams
    monkeypatch.setattr("bridge.logging_setup.configure_logging", lambda *_args: None)
    config = tmp_path / "bridge.yaml"
    config.write_text(
        "kafka: {bootstrap_servers: '127.0.0.1:9'}\n"
        "celery: {result_backend: 'rediss://:s3cret@127.0.0.1:6380/1'}\n"
        "routes: [{topic: orders, task: t}]\nmetrics: {port: 0}\n"
    )
    result = CliRunner().invoke(main, ["run", "-c", str(config)])
    assert result.exit_code == 2, result.output
    assert "celery.result_backend: A rediss:// URL must have parameter ssl_cert_reqs" in (
        result.output
    )
    assert "Traceback" not in result.output
    assert "s3cret" not in result.output
