"""RabbitMQ as a process of the local stack: its environment, its ports record, failures."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from bridge.stack import StackInfo, packages, rabbitmq
from bridge.stack.manager import StackPorts
from bridge.stack.paths import StatePaths
from bridge.stack.processes import StackError
from bridge.stack.rabbitmq import RabbitNode


def _node(tmp_path: Path) -> RabbitNode:
    return RabbitNode(StatePaths(tmp_path), port=25672, dist_port=25673, epmd_port=25674)


def test_all_state_lives_in_the_state_dir_on_localhost(tmp_path: Path) -> None:
    node = _node(tmp_path)
    env = node.env()
    assert node.url == "amqp://guest:guest@127.0.0.1:25672//"
    assert env["RABBITMQ_NODE_PORT"] == "25672"
    assert env["RABBITMQ_NODE_IP_ADDRESS"] == "127.0.0.1"
    assert env["RABBITMQ_NODENAME"] == "ckb-25672@localhost"
    assert env["RABBITMQ_DIST_PORT"] == "25673"
    assert env["ERL_EPMD_PORT"] == "25674"
    for name in (
        "HOME", "RABBITMQ_MNESIA_BASE", "RABBITMQ_LOG_BASE", "RABBITMQ_PID_FILE",
        "RABBITMQ_ENABLED_PLUGINS_FILE", "RABBITMQ_CONF_ENV_FILE", "RABBITMQ_CONFIG_FILE",
        "RABBITMQ_ADVANCED_CONFIG_FILE",
    ):  # fmt: skip
        assert Path(env[name]).is_relative_to(tmp_path), name
    assert env["RABBITMQ_PID_FILE"] == str(tmp_path / "rabbitmq.pid")


def test_stack_info_names_the_broker() -> None:
    redis_only = StackInfo("127.0.0.1:9092", "redis://127.0.0.1:6379", Path("/s"))
    assert redis_only.broker_url == "redis://127.0.0.1:6379/0"
    amqp_url = "amqp://guest:guest@127.0.0.1:5672//"
    with_rabbit = StackInfo("127.0.0.1:9092", "redis://127.0.0.1:6379", Path("/s"), None, amqp_url)
    assert with_rabbit.broker_url == amqp_url


def test_ports_file_remembers_rabbitmq(tmp_path: Path) -> None:
    paths = StatePaths(tmp_path)
    ports = StackPorts(19092, 20092, 16379, None, rabbitmq=15672, rabbitmq_dist=15673, epmd=15674)
    ports.save(paths.stack_file)
    assert StackPorts.from_file(paths.stack_file) == ports
    paths.stack_file.write_text('{"kafka": 1, "controller": 2, "redis": 3, "flower": 4}')
    assert StackPorts.from_file(paths.stack_file) == StackPorts(1, 2, 3, 4)


def test_missing_without_root_names_the_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rabbitmq, "_locate", lambda: None)
    monkeypatch.setattr(packages, "can_apt_install", lambda: False)
    with pytest.raises(StackError, match="sudo apt-get install rabbitmq-server"):
        rabbitmq.find_rabbitmq_server()


def test_a_node_that_exits_at_start_is_reported_with_its_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    script = tmp_path / "fake-rabbitmq-server"
    script.write_text(f"#!{sys.executable}\nimport sys\nprint('ERROR: epmd error');sys.exit(1)\n")
    script.chmod(0o755)
    monkeypatch.setattr(rabbitmq, "find_rabbitmq_server", lambda progress=None: str(script))
    node = _node(tmp_path)
    with pytest.raises(StackError) as caught:
        node.start()
    message = str(caught.value)
    assert "RabbitMQ exited during startup" in message
    assert str(node.paths.rabbitmq_log) in message
    assert "ERROR: epmd error" in message
    assert node.pid() is None and not node.paths.rabbitmq_pid.exists()
