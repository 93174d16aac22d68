"""Process plumbing for the local stack: pid files, detached spawn, liveness, stop, log tails.

The daemons are started through a short-lived launcher process, so they are never children of
the calling Python process: no zombies to reap, no ``Popen`` objects to keep alive, and they
survive the exit of ``ckb stack up``.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

LOCALHOST = "127.0.0.1"

_LAUNCHER = """
import json, subprocess, sys
spec = json.loads(sys.argv[1])
with open(spec["log"], "ab", buffering=0) as log:
    proc = subprocess.Popen(
        spec["argv"], cwd=spec["cwd"], env=spec["env"], stdin=subprocess.DEVNULL,
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True, close_fds=True,
    )
sys.stdout.write(str(proc.pid))
"""


class StackError(Exception):
    """A local-stack failure; the message is for the user: what failed, the fix, the log tail."""


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``path`` (created if missing)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def spawn_detached(
    argv: Sequence[str], log_file: Path, cwd: Path, env: dict[str, str] | None = None
) -> int:
    """Start ``argv`` in its own session, stdout+stderr appended to ``log_file``; return its pid."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    spec = {
        "argv": list(argv),
        "log": str(log_file),
        "cwd": str(cwd),
        "env": dict(os.environ) if env is None else env,
    }
    try:
        out = subprocess.run(
            [sys.executable, "-c", _LAUNCHER, json.dumps(spec)],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
    except subprocess.CalledProcessError as exc:
        raise StackError(f"could not start {argv[0]}: {exc.stderr.strip()}") from exc
    except (OSError, subprocess.SubprocessError) as exc:
        raise StackError(f"could not start {argv[0]}: {exc}") from exc
    return int(out.stdout.strip())


def read_pid(path: Path) -> int | None:
    """The pid stored in ``path``, or None when missing or unreadable."""
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def write_pid(path: Path, pid: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(f"{pid}\n")
    tmp.replace(path)


def remove_pid(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def _proc_state(pid: int) -> str | None:
    """The one-letter state from /proc/<pid>/stat (Linux), or None when unavailable."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rpartition(")")[2].split()[0]


def _exited_threads(pid: int) -> bool:
    """Whether every thread of a zombie leader is gone too (then its sockets are closed)."""
    try:
        return len(os.listdir(f"/proc/{pid}/task")) <= 1
    except OSError:
        return True


def _cmdline(pid: int) -> str | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return raw.replace(b"\0", b" ").decode(errors="replace")


def _signal_reaches(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def alive(pid: int) -> bool:
    """Whether ``pid`` exists and is not a fully exited zombie (whatever it runs)."""
    if pid <= 0 or not _signal_reaches(pid):
        return False
    return not (_proc_state(pid) in ("Z", "X") and _exited_threads(pid))


def is_running(pid: int | None, tokens: Sequence[str] = ()) -> bool:
    """Whether ``pid`` is alive and its command line holds every token.

    The tokens guard against pid reuse: a recycled pid running something else is not ours.
    """
    if pid is None or not alive(pid):
        return False
    cmdline = _cmdline(pid)
    if cmdline is None:  # no /proc (not Linux): trust the signal probe
        return True
    return all(token in cmdline for token in tokens)


def wait_gone(pid: int, timeout: float) -> bool:
    """Wait until ``pid`` has exited; True if it went away within ``timeout``."""
    deadline = time.monotonic() + timeout
    while alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)
    return True


def terminate(pid: int | None, tokens: Sequence[str], timeout: float, kill: bool = False) -> None:
    """SIGTERM (or SIGKILL when ``kill``) ``pid`` and wait; SIGKILL after ``timeout``."""
    if pid is None or not is_running(pid, tokens):
        return
    _send(pid, signal.SIGKILL if kill else signal.SIGTERM)
    if wait_gone(pid, timeout):
        return
    _send(pid, signal.SIGKILL)
    if not wait_gone(pid, 10.0):
        raise StackError(f"process {pid} did not exit after SIGKILL")


def _send(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def tail(path: Path, lines: int = 40) -> str:
    """The last ``lines`` lines of a text file ('' when missing)."""
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 256 * lines))
            data = fh.read()
    except OSError:
        return ""
    text = data.decode(errors="replace")
    return "\n".join(text.splitlines()[-lines:])


def format_tails(paths: Sequence[Path], lines: int = 40) -> str:
    """Tails of several log files, each under a header, skipping empty ones."""
    parts = []
    for path in paths:
        text = tail(path, lines)
        if text.strip():
            parts.append(f"--- last lines of {path} ---\n{text}")
    return "\n".join(parts) if parts else "(no log output)"


def port_in_use(port: int, host: str = LOCALHOST) -> bool:
    """Whether something listens on ``host:port`` (a bind with SO_REUSEADDR fails)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return True
            raise
    return False


def wait_port_free(port: int, timeout: float, host: str = LOCALHOST) -> bool:
    """Wait until nothing listens on ``host:port``; True if it got free within ``timeout``."""
    deadline = time.monotonic() + timeout
    while port_in_use(port, host):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)
    return True


def port_accepts(port: int, host: str = LOCALHOST, timeout: float = 0.5) -> bool:
    """Whether a TCP connection to ``host:port`` succeeds."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def free_port(host: str = LOCALHOST) -> int:
    """A port the OS considers free right now (bind to port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def run_tool(
    argv: Sequence[str], what: str, fix: str, timeout: float, env: dict[str, str] | None = None
) -> str:
    """Run a short command to completion; StackError with its output tail when it fails."""
    try:
        done = subprocess.run(
            list(argv),
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            env=env,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise StackError(f"{what} timed out after {timeout:.0f}s. {fix}") from exc
    except OSError as exc:
        raise StackError(f"{what} could not run: {exc}. {fix}") from exc
    output = (done.stdout or "") + (done.stderr or "")
    if done.returncode != 0:
        last = "\n".join(output.splitlines()[-40:])
        raise StackError(f"{what} failed (exit {done.returncode}). {fix}\n{last}")
    return output
