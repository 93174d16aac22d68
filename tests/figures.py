"""Figures that tests measure (rates, duplicate counts, chaos summaries).

A test calls :func:`figure` instead of ``print`` (which pytest swallows unless the test fails);
``tests/conftest.py`` prints every line in a "measured figures" section at the end of the run,
so CI logs keep them. They are information, never assertions: the machine is shared.
"""

from __future__ import annotations

LINES: list[str] = []


def figure(line: str) -> None:
    LINES.append(line.strip())
