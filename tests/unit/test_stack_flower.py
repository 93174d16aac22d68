"""Flower as a process of the local stack: its command, its ports record, a failed start."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from bridge.demo import worker_command
from bridge.stack.flower import FlowerNode
from bridge.stack.manager import StackPorts
from bridge.stack.paths import StatePaths
from bridge.stack.processes import StackError


def _node(tmp_path: Path, port: int = 5555) -> FlowerNode:
    return FlowerNode(StatePaths(tmp_path), port, "redis://127.0.0.1:6379")


def test_flower_watches_the_stack_broker_on_localhost(tmp_path: Path) -> None:
    node = _node(tmp_path, 5601)
    argv = node.command()
    assert argv[:3] == [sys.executable, "-m", "celery"]
    assert argv[argv.index("--broker") + 1] == "redis://127.0.0.1:6379/0"
    assert argv[argv.index("--result-backend") + 1] == "redis://127.0.0.1:6379/1"
    assert argv[argv.index("flower") :] == ["flower", "--address=127.0.0.1", "--port=5601"]
    assert node.url == "http://127.0.0.1:5601"
    assert all(token in " ".join(argv) for token in node.tokens)
    assert node.paths.flower_log == tmp_path / "logs" / "flower.log"


def test_ports_file_remembers_flower_and_reads_older_files(tmp_path: Path) -> None:
    paths = StatePaths(tmp_path)
    ports = StackPorts(kafka=19092, controller=20092, redis=16379, flower=15555)
    ports.save(paths.stack_file)
    assert StackPorts.from_file(paths.stack_file) == ports
    paths.stack_file.write_text('{"kafka": 1, "controller": 2, "redis": 3}')
    assert StackPorts.from_file(paths.stack_file) == StackPorts(1, 2, 3, flower=None)


def test_a_flower_that_exits_at_start_is_reported_with_its_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    node = _node(tmp_path, 5602)
    crash = [sys.executable, "-c", "import sys; print('no such broker transport'); sys.exit(3)"]
    monkeypatch.setattr(FlowerNode, "command", lambda self: crash)
    with pytest.raises(StackError) as caught:
        node.start()
    message = str(caught.value)
    assert "Flower exited during startup" in message
    assert str(node.paths.flower_log) in message
    assert "no such broker transport" in message
    assert node.pid() is None and not node.paths.flower_pid.exists()


def test_demo_worker_sends_task_events_when_flower_watches() -> None:
    assert "-E" in worker_command(flower=True)
    assert "-E" not in worker_command(flower=False)
