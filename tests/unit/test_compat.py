"""The startup check of what the dispatcher needs from kombu (``Producer.batch()`` and its
error, kombu >= 5.7): an older kombu stops ``ckb run`` with a message and exit 2, not with a
traceback from deep inside the first publish (or the first import)."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from importlib.metadata import version
from pathlib import Path

import kombu.exceptions
import kombu.messaging
import pytest
from packaging.requirements import Requirement

from bridge.compat import KOMBU_REQUIREMENT, kombu_problem

REPO = Path(__file__).resolve().parents[2]

CONFIG = """\
kafka: {bootstrap_servers: "127.0.0.1:1"}
routes: [{topic: orders, task: tasks.examples.process_order}]
"""


def test_the_installed_kombu_has_what_the_dispatcher_needs() -> None:
    assert kombu_problem() is None


def test_a_kombu_without_batches_is_named_with_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(kombu.messaging.Producer, "batch")
    monkeypatch.delattr(kombu.exceptions, "BatchPublishError")
    problem = kombu_problem()
    assert problem is not None
    assert f"kombu {kombu.__version__}" in problem
    assert "Producer.batch()" in problem and "BatchPublishError" in problem
    assert "kombu>=5.7" in problem


def test_ckb_run_with_an_old_kombu_exits_2_without_a_traceback(tmp_path: Path) -> None:
    """In a fresh interpreter where kombu looks like 5.6 (no batches), before any bridge
    module imported the dispatcher."""
    config = tmp_path / "bridge.yaml"
    config.write_text(CONFIG, encoding="utf-8")
    old_kombu = (
        "import kombu.messaging, kombu.exceptions\n"
        "del kombu.messaging.Producer.batch\n"
        "del kombu.exceptions.BatchPublishError\n"
        "from bridge.cli import main\n"
        f"main(['run', '-c', {str(config)!r}])\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", old_kombu], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert "kombu" in done.stderr and "kombu>=5.7" in done.stderr


def runtime_requirements() -> dict[str, Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text("utf-8"))["project"]
    return {Requirement(text).name.lower(): Requirement(text) for text in project["dependencies"]}


def test_every_runtime_dependency_has_a_major_version_cap() -> None:
    for name, requirement in runtime_requirements().items():
        assert any(spec.operator == "<" for spec in requirement.specifier), name


def test_pins_hold_what_the_bridge_uses() -> None:
    pins = runtime_requirements()
    assert not pins["kombu"].specifier.contains("5.6.2")  # no Producer.batch() before 5.7
    assert pins["kombu"].specifier.contains("5.7.0")
    assert str(pins["kombu"].specifier) == str(Requirement(KOMBU_REQUIREMENT).specifier)
    assert not pins["redis"].specifier.contains("5.3.0")
    assert not pins["celery"].specifier.contains("5.6.0")  # celery < 5.7 wants kombu < 5.7


def test_the_installed_versions_satisfy_the_pins() -> None:
    for name, requirement in runtime_requirements().items():
        assert requirement.specifier.contains(version(name), prereleases=True), name
