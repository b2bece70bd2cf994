"""The MessagingExchange CRD and RBAC against the test bed's real kube-apiserver.

These are the server's own rules (structural schema, defaults, CEL, the status subresource, RBAC);
nothing here runs the operator.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.testbed import CRD_NAME, Kubectl

pytestmark = pytest.mark.testbed


def messaging_exchange(name: str, namespace: str, **spec: Any) -> str:
    body = {
        "apiVersion": "openaperture.io/v1alpha1",
        "kind": "MessagingExchange",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"exchangeId": "901", "brokerId": "1", **spec},
    }
    return json.dumps(body)


def get_mx(kubectl: Kubectl, namespace: str, name: str) -> dict[str, Any]:
    return json.loads(kubectl("get", "mx", name, "-n", namespace, "-o", "json").stdout)


def merge_patch(
    kubectl: Kubectl,
    namespace: str,
    name: str,
    body: dict[str, Any],
    *flags: str,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    patch = json.dumps(body)
    return kubectl(
        "patch", "mx", name, "-n", namespace, "--type=merge", "-p", patch, *flags, check=check
    )


def test_crd_is_established_with_its_names(kubectl: Kubectl, crd_installed: str) -> None:
    crd = json.loads(kubectl("get", "crd", crd_installed, "-o", "json").stdout)
    conditions = {item["type"]: item["status"] for item in crd["status"]["conditions"]}
    assert conditions["Established"] == "True"
    assert conditions["NamesAccepted"] == "True"
    assert crd["status"]["acceptedNames"]["shortNames"] == ["mx"]
    resources = kubectl("api-resources", "--api-group=openaperture.io", "-o", "name").stdout
    assert resources.split() == [CRD_NAME]


def test_valid_exchange_is_accepted_with_defaults(
    kubectl: Kubectl, crd_installed: str, namespace: str
) -> None:
    kubectl("apply", "-f", "-", input=messaging_exchange("east", namespace))

    spec = get_mx(kubectl, namespace, "east")["spec"]
    assert spec["exchangeId"] == "901"
    assert spec["thresholds"]["inactiveAfter"] == "10m"
    assert spec["thresholds"]["offlineAfter"] == "20m"
    assert spec["queues"]["systemModules"] == "system_modules"
    assert spec["moduleType"] == "overseer"
    assert spec["manager"]["refreshInterval"] == "5m"
    listed = kubectl("get", "mx", "-n", namespace, "-o", "name").stdout
    assert listed.split() == ["messagingexchange.openaperture.io/east"]


@pytest.mark.parametrize(
    ("inactive_after", "offline_after"),
    [("10m", "10m"), ("20m", "10m"), ("90s", "1m30s")],
    ids=["equal", "shorter", "equal-written-differently"],
)
def test_offline_threshold_not_after_inactive_is_refused(
    kubectl: Kubectl, crd_installed: str, namespace: str, inactive_after: str, offline_after: str
) -> None:
    thresholds = {"inactiveAfter": inactive_after, "offlineAfter": offline_after}
    body = messaging_exchange("bad", namespace, thresholds=thresholds)

    refused = kubectl("apply", "-f", "-", input=body, check=False)

    assert refused.returncode != 0
    assert "offlineAfter must be longer than thresholds.inactiveAfter" in refused.stderr
    found = kubectl("get", "mx", "bad", "-n", namespace, "--ignore-not-found", "-o", "name")
    assert found.stdout == ""


def test_offline_threshold_after_inactive_is_accepted(
    kubectl: Kubectl, crd_installed: str, namespace: str
) -> None:
    thresholds = {"inactiveAfter": "90s", "offlineAfter": "2m"}
    kubectl("apply", "-f", "-", input=messaging_exchange("quick", namespace, thresholds=thresholds))

    assert get_mx(kubectl, namespace, "quick")["spec"]["thresholds"]["offlineAfter"] == "2m"


def test_exchange_id_is_immutable(kubectl: Kubectl, crd_installed: str, namespace: str) -> None:
    kubectl("apply", "-f", "-", input=messaging_exchange("east", namespace))

    refused = merge_patch(kubectl, namespace, "east", {"spec": {"exchangeId": "902"}}, check=False)

    assert refused.returncode != 0
    assert "exchangeId is immutable" in refused.stderr
    assert get_mx(kubectl, namespace, "east")["spec"]["exchangeId"] == "901"


def test_status_is_written_only_through_its_subresource(
    kubectl: Kubectl, crd_installed: str, namespace: str
) -> None:
    kubectl("apply", "-f", "-", input=messaging_exchange("east", namespace))
    workers = {"total": 3, "active": 2, "inactive": 1, "offline": 0}

    merge_patch(
        kubectl, namespace, "east", {"status": {"workers": workers}}, "--subresource=status"
    )
    after_status = get_mx(kubectl, namespace, "east")
    assert after_status["status"]["workers"] == workers
    assert after_status["metadata"]["generation"] == 1  # a status write is not a spec change

    ignored = {"status": {"workers": {"total": 99}}, "spec": {"brokerId": "2"}}
    merge_patch(kubectl, namespace, "east", ignored)
    after_main = get_mx(kubectl, namespace, "east")
    assert after_main["spec"]["brokerId"] == "2"
    assert after_main["metadata"]["generation"] == 2
    assert after_main["status"]["workers"] == workers


READER_ROLE = {
    "apiVersion": "rbac.authorization.k8s.io/v1",
    "kind": "Role",
    "metadata": {"name": "mx-reader"},
    "rules": [
        {
            "apiGroups": ["openaperture.io"],
            "resources": ["messagingexchanges"],
            "verbs": ["get", "list", "watch"],
        }
    ],
}


def role_binding(namespace: str, service_account: str) -> dict[str, Any]:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": "mx-reader"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "mx-reader"},
        "subjects": [{"kind": "ServiceAccount", "name": service_account, "namespace": namespace}],
    }


def can_i(kubectl: Kubectl, namespace: str, verb: str, resource: str, user: str) -> str:
    answer = kubectl("auth", "can-i", verb, resource, "-n", namespace, "--as", user, check=False)
    return answer.stdout.strip()


def test_rbac_refuses_an_unbound_service_account_until_a_role_grants_it(
    kubectl: Kubectl,
    crd_installed: str,
    namespace: str,
    service_account_kubeconfig: Callable[[str, str], Path],
) -> None:
    kubectl("apply", "-f", "-", input=messaging_exchange("east", namespace))
    credentials = service_account_kubeconfig(namespace, "probe")
    user = f"system:serviceaccount:{namespace}:probe"
    whoami = kubectl(
        "auth", "whoami", "-o", "jsonpath={.status.userInfo.username}", kubeconfig=credentials
    )
    assert whoami.stdout == user

    assert can_i(kubectl, namespace, "list", "messagingexchanges.openaperture.io", user) == "no"
    refused = kubectl("get", "mx", "-n", namespace, kubeconfig=credentials, check=False)
    assert refused.returncode != 0
    assert "Forbidden" in refused.stderr
    assert f'User "{user}" cannot list resource "messagingexchanges"' in refused.stderr

    kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(READER_ROLE))
    kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(role_binding(namespace, "probe")))

    deadline = time.monotonic() + 10  # the authorizer reads RBAC objects through an informer
    while can_i(kubectl, namespace, "list", "messagingexchanges.openaperture.io", user) != "yes":
        assert time.monotonic() < deadline, "the RoleBinding never took effect"
        time.sleep(0.2)
    allowed = kubectl("get", "mx", "-n", namespace, "-o", "name", kubeconfig=credentials)
    assert allowed.stdout.split() == ["messagingexchange.openaperture.io/east"]
    # The grant is exactly the Role's: reading, not writing, and only in this namespace.
    assert can_i(kubectl, namespace, "patch", "messagingexchanges.openaperture.io", user) == "no"
    assert can_i(kubectl, "default", "list", "messagingexchanges.openaperture.io", user) == "no"
