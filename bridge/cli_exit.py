"""How ``ckb`` commands end on a user's mistake or a runtime failure: a message, an exit code."""

from __future__ import annotations

import sys
from typing import NoReturn

import click

EXIT_RUNTIME = 1
EXIT_USAGE = 2


def fail(message: str, code: int = EXIT_RUNTIME) -> NoReturn:
    click.secho(f"error: {message}", fg="red", err=True)
    sys.exit(code)
