"""The chaos run's smoke check: ``python -m benchmarks.chaos --quick`` kills two owners and
passes its own verdict (zero false transitions, no lost Manager write, every takeover within the
crash bound, one live owner per exchange at the end). The full run is 15 minutes, by hand."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.testbed import REPO_ROOT, Testbed

pytestmark = [pytest.mark.testbed, pytest.mark.usefixtures("crd_installed")]


def test_quick_chaos_run_passes(testbed: Testbed, tmp_path: Path) -> None:
    figures_file = tmp_path / "chaos.json"
    finished = subprocess.run(
        [sys.executable, "-m", "benchmarks.chaos", "--quick", "--json", str(figures_file)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    figures = json.loads(figures_file.read_text()) if figures_file.exists() else {}
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-5000:]
    assert figures["verdict"] == "pass"
    assert figures["kills"] == 2
    assert figures["false_transitions"] == 0 and figures["lost_writes"] == 0
    assert figures["takeover_max_s"] <= figures["crash_bound_s"]
    assert "| verdict | pass |" in finished.stdout
