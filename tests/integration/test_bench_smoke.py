"""The benchmark still runs: ``python -m bench --smoke`` end to end, every figure reported.

No timing assertions: the machine is shared and noisy. The benchmark starts its own stack (free
ports, temp state dir) and its own workers, so it does not use the session fixtures.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.report import FIGURES

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(280)
def test_bench_smoke_reports_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    run = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--json", str(out)],
        cwd=REPO,
        capture_output=True,
        timeout=270,
    )
    assert run.returncode == 0, run.stdout.decode()[-3000:] + run.stderr.decode()[-3000:]
    data = json.loads(out.read_text())
    figures = data["figures"]
    missing = sorted(set(FIGURES) - set(figures))
    assert not missing, f"figures missing from the JSON: {missing}"
    not_positive = {name: f["median"] for name, f in figures.items() if not f["median"] > 0}
    assert not not_positive, f"figures that are not > 0: {not_positive}"
    assert set(data["targets"]) == {"b_over_p", "e_over_r"}
    assert data["redis_commands_per_record"]["E"], "no Redis command breakdown for E"
