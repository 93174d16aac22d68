"""A throw-away RabbitMQ (Debian's ``rabbitmq-server``) on 127.0.0.1, all state in the state dir.

The node runs as the calling user from ``/usr/lib/rabbitmq/bin/rabbitmq-server`` (the
``/usr/sbin`` wrapper would switch to the ``rabbitmq`` user and ``/var/lib/rabbitmq``). Its
node name, Erlang cookie (``$HOME``), mnesia, logs, pid file, plugins file and config files
are the state dir's; its Erlang distribution port and its own ``epmd`` get free ports, so
several stacks run side by side and ``stop`` leaves no ``epmd`` behind.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import amqp  # type: ignore[import-untyped]

from bridge.stack.packages import find_or_install
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
    wait_gone,
    wait_port_free,
)

log = logging.getLogger(__name__)

Progress = Callable[[str], None]

DEFAULT_RABBITMQ_PORT = 5672
READY_TIMEOUT = 90.0
STOP_TIMEOUT = 30.0
PACKAGE = "rabbitmq-server"
#: the real start script; ``/usr/sbin/rabbitmq-server`` is a wrapper that runs it as ``rabbitmq``
_SCRIPT_LOCATIONS = ("/usr/lib/rabbitmq/bin/rabbitmq-server",)


def _locate() -> str | None:
    return next((p for p in _SCRIPT_LOCATIONS if os.access(p, os.X_OK)), None)


def find_rabbitmq_server(progress: Progress | None = None) -> str:
    """The ``rabbitmq-server`` start script; installed with apt-get when missing and root."""
    missing = f"{PACKAGE} not found (no {_SCRIPT_LOCATIONS[0]})"
    return find_or_install(_locate, PACKAGE, missing, progress or log.info)


@dataclass(frozen=True)
class RabbitNode:
    """The RabbitMQ node of one state directory: AMQP on ``port``, distribution on
    ``dist_port``, its own epmd on ``epmd_port``."""

    paths: StatePaths
    port: int
    dist_port: int
    epmd_port: int

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@{LOCALHOST}:{self.port}//"

    @property
    def node_name(self) -> str:
        return f"ckb-{self.port}@localhost"

    @property
    def tokens(self) -> tuple[str, ...]:
        # the Erlang VM's command line: "beam.smp ... -home <HOME> -epmd_port <port> ..."
        return ("beam", f"-home {self.paths.rabbitmq_dir}", f"-epmd_port {self.epmd_port}")

    def pid(self) -> int | None:
        """The Erlang VM's pid (the node writes it to ``RABBITMQ_PID_FILE``)."""
        pid = read_pid(self.paths.rabbitmq_pid)
        return pid if is_running(pid, self.tokens) else None

    def running(self) -> bool:
        return self.pid() is not None

    def answers(self, timeout: float = 1.0) -> bool:
        """Whether an AMQP connection as guest opens (the broker accepts clients)."""
        connection = amqp.Connection(
            f"{LOCALHOST}:{self.port}", connect_timeout=timeout, read_timeout=timeout
        )
        try:
            connection.connect()
            return True
        except Exception:  # refused, reset, handshake timeout, not booted yet: not answering
            return False
        finally:
            try:
                connection.collect()
            except Exception:
                log.debug("dropping a probe connection failed", exc_info=True)

    def env(self) -> dict[str, str]:
        home, paths = self.paths.rabbitmq_dir, self.paths
        return {
            **os.environ,
            "HOME": str(home),  # the Erlang cookie (.erlang.cookie) is made here
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_NODE_IP_ADDRESS": LOCALHOST,
            "RABBITMQ_NODENAME": self.node_name,
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "ERL_EPMD_PORT": str(self.epmd_port),
            "RABBITMQ_MNESIA_BASE": str(home / "mnesia"),
            "RABBITMQ_LOG_BASE": str(paths.logs / "rabbitmq"),
            "RABBITMQ_PID_FILE": str(paths.rabbitmq_pid),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(home / "enabled_plugins"),
            # not /etc/rabbitmq's files: a machine's own broker config stays out of the stack
            "RABBITMQ_CONF_ENV_FILE": str(home / "rabbitmq-env.conf"),
            "RABBITMQ_CONFIG_FILE": str(home / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(home / "advanced.config"),
        }

    def _prepare(self) -> None:
        home = self.paths.rabbitmq_dir
        (home / "mnesia").mkdir(parents=True, exist_ok=True)
        (self.paths.logs / "rabbitmq").mkdir(parents=True, exist_ok=True)
        (home / "enabled_plugins").write_text("[].\n")
        (home / "rabbitmq-env.conf").write_text("")
        (home / "rabbitmq.conf").write_text("loopback_users.guest = true\n")

    def start(self, progress: Progress | None = None) -> int:
        """Start the node detached and wait until it takes AMQP connections; its VM's pid."""
        report = progress or log.info
        script = find_rabbitmq_server(report)
        self._prepare()
        remove_pid(self.paths.rabbitmq_pid)
        report(f"starting RabbitMQ on {LOCALHOST}:{self.port} (node {self.node_name})")
        launcher = spawn_detached(
            [script], self.paths.rabbitmq_log, cwd=self.paths.rabbitmq_dir, env=self.env()
        )
        pid = self.wait_ready(launcher)
        report(f"RabbitMQ ready on {self.url}")
        return pid

    def wait_ready(self, launcher: int, timeout: float = READY_TIMEOUT) -> int:
        """Wait for AMQP; ``launcher`` is the start script, whose session holds the VM."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not alive(launcher) and self.pid() is None:
                self._stop_epmd()
                raise self._error("RabbitMQ exited during startup")
            if self.answers(timeout=1.0):
                pid = self.pid()
                if pid is not None:
                    return pid
            time.sleep(0.2)
        self._kill_session(launcher)
        raise self._error(f"RabbitMQ did not take connections on {self.url} within {timeout:.0f}s")

    def stop(self, kill: bool = False) -> None:
        """SIGTERM (a clean stop) or SIGKILL the VM, then this node's epmd."""
        terminate(self.pid(), self.tokens, STOP_TIMEOUT, kill=kill)
        remove_pid(self.paths.rabbitmq_pid)
        self._stop_epmd()
        wait_port_free(self.port, timeout=10.0)

    def ctl(self, *args: str, timeout: float = 60.0) -> str:
        """``rabbitmqctl -n <node> ARGS`` against this node (same cookie and epmd); its output."""
        script = find_rabbitmq_server()
        ctl = str(Path(script).with_name("rabbitmqctl"))
        fix = f"Check {self.paths.rabbitmq_log}."
        argv = [ctl, "-n", self.node_name, *args]
        return run_tool(argv, f"rabbitmqctl {' '.join(args)}", fix, timeout, env=self.env())

    def _stop_epmd(self) -> None:
        epmd = shutil.which("epmd")
        if epmd is None:
            return
        env = {**os.environ, "ERL_EPMD_PORT": str(self.epmd_port)}
        try:  # epmd -kill fails when no epmd listens there: nothing to stop then
            run_tool([epmd, "-kill"], "epmd -kill", "", timeout=10, env=env)
        except StackError:
            log.debug("no epmd to stop on port %s", self.epmd_port)

    def _kill_session(self, launcher: int) -> None:
        vm = self.pid()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(launcher, signal.SIGKILL)
        if vm is not None:
            terminate(vm, self.tokens, STOP_TIMEOUT, kill=True)
        wait_gone(launcher, 10.0)
        remove_pid(self.paths.rabbitmq_pid)
        self._stop_epmd()

    def _error(self, what: str) -> StackError:
        node_log = self.paths.logs / "rabbitmq" / f"{self.node_name}.log"
        tails = format_tails([self.paths.rabbitmq_log, node_log])
        return StackError(f"{what}. Check {self.paths.rabbitmq_log} and {node_log}.\n{tails}")
