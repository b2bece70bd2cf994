"""The benchmark runner's smoke check: ``python -m benchmarks.run --quick`` produces every row.

A tiny fleet, seconds of windows: the figures mean nothing and are not checked (no timing is
asserted anywhere in the tests); what is checked is that the runner drives the operator, the
broker, the load generator and the bare baseline end to end and reports the whole table.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.testbed import REPO_ROOT, Testbed

pytestmark = [pytest.mark.testbed, pytest.mark.usefixtures("crd_installed")]

ROWS = [
    "ingest: queued heartbeats drained (msg/s)",
    "capacity while publishing flat out (msg/s)",
    "steady fleet: backlog growth (messages)",
    "steady fleet: RSS (MiB) / beyond idle per worker (B)",
    "Kubernetes writes per exchange per minute",
    "Manager writes per minute",
    "restart: every queue consumed again (s)",
    "detection lag p99 after the threshold (s): Manager",
    "detection lag p99 after the threshold (s): status",
    "event-loop lag during the mass transition (ms)",
]


def test_quick_run_reports_every_row(testbed: Testbed, tmp_path: Path) -> None:
    rows_file = tmp_path / "rows.json"
    # --no-pin: the test bed's broker is shared with the rest of the suite; leave its CPUs alone.
    finished = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--quick", "--no-pin", "--json", str(rows_file)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert finished.returncode == 0, finished.stderr[-5000:]
    rows = json.loads(rows_file.read_text())
    assert [row["name"] for row in rows] == ROWS
    for row in rows:
        assert isinstance(row["value"], int | float) and not math.isnan(row["value"]), row
        assert row["how"] and row["goal"], row
    for name in ROWS:  # the printed table has the same rows
        assert f"| {name} |" in finished.stdout
