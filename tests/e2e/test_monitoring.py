"""End to end: a real Prometheus (built from the Go module by scripts/build-prometheus) scrapes the
operator, evaluates deploy/monitoring's alerting rules, and runs every query of the dashboard.

The rules are the PrometheusRule's own, with every ``for:`` cut to 2 s so that the test takes
seconds, not minutes (promtool's unit tests, tests/monitoring, hold the real durations).
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
import yaml

from tests.fixtures.monitoring import Prometheus
from tests.fixtures.operator import apply_exchange, eventually, publish

pytestmark = [pytest.mark.testbed, pytest.mark.usefixtures("crd_installed")]

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "deploy" / "monitoring"
SHORT = {"inactiveAfter": "3s", "offlineAfter": "6s"}
# Gauges and counters whose series need what this scenario does not do (a queue backlog the
# consumer cannot keep up with, a task crash). The dashboard's queries on them must still parse,
# and Prometheus must know the metric families from the scrape.
NOT_EXERCISED_HERE = {
    "overseer_queue_backlog_messages",
    "overseer_verdicts_held",
    "overseer_task_crashes_total",
}


def rules_with_short_for(directory: Path) -> Path:
    spec = yaml.safe_load((MONITORING / "prometheusrule.yaml").read_text(encoding="utf-8"))["spec"]
    for group in spec["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = "2s"
    path = directory / "overseer-operator.rules.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    return path


def firing(prometheus: Prometheus, name: str) -> list[dict]:
    return [alert for alert in prometheus.alerts(name) if alert["state"] == "firing"]


def test_offline_alert_fires_and_resolves_and_every_dashboard_query_answers(
    kubectl, namespace, manager, exchange, workers, start_operator, start_prometheus, amqp_url,
    tmp_path,
):  # fmt: skip
    apply_exchange(
        kubectl, namespace, "watched", exchange, thresholds=SHORT, manager={"refreshInterval": "1h"}
    )
    workers.alive.update({"builder-1": "builder", "builder-2": "builder"})
    operator = start_operator(namespace)
    prometheus = start_prometheus(operator.metrics_targets, [rules_with_short_for(tmp_path)])
    active = f'sum(overseer_workers{{namespace="{namespace}", name="watched", state="active"}})'
    eventually(
        lambda: [s["value"][1] for s in prometheus.query(active)] == ["3"],
        timeout=60,
        what="Prometheus sees 3 active workers (2 and the operator)",
    )
    rules = {rule["name"]: rule for g in prometheus.api("rules")["groups"] for rule in g["rules"]}
    assert all(rule["health"] == "ok" for rule in rules.values()), rules
    # Quiet once the operator is scraped (absent(up) may fire in the second before the first
    # scrape, with `for` cut to 2 s).
    for quiet in ("OverseerWorkersOffline", "OverseerOperatorDown", "OverseerExchangeNotConsuming"):
        eventually(lambda q=quiet: prometheus.alerts(q) == [], timeout=20, what=f"{quiet} quiet")

    del workers.alive["builder-2"]  # offline after 6 s, the alert 2 s after that
    (alert,) = eventually(
        lambda: firing(prometheus, "OverseerWorkersOffline"), timeout=60, what="the alert fires"
    )
    assert alert["labels"] == {
        "alertname": "OverseerWorkersOffline",
        "namespace": namespace,
        "name": "watched",
        "severity": "warning",
    }
    assert alert["annotations"]["summary"] == f"1 worker(s) offline in {namespace}/watched"

    workers.alive["builder-2"] = "builder"
    eventually(
        lambda: prometheus.alerts("OverseerWorkersOffline") == [],
        timeout=60,
        what="the alert resolves when the worker is back",
    )

    publish(amqp_url, exchange, b"\x00 not a heartbeat")  # a rejected message, for its panel
    eventually(
        lambda: prometheus.query(f'overseer_messages_rejected_total{{namespace="{namespace}"}}'),
        what="the rejected message scraped",
    )
    check_dashboard(prometheus, namespace, "watched")


def check_dashboard(prometheus: Prometheus, namespace: str, name: str) -> None:
    dashboard = json.loads(
        (MONITORING / "dashboards" / "overseer-operator.json").read_text(encoding="utf-8")
    )
    for variable in dashboard["templating"]["list"]:
        if variable["type"] != "query":
            continue
        metric, label = re.fullmatch(
            r"label_values\((.+), (\w+)\)", variable["definition"]
        ).groups()
        metric = metric.replace("$namespace", namespace)
        values = prometheus.api(f"label/{label}/values", **{"match[]": metric})
        assert {namespace, name} & set(values), (variable["name"], values)

    substitutions = {"$namespace": namespace, "$exchange": name, "$__rate_interval": "30s"}
    expressions = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets") or ():
            expression = target["expr"]
            for variable, value in substitutions.items():
                expression = expression.replace(variable, value)
            assert "$" not in expression, f"unknown variable in {panel['title']}: {expression}"
            expressions.append((panel["title"], expression))

    def used(expression: str) -> set[str]:
        return set(re.findall(r"\b(overseer_[a-z_]+)", expression))

    def unanswered() -> list[tuple[str, str]]:
        # A parse error fails at once (HTTP 400); an empty answer may only need another scrape
        # (rate() wants two samples of a series that just appeared).
        return [(title, e) for title, e in expressions if not prometheus.query(e)]

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        missing = unanswered()
        if all(used(expression) <= NOT_EXERCISED_HERE for _, expression in missing):
            break
        time.sleep(1)
    for title, expression in missing:
        assert used(expression) <= NOT_EXERCISED_HERE, f"'{title}' returns no series: {expression}"
        for metric in used(expression):
            family = metric.removesuffix("_total")
            known = prometheus.api("metadata", metric=metric) or prometheus.api(
                "metadata", metric=family
            )
            assert known, f"Prometheus does not know {metric} from the scrape"
