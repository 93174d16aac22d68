"""Where the local stack keeps things: config resources, the jar cache, the state directory."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from bridge.stack.processes import StackError

DEFAULT_KAFKA_VERSION = "4.1.1"
CONFIG_FILES = ("pom.xml", "server.properties", "log4j2.yaml")
CACHE_MARKER = ".ckb-complete"
_PLACEHOLDER = re.compile(r"\{([a-z_]+)\}")


def config_dir_candidates(package_dir: Path) -> list[Path]:
    """Places to look for the Kafka config files, best first.

    An installed wheel carries them as ``bridge/stack/kafka_config``; a source checkout has them
    at ``<repo>/config/kafka`` (two levels above ``bridge/stack``).
    """
    return [
        package_dir / "kafka_config",
        *(p / "config" / "kafka" for p in package_dir.parents[:2]),
    ]


def find_kafka_config_dir(package_dir: Path | None = None) -> Path:
    """The first candidate directory holding every config file; StackError if none does."""
    base = Path(__file__).resolve().parent if package_dir is None else package_dir
    candidates = config_dir_candidates(base)
    for candidate in candidates:
        if all((candidate / name).is_file() for name in CONFIG_FILES):
            return candidate
    searched = ", ".join(str(c) for c in candidates)
    raise StackError(
        f"Kafka config files ({', '.join(CONFIG_FILES)}) not found; searched: {searched}. "
        "Reinstall celery-kafka-bridge or run from a complete source checkout."
    )


def render_template(template: str, values: Mapping[str, object]) -> str:
    """Fill ``{name}`` placeholders; every placeholder must have a value."""

    def fill(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in values:
            raise StackError(f"config template placeholder {{{name}}} has no value")
        return str(values[name])

    return _PLACEHOLDER.sub(fill, template)


def _env_path(name: str) -> Path | None:
    value = os.environ.get(name, "").strip()
    return Path(value).expanduser() if value else None


def cache_root() -> Path:
    """``$CKB_CACHE_DIR``, else ``$XDG_CACHE_HOME/ckb``, else ``~/.cache/ckb``."""
    explicit = _env_path("CKB_CACHE_DIR")
    if explicit is not None:
        return explicit
    xdg = _env_path("XDG_CACHE_HOME")
    return (xdg if xdg is not None else Path.home() / ".cache") / "ckb"


def kafka_cache_dir(version: str, root: Path | None = None) -> Path:
    return (cache_root() if root is None else root) / f"kafka-{version}"


def default_state_dir() -> Path:
    """``$CKB_STATE_DIR``, else ``$XDG_STATE_HOME/ckb/stack``, else ``~/.local/state/ckb/stack``."""
    explicit = _env_path("CKB_STATE_DIR")
    if explicit is not None:
        return explicit
    xdg = _env_path("XDG_STATE_HOME")
    return (xdg if xdg is not None else Path.home() / ".local" / "state") / "ckb" / "stack"


def write_cache_marker(cache_dir: Path, jars: Iterable[str]) -> None:
    """Record a finished jar copy: the marker lists the jars that must be present."""
    (cache_dir / CACHE_MARKER).write_text(json.dumps(sorted(jars)) + "\n")


def cache_complete(cache_dir: Path) -> bool:
    """Whether the marker exists and every jar it lists is in ``cache_dir/libs``."""
    try:
        jars = json.loads((cache_dir / CACHE_MARKER).read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(jars, list) or not jars:
        return False
    libs = cache_dir / "libs"
    return all(isinstance(j, str) and (libs / j).is_file() for j in jars)


@dataclass(frozen=True)
class StatePaths:
    """The layout of a stack's state directory."""

    root: Path

    @property
    def stack_file(self) -> Path:
        return self.root / "stack.json"

    @property
    def lock_file(self) -> Path:
        return self.root / "stack.lock"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def kafka_dir(self) -> Path:
        return self.root / "kafka"

    @property
    def kafka_data(self) -> Path:
        return self.kafka_dir / "data"

    @property
    def kafka_properties(self) -> Path:
        return self.kafka_dir / "server.properties"

    @property
    def kafka_pid(self) -> Path:
        return self.root / "kafka.pid"

    @property
    def kafka_server_log(self) -> Path:
        return self.logs / "kafka-server.log"

    @property
    def kafka_stdout_log(self) -> Path:
        return self.logs / "kafka.out"

    @property
    def redis_dir(self) -> Path:
        return self.root / "redis"

    @property
    def redis_pid(self) -> Path:
        return self.root / "redis.pid"

    @property
    def redis_log(self) -> Path:
        return self.logs / "redis.log"

    @property
    def flower_dir(self) -> Path:
        return self.root / "flower"

    @property
    def flower_pid(self) -> Path:
        return self.root / "flower.pid"

    @property
    def flower_log(self) -> Path:
        return self.logs / "flower.log"

    @property
    def rabbitmq_dir(self) -> Path:
        return self.root / "rabbitmq"

    @property
    def rabbitmq_pid(self) -> Path:
        return self.root / "rabbitmq.pid"

    @property
    def rabbitmq_log(self) -> Path:
        return self.logs / "rabbitmq.out"
