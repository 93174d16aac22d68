"""Pure parts of bridge.stack: templates, resource lookup, cache marker, small parsers."""

from __future__ import annotations

import base64
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

import bridge.stack
from bridge.stack.kafka import (
    find_java,
    find_maven,
    java_major_version,
    new_cluster_id,
    render_server_properties,
)
from bridge.stack.manager import StackPorts, controller_port_from_properties
from bridge.stack.paths import (
    CACHE_MARKER,
    CONFIG_FILES,
    StatePaths,
    cache_complete,
    cache_root,
    config_dir_candidates,
    default_state_dir,
    find_kafka_config_dir,
    kafka_cache_dir,
    render_template,
    write_cache_marker,
)
from bridge.stack.processes import StackError, tail

PACKAGE_DIR = Path(bridge.stack.__file__).resolve().parent
REPO_CONFIG = PACKAGE_DIR.parents[1] / "config" / "kafka"


def _properties(text: str) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in text.splitlines() if line and line[0] not in "#!")
    return {key.strip(): value.strip() for key, value in pairs}


def _make_config(directory: Path, marker: str) -> None:
    directory.mkdir(parents=True)
    for name in CONFIG_FILES:
        (directory / name).write_text(marker)


# -- server.properties ---------------------------------------------------------------------


def test_server_properties_render_every_placeholder() -> None:
    template = (REPO_CONFIG / "server.properties").read_text()
    text = render_server_properties(template, 19092, 20092, Path("/state/kafka/data"))
    props = _properties(text)
    assert "{" not in text
    assert props["process.roles"] == "broker,controller"
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:19092,CONTROLLER://127.0.0.1:20092"
    assert props["controller.quorum.bootstrap.servers"] == "127.0.0.1:20092"
    assert "controller.quorum.voters" not in props  # --standalone forbids it
    assert props["log.dirs"] == "/state/kafka/data"


def test_server_properties_single_node_settings() -> None:
    props = _properties((REPO_CONFIG / "server.properties").read_text())
    for key in (
        "offsets.topic.replication.factor",
        "transaction.state.log.replication.factor",
        "transaction.state.log.min.isr",
        "min.insync.replicas",
        "num.partitions",
    ):
        assert props[key] == "1", key
    assert props["group.initial.rebalance.delay.ms"] == "0"
    assert props["auto.create.topics.enable"] == "true"
    # KIP-848 stays on: the protocol list is left at Kafka 4's default
    assert "group.coordinator.rebalance.protocols" not in props


def test_controller_port_is_read_back_from_rendered_properties() -> None:
    template = (REPO_CONFIG / "server.properties").read_text()
    text = render_server_properties(template, 19092, 20092, Path("/d"))
    assert controller_port_from_properties(text) == 20092
    assert controller_port_from_properties("node.id=1\n") is None


def test_render_template_rejects_unknown_placeholder() -> None:
    assert render_template("a={x} b={x}", {"x": 1}) == "a=1 b=1"
    with pytest.raises(StackError, match=r"\{missing\}"):
        render_template("a={missing}", {"x": 1})


# -- resource lookup -----------------------------------------------------------------------


def test_candidates_prefer_the_packaged_copy() -> None:
    package = Path("/repo/bridge/stack")
    candidates = config_dir_candidates(package)
    assert candidates[0] == package / "kafka_config"
    assert Path("/repo/config/kafka") in candidates


def test_find_config_dir_in_a_checkout(tmp_path: Path) -> None:
    package = tmp_path / "repo" / "bridge" / "stack"
    package.mkdir(parents=True)
    _make_config(tmp_path / "repo" / "config" / "kafka", "checkout")
    assert find_kafka_config_dir(package) == tmp_path / "repo" / "config" / "kafka"


def test_find_config_dir_prefers_wheel_copy(tmp_path: Path) -> None:
    package = tmp_path / "repo" / "bridge" / "stack"
    _make_config(package / "kafka_config", "wheel")
    _make_config(tmp_path / "repo" / "config" / "kafka", "checkout")
    assert find_kafka_config_dir(package) == package / "kafka_config"


def test_find_config_dir_needs_every_file(tmp_path: Path) -> None:
    package = tmp_path / "bridge" / "stack"
    (package / "kafka_config").mkdir(parents=True)
    (package / "kafka_config" / "pom.xml").write_text("")
    with pytest.raises(StackError, match="not found"):
        find_kafka_config_dir(package)


def test_real_config_dir_is_found() -> None:
    found = find_kafka_config_dir()
    assert all((found / name).is_file() for name in CONFIG_FILES)


def test_pom_resolves_kafka_and_an_slf4j_binding() -> None:
    ns = {"m": "http://maven.apache.org/POM/4.0.0"}
    root = ET.parse(REPO_CONFIG / "pom.xml").getroot()
    artifacts = {
        d.findtext("m:artifactId", namespaces=ns) for d in root.iterfind(".//m:dependency", ns)
    }
    assert {"kafka_2.13", "log4j-slf4j-impl", "log4j-core"} <= artifacts
    assert root.findtext("m:properties/m:kafka.version", namespaces=ns) == "4.1.1"


# -- cache and state locations -------------------------------------------------------------


def test_cache_root_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("CKB_CACHE_DIR", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_root() == tmp_path / "home" / ".cache" / "ckb"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "ckb"
    monkeypatch.setenv("CKB_CACHE_DIR", str(tmp_path / "explicit"))
    assert cache_root() == tmp_path / "explicit"
    assert kafka_cache_dir("4.1.1") == tmp_path / "explicit" / "kafka-4.1.1"


def test_default_state_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("CKB_STATE_DIR", raising=False)
    monkeypatch.delenv("XDG_STATE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_state_dir() == tmp_path / ".local" / "state" / "ckb" / "stack"
    monkeypatch.setenv("CKB_STATE_DIR", str(tmp_path / "s"))
    assert default_state_dir() == tmp_path / "s"


def test_cache_marker(tmp_path: Path) -> None:
    cache = tmp_path / "kafka-4.1.1"
    (cache / "libs").mkdir(parents=True)
    (cache / "libs" / "a.jar").write_text("")
    assert not cache_complete(cache)  # jars without a marker: an interrupted copy
    write_cache_marker(cache, ["a.jar"])
    assert cache_complete(cache)
    write_cache_marker(cache, ["a.jar", "b.jar"])
    assert not cache_complete(cache)  # a listed jar is missing
    (cache / CACHE_MARKER).write_text("not json")
    assert not cache_complete(cache)
    write_cache_marker(cache, [])
    assert not cache_complete(cache)


def test_state_layout_and_ports_file(tmp_path: Path) -> None:
    paths = StatePaths(tmp_path)
    assert paths.kafka_properties.parent == paths.kafka_dir
    assert StackPorts.from_file(paths.stack_file) is None
    ports = StackPorts(kafka=19092, controller=20092, redis=16379)
    ports.save(paths.stack_file)
    assert StackPorts.from_file(paths.stack_file) == ports
    paths.stack_file.write_text('{"kafka": 1}')
    assert StackPorts.from_file(paths.stack_file) is None


# -- small parsers -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("output", "major"),
    [
        ('openjdk version "17.0.15" 2025-04-15\nOpenJDK Runtime Environment', 17),
        ('java version "1.8.0_412"', 8),
        ('openjdk version "21" 2023-09-19', 21),
        ("no version here", None),
    ],
)
def test_java_major_version(output: str, major: int | None) -> None:
    assert java_major_version(output) == major


def test_cluster_id_is_a_url_safe_uuid() -> None:
    for _ in range(50):
        cid = new_cluster_id()
        assert len(cid) == 22 and not cid.startswith("-")
        assert len(base64.urlsafe_b64decode(cid + "==")) == 16


def test_tail(tmp_path: Path) -> None:
    log = tmp_path / "x.log"
    log.write_text("".join(f"line {i}\n" for i in range(100)))
    assert tail(log, 3) == "line 97\nline 98\nline 99"
    assert tail(tmp_path / "missing.log") == ""


# -- missing tools -------------------------------------------------------------------------


def test_missing_java_and_maven_say_how_to_fix(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("JAVA_HOME", raising=False)
    with pytest.raises(StackError, match="Java 17"):
        find_java()
    with pytest.raises(StackError, match="apt-get install maven"):
        find_maven()
