"""Render the chaos suite's ``$CKB_CHAOS_REPORT`` JSON lines as a Markdown table.

``python -m tests.chaos.table /tmp/chaos.jsonl`` prints what ``docs/reliability.md`` shows.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

COLUMNS = (
    "scenario",
    "records",
    "executions",
    "duplicates (bound)",
    "DLQ",
    "max commit lag",
    "recovery (bound)",
    "commit samples",
    "invariants",
    "notes",
)


def row(line: dict[str, Any]) -> list[str]:
    recovery = "-" if line["recovery_s"] is None else f"{line['recovery_s']} s"
    if line.get("recovery_bound_s") is not None:
        recovery += f" (≤ {line['recovery_bound_s']} s)"
    dlq = str(line["dlq"])
    if line.get("dlq_duplicates"):
        dlq += f" ({line['dlq_duplicates']} twice)"
    if line.get("spurious_dlq"):
        dlq += f", {line['spurious_dlq']} spurious"
    return [
        line["scenario"],
        str(line["records"]),
        str(line["executions"]),
        f"{line['duplicates']} (≤ {line['duplicate_bound']})",
        dlq,
        f"{line['max_commit_lag_s']} s",
        recovery,
        str(line["samples"]),
        "OK" if not line["violations"] else "; ".join(line["violations"]),
        "; ".join(line.get("notes", [])).replace("|", "/"),
    ]


def table(lines: list[dict[str, Any]]) -> str:
    out = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    out += ["| " + " | ".join(row(line)) + " |" for line in lines]
    return "\n".join(out)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m tests.chaos.table REPORT.jsonl", file=sys.stderr)
        return 2
    text = Path(argv[0]).read_text("utf-8")
    print(table([json.loads(line) for line in text.splitlines() if line.strip()]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
