"""deploy/monitoring as kustomize renders it: the ServiceMonitor finds the operator's pods and port,
and the dashboard ConfigMap carries the dashboard file as it is."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.testbed  # kubectl comes from the test bed's build


def rendered(kubectl, path: Path) -> dict[str, dict[str, Any]]:
    documents = yaml.safe_load_all(kubectl("kustomize", str(path)).stdout)
    return {document["kind"]: document for document in documents if document}


def test_the_service_monitor_scrapes_the_deployments_metrics_port(kubectl) -> None:
    monitoring = rendered(kubectl, ROOT / "deploy" / "monitoring")
    base = rendered(kubectl, ROOT / "deploy")
    assert set(monitoring) == {"Service", "ServiceMonitor", "PrometheusRule", "ConfigMap"}
    pod = base["Deployment"]["spec"]["template"]
    service, monitor = monitoring["Service"], monitoring["ServiceMonitor"]
    namespace = base["Deployment"]["metadata"]["namespace"]
    assert {item["metadata"]["namespace"] for item in monitoring.values()} == {namespace}

    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    (container,) = pod["spec"]["containers"]
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    (service_port,) = service["spec"]["ports"]
    assert service_port["targetPort"] in ports
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == service_port["name"]
    assert endpoint["honorLabels"] is True  # keeps the exchange's `namespace` label
    # The alerts select job="overseer-operator": the Prometheus Operator names the job after the
    # Service.
    assert service["metadata"]["name"] == "overseer-operator"
    (group,) = monitoring["PrometheusRule"]["spec"]["groups"]
    (down,) = [rule for rule in group["rules"] if rule["alert"] == "OverseerOperatorDown"]
    assert 'job="overseer-operator"' in down["expr"]


def test_the_dashboard_config_map_is_the_dashboard_file(kubectl) -> None:
    config_map = rendered(kubectl, ROOT / "deploy" / "monitoring")["ConfigMap"]
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = ROOT / "deploy" / "monitoring" / "dashboards" / "overseer-operator.json"
    assert json.loads(config_map["data"]["overseer-operator.json"]) == json.loads(
        dashboard.read_text(encoding="utf-8")
    )
