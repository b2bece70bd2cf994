"""The alerts and the dashboard in deploy/monitoring, checked with the real tools.

promtool (built from the Go module github.com/prometheus/prometheus by scripts/build-prometheus)
checks the PrometheusRule's rules and runs their unit tests (tests/monitoring/alerts.test.yaml);
these tests also hold every alert to a test that fires it, one that does not, and a runbook in
docs/operations.md. The live side (a real Prometheus scraping the operator) is
tests/e2e/test_monitoring.py.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

from overseer_operator import metrics

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "deploy" / "monitoring"
RULE = MONITORING / "prometheusrule.yaml"
UNIT_TESTS = Path(__file__).with_name("alerts.test.yaml")
DASHBOARD = MONITORING / "dashboards" / "overseer-operator.json"
OPERATIONS = ROOT / "docs" / "operations.md"
RULES_FILE_NAME = "overseer-operator.rules.yaml"


def rule_groups() -> dict[str, Any]:
    return yaml.safe_load(RULE.read_text(encoding="utf-8"))["spec"]


def alerts() -> list[dict[str, Any]]:
    return [rule for group in rule_groups()["groups"] for rule in group["rules"] if "alert" in rule]


def write_rules(directory: Path) -> Path:
    """The PrometheusRule's spec as a plain Prometheus rules file (the same `groups:`)."""
    path = directory / RULES_FILE_NAME
    path.write_text(yaml.safe_dump(rule_groups(), sort_keys=False), encoding="utf-8")
    return path


def promtool_run(promtool: Path, *args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(promtool), *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def test_promtool_checks_the_rules(prometheus_bin: Path, tmp_path: Path) -> None:
    checked = promtool_run(prometheus_bin / "promtool", "check", "rules", write_rules(tmp_path),
                           cwd=tmp_path)  # fmt: skip
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(alerts())} rules found" in checked.stdout


def test_promtool_unit_tests_of_every_alert_pass(prometheus_bin: Path, tmp_path: Path) -> None:
    write_rules(tmp_path)
    shutil.copy(UNIT_TESTS, tmp_path / UNIT_TESTS.name)
    tested = promtool_run(prometheus_bin / "promtool", "test", "rules", UNIT_TESTS.name,
                          cwd=tmp_path)  # fmt: skip
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout + tested.stderr


def test_promtool_unit_tests_can_fail(prometheus_bin: Path, tmp_path: Path) -> None:
    """The unit tests see the rules: with one threshold changed, promtool reports a failure."""
    write_rules(tmp_path)
    rules = (tmp_path / RULES_FILE_NAME).read_text(encoding="utf-8")
    (tmp_path / RULES_FILE_NAME).write_text(
        rules.replace("_backlog_messages) > 1000", "_backlog_messages) > 9000"),
        encoding="utf-8",
    )
    shutil.copy(UNIT_TESTS, tmp_path / UNIT_TESTS.name)
    tested = promtool_run(prometheus_bin / "promtool", "test", "rules", UNIT_TESTS.name,
                          cwd=tmp_path)  # fmt: skip
    assert tested.returncode != 0
    assert "OverseerFallingBehind" in tested.stdout + tested.stderr


def test_every_alert_is_tested_firing_and_not_firing() -> None:
    cases = yaml.safe_load(UNIT_TESTS.read_text(encoding="utf-8"))["tests"]
    fired: set[str] = set()
    quiet: set[str] = set()
    for case in cases:
        for check in case.get("alert_rule_test") or ():
            (fired if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = {rule["alert"] for rule in alerts()}
    assert names - fired == set(), "alerts without a test in which they fire"
    assert names - quiet == set(), "alerts without a test in which they stay quiet"
    assert len(names) >= 8


def anchors(markdown: str) -> set[str]:
    """GitHub's anchors of a Markdown file's headings."""
    result = set()
    for heading in re.findall(r"^#+ (.+)$", markdown, re.MULTILINE):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        result.add(slug)
    return result


def test_every_alert_has_a_runbook_section() -> None:
    documented = anchors(OPERATIONS.read_text(encoding="utf-8"))
    for rule in alerts():
        url = rule["annotations"]["runbook_url"]
        assert url.endswith("docs/operations.md#" + rule["alert"].lower()), url
        assert rule["alert"].lower() in documented, f"no section '{rule['alert']}' in {OPERATIONS}"
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}


def dashboard_expressions() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return [
        target["expr"] for panel in dashboard["panels"] for target in panel.get("targets") or ()
    ]


def test_dashboard_uses_only_metrics_the_operator_exports() -> None:
    families = {family.name for family in metrics.REGISTRY.collect()}
    exported = (
        families | {f"{name}_total" for name in families} | {f"{name}_bucket" for name in families}
    )
    used: set[str] = set()
    for expression in dashboard_expressions():
        used |= set(re.findall(r"\b(overseer_[a-z_]+)", expression))
    assert used, "the dashboard queries no overseer metric"
    assert used <= exported, used - exported
    for name in ("overseer_workers", "overseer_worker_transitions_total",
                 "overseer_detection_lag_seconds_bucket", "overseer_manager_writes_total",
                 "overseer_queue_backlog_messages"):  # fmt: skip
        assert name in used, f"the dashboard does not show {name}"


def test_alerts_use_only_metrics_the_operator_exports() -> None:
    families = {family.name for family in metrics.REGISTRY.collect()}
    exported = families | {f"{name}_total" for name in families}
    for rule in alerts():
        used = set(re.findall(r"\b(overseer_[a-z_]+)", rule["expr"]))
        assert used <= exported, (rule["alert"], used - exported)
