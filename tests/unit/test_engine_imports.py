"""bridge/core stays pure: it imports the standard library and itself, nothing else.

Checked on the source (``ast``), so an import inside a function or under ``TYPE_CHECKING``
counts too, and nothing has to be imported to find out.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

CORE = Path(__file__).resolve().parents[2] / "bridge" / "core"


def _imports(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # a relative import stays inside the package
                found.append((node.lineno, "bridge.core." + (node.module or "")))
            else:
                found.append((node.lineno, node.module or ""))
    return found


def _allowed(module: str) -> bool:
    top = module.split(".")[0]
    return (
        module == "bridge.core"
        or module.startswith("bridge.core.")
        or (top in sys.stdlib_module_names and top != "bridge")
    )


MODULES = sorted(CORE.glob("*.py"))


def test_the_engine_has_modules() -> None:
    assert {p.name for p in MODULES} >= {"engine.py", "vocabulary.py", "offsets.py"}


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_core_imports_only_the_standard_library_and_itself(path: Path) -> None:
    bad = [
        f"{path.name}:{line} imports {name}" for line, name in _imports(path) if not _allowed(name)
    ]
    assert not bad, "bridge/core must stay pure (standard library only): " + "; ".join(bad)


def test_the_check_catches_a_forbidden_import(tmp_path: Path) -> None:
    module = tmp_path / "x.py"
    module.write_text("import os\nfrom bridge.settings import Route\ndef f():\n    import kombu\n")
    assert [name for _, name in _imports(module) if not _allowed(name)] == [
        "bridge.settings",
        "kombu",
    ]


def test_every_bridge_module_stays_under_400_lines() -> None:
    bridge = CORE.parent
    long = {
        str(p.relative_to(bridge)): n
        for p in bridge.rglob("*.py")
        if (n := len(p.read_text().splitlines())) >= 400
    }
    assert not long, f"split these modules (one idea per file, < 400 lines): {long}"
    assert len((bridge / "loop.py").read_text().splitlines()) < 300
