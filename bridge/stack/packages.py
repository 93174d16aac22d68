"""Debian packages the local stack installs on demand (``redis-server``, ``rabbitmq-server``,
``postgresql``): with apt-get when running as root, else a message naming the command."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable

from bridge.stack.processes import StackError, run_tool

Progress = Callable[[str], None]


def install_hint(package: str) -> str:
    return f"install it with: sudo apt-get install {package}"


def can_apt_install() -> bool:
    return os.name == "posix" and os.geteuid() == 0 and shutil.which("apt-get") is not None


def apt_install(package: str, progress: Progress) -> None:
    """``apt-get install`` ``package`` (after ``apt-get update`` when the first try fails)."""
    progress(f"{package} not found; installing it with apt-get")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", package]
    fix = f"Or {install_hint(package)}"
    try:
        run_tool(install, f"apt-get install {package}", fix, timeout=600, env=env)
    except StackError:
        run_tool(["apt-get", "update"], "apt-get update", fix, timeout=600, env=env)
        run_tool(install, f"apt-get install {package}", fix, timeout=600, env=env)


def find_or_install(
    locate: Callable[[], str | None], package: str, missing: str, progress: Progress
) -> str:
    """What ``locate`` finds, after installing ``package`` when it finds nothing and apt-get
    can; StackError saying ``missing`` and the install command otherwise."""
    found = locate()
    if found is None and can_apt_install():
        apt_install(package, progress)
        found = locate()
    if found is None:
        raise StackError(f"{missing}; {install_hint(package)}")
    return found
