"""A throw-away PostgreSQL (Debian's ``postgresql`` package) on 127.0.0.1, all state in the
state dir: the cluster made by ``initdb`` in ``postgres/data``, its log in ``logs``.

PostgreSQL refuses to run as root. As root, the stack runs ``initdb`` and ``postgres`` in a new
user namespace where the caller's uid is mapped to :data:`NAMESPACE_UID` (``unshare --user
--map-user``): the server sees an ordinary user, while its files stay the caller's, so a state
dir under ``/root`` or pytest's private ``/tmp/pytest-of-root`` works with no change of owner
or mode on any directory (``runuser -u postgres`` would need every parent directory opened to
that user). Any other user runs them directly.

The cluster trusts connections from 127.0.0.1 (a local test stack: no password), listens on
no Unix socket, and runs without ``fsync`` (its data is disposable; a crash loses at most the
last transactions, which nothing here keeps). Database ``postgres``, user ``ckb``.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bridge.stack.packages import find_or_install
from bridge.stack.paths import StatePaths
from bridge.stack.processes import (
    LOCALHOST,
    StackError,
    alive,
    format_tails,
    is_running,
    port_accepts,
    remove_pid,
    run_tool,
    spawn_detached,
    terminate,
    wait_gone,
    wait_port_free,
)

log = logging.getLogger(__name__)

Progress = Callable[[str], None]

DEFAULT_POSTGRES_PORT = 5432
READY_TIMEOUT = 60.0
STOP_TIMEOUT = 20.0
PACKAGE = "postgresql"
USER = "ckb"
DATABASE = "postgres"
#: the uid the server sees in its user namespace when the caller is root
NAMESPACE_UID = 1000
_BIN_GLOB = "/usr/lib/postgresql/*/bin"


def _bin_dir() -> str | None:
    """The newest installed server's ``bin`` directory (with initdb and postgres)."""
    found = [
        d
        for d in glob.glob(_BIN_GLOB)
        if os.access(f"{d}/postgres", os.X_OK) and os.access(f"{d}/initdb", os.X_OK)
    ]
    return max(found, key=lambda d: int(Path(d).parent.name.split(".")[0]), default=None)


def find_postgres(progress: Progress | None = None) -> Path:
    """The server's ``bin`` directory; ``postgresql`` installed with apt-get when missing."""
    missing = f"PostgreSQL not found (no {_BIN_GLOB}/postgres)"
    return Path(find_or_install(_bin_dir, PACKAGE, missing, progress or log.info))


def as_server_user() -> list[str]:
    """The command prefix that makes the server a non-root user (see the module docstring)."""
    if os.geteuid() != 0:
        return []
    unshare = shutil.which("unshare")
    if unshare is None:
        raise StackError("PostgreSQL refuses to run as root, and unshare (util-linux) is missing")
    return [unshare, "--user", f"--map-user={NAMESPACE_UID}", f"--map-group={NAMESPACE_UID}"]


@dataclass(frozen=True)
class PostgresNode:
    """The PostgreSQL cluster of one state directory, listening on ``port``."""

    paths: StatePaths
    port: int

    @property
    def home(self) -> Path:
        return self.paths.root / "postgres"

    @property
    def data(self) -> Path:
        return self.home / "data"

    @property
    def log_file(self) -> Path:
        return self.paths.logs / "postgres.log"

    @property
    def url(self) -> str:
        """SQLAlchemy's URL (``db+`` in front makes it Celery's result backend)."""
        return f"postgresql://{USER}@{LOCALHOST}:{self.port}/{DATABASE}"

    @property
    def result_backend(self) -> str:
        return f"db+{self.url}"

    @property
    def tokens(self) -> tuple[str, ...]:
        return ("postgres", str(self.data))

    def pid(self) -> int | None:
        """The postmaster's pid (first line of ``postmaster.pid``) when it runs."""
        try:
            first = (self.data / "postmaster.pid").read_text().splitlines()[0]
        except (OSError, IndexError):
            return None
        pid = int(first) if first.strip().isdigit() else None
        return pid if is_running(pid, self.tokens) else None

    def running(self) -> bool:
        return self.pid() is not None

    @staticmethod
    def status_of(node: PostgresNode | None) -> dict[str, Any]:
        """``ckb stack status``'s entry (``url`` None: the stack has no PostgreSQL)."""
        pid = None if node is None else node.pid()
        running = node is not None and pid is not None and port_accepts(node.port)
        return {"running": running, "url": None if node is None else node.url, "pid": pid}

    def answers(self, timeout: float = 1.0) -> bool:
        """Whether the server accepts connections (``pg_isready``)."""
        ready = find_postgres() / "pg_isready"
        argv = [str(ready), "-h", LOCALHOST, "-p", str(self.port), "-U", USER, "-d", DATABASE,
                "-t", str(max(1, int(timeout)))]  # fmt: skip
        try:
            done = subprocess.run(argv, capture_output=True, timeout=timeout + 5, check=False)
        except (OSError, subprocess.SubprocessError):
            return False
        return done.returncode == 0

    def _initdb(self, bin_dir: Path, report: Progress) -> None:
        if (self.data / "PG_VERSION").exists():
            return
        report(f"creating a PostgreSQL cluster in {self.data}")
        self.home.mkdir(parents=True, exist_ok=True)
        argv = [
            *as_server_user(),
            str(bin_dir / "initdb"),
            "-D",
            str(self.data),
            "-U",
            USER,
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-sync",
        ]
        run_tool(argv, "initdb", f"Check {self.home}.", timeout=120, env=_env())

    def start(self, progress: Progress | None = None) -> int:
        """Start the server detached (``initdb`` first when there is no cluster yet) and wait
        until it accepts connections; the postmaster's pid."""
        report = progress or log.info
        bin_dir = find_postgres(report)
        self._initdb(bin_dir, report)
        if self.pid() is None:  # a killed server's lock: its pid may linger as a zombie a while,
            remove_pid(self.data / "postmaster.pid")  # which PostgreSQL takes for a live server
        report(f"starting PostgreSQL on {LOCALHOST}:{self.port}")
        argv = [
            *as_server_user(),
            str(bin_dir / "postgres"),
            "-D",
            str(self.data),
            "-p",
            str(self.port),
            "-h",
            LOCALHOST,
            "-c",
            "unix_socket_directories=",
            "-c",
            "fsync=off",
            "-c",
            "synchronous_commit=off",
            "-c",
            "full_page_writes=off",
        ]
        launcher = spawn_detached(argv, self.log_file, cwd=self.home, env=_env())
        pid = self.wait_ready(launcher)
        report(f"PostgreSQL ready on {self.url}")
        return pid

    def wait_ready(self, launcher: int, timeout: float = READY_TIMEOUT) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not alive(launcher) and self.pid() is None:
                raise self._error("PostgreSQL exited during startup")
            if self.answers(timeout=1.0):
                pid = self.pid()
                if pid is not None:
                    return pid
            time.sleep(0.1)
        self.stop(kill=True)
        raise self._error(f"PostgreSQL took no connections on {self.url} within {timeout:.0f}s")

    def stop(self, kill: bool = False) -> None:
        """A fast shutdown (SIGINT: clients are disconnected, not waited for); ``kill``: a
        crash, SIGKILL to the server and its backends at once (its process group)."""
        pid = self.pid()
        if pid is None:
            return
        if kill:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
        if kill or not _interrupted(pid):
            terminate(pid, self.tokens, STOP_TIMEOUT, kill=True)
        wait_port_free(self.port, timeout=10.0)

    def _error(self, what: str) -> StackError:
        return StackError(f"{what}. Check {self.log_file}.\n{format_tails([self.log_file])}")


def _env() -> dict[str, str]:
    # not the caller's PG* variables (a PGDATA or PGPORT would point the tools elsewhere)
    return {k: v for k, v in os.environ.items() if not k.startswith("PG")}


def _interrupted(pid: int) -> bool:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGINT)
    return wait_gone(pid, STOP_TIMEOUT)
