"""Flower (the Celery monitor) on 127.0.0.1, watching the stack's Redis broker.

It watches the broker in Redis database 0 (results in 1), the databases ``ckb demo`` and the
examples use. Flower turns task events on in every worker it sees, every few seconds; workers
started with ``-E`` send them from their first task.
"""

from __future__ import annotations

import http.client
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from bridge.stack.paths import StatePaths
from bridge.stack.processes import (
    LOCALHOST,
    StackError,
    alive,
    format_tails,
    is_running,
    read_pid,
    remove_pid,
    spawn_detached,
    terminate,
    wait_port_free,
    write_pid,
)

log = logging.getLogger(__name__)

Progress = Callable[[str], None]

DEFAULT_FLOWER_PORT = 5555
BROKER_DB = 0
RESULT_DB = 1
READY_TIMEOUT = 60.0
STOP_TIMEOUT = 10.0


def flower_port_for(flower: bool, port: int | None) -> int | None:
    """The port ``--flower`` / ``--flower-port`` (implies ``--flower``) ask for; None: no Flower."""
    if port is not None:
        return port
    return DEFAULT_FLOWER_PORT if flower else None


@dataclass(frozen=True)
class FlowerNode:
    """The Flower of one state directory; ``redis_url`` is the stack's Redis (no database),
    ``broker_url`` its broker when that is not Redis (RabbitMQ)."""

    paths: StatePaths
    port: int
    redis_url: str
    broker_url: str | None = None

    @property
    def url(self) -> str:
        return f"http://{LOCALHOST}:{self.port}"

    @property
    def tokens(self) -> tuple[str, ...]:
        return ("celery", "flower", f"--port={self.port}")

    def pid(self) -> int | None:
        pid = read_pid(self.paths.flower_pid)
        return pid if is_running(pid, self.tokens) else None

    def running(self) -> bool:
        return self.pid() is not None

    def answers(self, timeout: float = 1.0) -> bool:
        """Whether ``/healthcheck`` answers 200."""
        connection = http.client.HTTPConnection(LOCALHOST, self.port, timeout=timeout)
        try:
            connection.request("GET", "/healthcheck")
            return connection.getresponse().status == 200
        except (http.client.HTTPException, OSError):
            return False
        finally:
            connection.close()

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "celery",
            "--broker",
            self.broker_url or f"{self.redis_url}/{BROKER_DB}",
            "--result-backend",
            f"{self.redis_url}/{RESULT_DB}",
            "flower",
            f"--address={LOCALHOST}",
            f"--port={self.port}",
        ]

    def start(self, progress: Progress | None = None) -> int:
        """Start Flower detached and wait until it answers; its pid."""
        report = progress or log.info
        self.paths.flower_dir.mkdir(parents=True, exist_ok=True)
        report(f"starting Flower on {self.url}")
        pid = spawn_detached(self.command(), self.paths.flower_log, cwd=self.paths.flower_dir)
        write_pid(self.paths.flower_pid, pid)
        self.wait_ready(pid)
        report(f"Flower ready on {self.url}")
        return pid

    def wait_ready(self, pid: int, timeout: float = READY_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not alive(pid):
                remove_pid(self.paths.flower_pid)
                raise self._error("Flower exited during startup")
            if self.answers(timeout=0.5):
                return
            time.sleep(0.2)
        self.stop()
        raise self._error(f"Flower did not answer on {self.url} within {timeout:.0f}s")

    def stop(self, kill: bool = False) -> None:
        terminate(read_pid(self.paths.flower_pid), self.tokens, STOP_TIMEOUT, kill=kill)
        remove_pid(self.paths.flower_pid)
        wait_port_free(self.port, timeout=10.0)

    def _error(self, what: str) -> StackError:
        tails = format_tails([self.paths.flower_log])
        return StackError(f"{what}. Check {self.paths.flower_log}.\n{tails}")
