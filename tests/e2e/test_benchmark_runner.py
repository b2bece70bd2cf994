"""The benchmarks' smoke checks: ``python -m benchmarks.run --quick`` produces every row, and
``benchmarks.memory`` its readings.

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


def test_memory_benchmark_reports_each_reading(testbed: Testbed) -> None:
    """``python -m benchmarks.memory`` at a tiny scale: the idle reading, the registered one and
    the readings after it (the figures are not checked)."""
    args = ["--exchanges", "2", "--workers-per-exchange", "20", "--interval", "1"]
    args += ["--minutes", "0.1", "--every", "2", "--no-pin"]
    finished = subprocess.run(
        [sys.executable, "-m", "benchmarks.memory", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert finished.returncode == 0, finished.stderr[-5000:]
    lines = finished.stdout.splitlines()
    assert [line.split()[0] for line in lines[1:3]] == ["idle", "registered"], lines
    assert any(line.startswith("+") and "B per worker" in line for line in lines[3:]), lines
