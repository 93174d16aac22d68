"""Random passwords for the secured local stack, kept under its state directory.

Each secret is one file, ``<dir>/<name>.password``, readable by its owner only (0600, in a
0700 directory), made once and then read back: the users created in Kafka's storage at format
time and the Redis ACL file keep matching it across restarts. Nothing here logs a secret.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from bridge.stack.processes import StackError

#: URL-safe, so a password can sit in a ``rediss://user:password@…`` URL as it is
_BYTES = 24


class Credentials:
    """The passwords of one secured stack."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def path(self, name: str) -> Path:
        return self.directory / f"{name}.password"

    def password(self, name: str) -> str:
        """The password of ``name``, made (random, 0600) on first use."""
        path = self.path(name)
        try:
            value = path.read_text().strip()
        except FileNotFoundError:
            value = ""
        except OSError as exc:
            raise StackError(f"cannot read {path}: {exc.strerror}") from exc
        if value:
            return value
        value = secrets.token_urlsafe(_BYTES)
        write_private(path, value + "\n")
        return value

    def known(self) -> list[str]:
        """Every password made so far (for scans that must find none of them)."""
        if not self.directory.is_dir():
            return []
        return [p.read_text().strip() for p in sorted(self.directory.glob("*.password"))]


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by its owner only (0600 from the start), in a
    directory only its owner can enter (0700)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    os.chmod(path, 0o600)
