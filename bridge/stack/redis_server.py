"""A throw-away Redis (the Debian ``redis-server`` binary) on 127.0.0.1, no persistence.

One :class:`RedisNode` is one ``redis-server`` process of a state directory: the stack's Redis
(``name="redis"``), or a member of a Sentinel set (:mod:`bridge.stack.sentinel`: a master, a
replica started with ``--replicaof``, a sentinel started from its config file).
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import redis

from bridge.stack.paths import StatePaths
from bridge.stack.processes import (
    LOCALHOST,
    StackError,
    alive,
    format_tails,
    is_running,
    read_pid,
    remove_pid,
    run_tool,
    spawn_detached,
    terminate,
    wait_port_free,
    write_pid,
)

log = logging.getLogger(__name__)

Progress = Callable[[str], None]

READY_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0
INSTALL_HINT = "install it with: sudo apt-get install redis-server"
_EXTRA_LOCATIONS = (
    "/usr/bin/redis-server",
    "/usr/sbin/redis-server",
    "/usr/local/bin/redis-server",
)


def _locate() -> str | None:
    found = shutil.which("redis-server")
    if found is not None:
        return found
    return next((p for p in _EXTRA_LOCATIONS if os.access(p, os.X_OK)), None)


def _can_apt_install() -> bool:
    return os.name == "posix" and os.geteuid() == 0 and shutil.which("apt-get") is not None


def _apt_install(progress: Progress) -> None:
    progress("redis-server not found; installing it with apt-get")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", "redis-server"]
    fix = f"Or {INSTALL_HINT}"
    try:
        run_tool(install, "apt-get install redis-server", fix, timeout=600, env=env)
    except StackError:
        run_tool(["apt-get", "update"], "apt-get update", fix, timeout=600, env=env)
        run_tool(install, "apt-get install redis-server", fix, timeout=600, env=env)


def find_redis_server(progress: Progress | None = None) -> str:
    """The ``redis-server`` binary; installed with apt-get when missing and running as root."""
    found = _locate()
    if found is None and _can_apt_install():
        _apt_install(progress or log.info)
        found = _locate()
    if found is None:
        raise StackError(f"redis-server not found on PATH; {INSTALL_HINT}")
    return found


@dataclass(frozen=True)
class RedisNode:
    """A Redis server of one state directory."""

    paths: StatePaths
    port: int
    #: its data dir, pid file and log are named after it: ``<state>/<name>``,
    #: ``<state>/<name>.pid``, ``<state>/logs/<name>.log``
    name: str = "redis"
    #: arguments after the binary, before the bridge's own (a config file, ``--sentinel``,
    #: ``--replicaof host port``)
    args: tuple[str, ...] = ()
    label: str = "Redis"

    @property
    def home(self) -> Path:
        return self.paths.root / self.name

    @property
    def pid_file(self) -> Path:
        return self.paths.root / f"{self.name}.pid"

    @property
    def log_file(self) -> Path:
        return self.paths.logs / f"{self.name}.log"

    @property
    def url(self) -> str:
        return f"redis://{LOCALHOST}:{self.port}"

    @property
    def tokens(self) -> tuple[str, ...]:
        # redis rewrites its process title to "redis-server 127.0.0.1:<port>"
        return ("redis-server", f":{self.port}")

    def pid(self) -> int | None:
        pid = read_pid(self.pid_file)
        return pid if is_running(pid, self.tokens) else None

    def running(self) -> bool:
        return self.pid() is not None

    def answers(self, timeout: float = 1.0) -> bool:
        """Whether PING gets PONG."""
        client = redis.Redis(
            host=LOCALHOST, port=self.port, socket_timeout=timeout, socket_connect_timeout=timeout
        )
        try:
            with client:
                return bool(client.ping())
        except redis.RedisError:
            return False

    def command(self, binary: str) -> list[str]:
        return [
            binary,
            *self.args,
            "--port",
            str(self.port),
            "--bind",
            LOCALHOST,
            "--dir",
            str(self.home),
            "--daemonize",
            "no",
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "yes",
            "--logfile",
            "",
        ]

    def start(self, progress: Progress | None = None) -> int:
        """Start redis-server detached and wait for PING; its pid."""
        report = progress or log.info
        binary = find_redis_server(report)
        self.home.mkdir(parents=True, exist_ok=True)
        report(f"starting {self.label} on {self.url}")
        pid = spawn_detached(self.command(binary), self.log_file, cwd=self.home)
        write_pid(self.pid_file, pid)
        self.wait_ready(pid)
        report(f"{self.label} ready on {self.url}")
        return pid

    def wait_ready(self, pid: int, timeout: float = READY_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            # the pid was just spawned, so it is ours: only whether it still lives matters
            # (Redis rewrites its command line as it starts; a read then can miss the name)
            if not alive(pid):
                remove_pid(self.pid_file)
                raise self._error(f"{self.label} exited during startup")
            if self.answers(timeout=0.5):
                return
            time.sleep(0.1)
        self.stop()
        raise self._error(f"{self.label} did not answer PING on {self.url} within {timeout:.0f}s")

    def stop(self, kill: bool = False) -> None:
        terminate(read_pid(self.pid_file), ("redis-server",), STOP_TIMEOUT, kill=kill)
        remove_pid(self.pid_file)
        wait_port_free(self.port, timeout=10.0)

    def _error(self, what: str) -> StackError:
        tails = format_tails([self.log_file])
        return StackError(f"{what}. Check {self.log_file}.\n{tails}")
