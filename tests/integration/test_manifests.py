"""The install manifests (deploy/) against the test bed's real kube-apiserver.

Rendering is kustomize's (``kubectl kustomize``); validation is the apiserver's (server-side dry
run: schemas, the CRD's CEL rules, RBAC objects); the RBAC grants are checked twice, by asking the
authorizer (``kubectl auth can-i``) and by running the real operator with the ServiceAccount's own
token. The GitOps health rules for Flux are evaluated with a CEL interpreter over the same cases as
the Argo CD health check.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cel
import pytest
import yaml

from devtools.manager_emulator import ManagerEmulator
from overseer_operator.readiness import CONFIGURATION_REASONS
from tests.fixtures.manager import CLIENT_SECRET
from tests.fixtures.operator import Exchange, Workers, apply_exchange, condition, eventually

Kubectl = Callable[..., subprocess.CompletedProcess[str]]

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
OVERLAY = DEPLOY / "overlays" / "example"
OPERATOR_NAMESPACE = "overseer-system"
OPERATOR = "overseer-operator"
SERVICE_ACCOUNT = f"system:serviceaccount:{OPERATOR_NAMESPACE}:{OPERATOR}"
MX = "messagingexchanges.openaperture.io"
CRDS = "customresourcedefinitions.apiextensions.k8s.io"


def documents(text: str) -> list[dict[str, Any]]:
    return [document for document in yaml.safe_load_all(text) if document]


def render(kubectl: Kubectl, path: Path) -> list[dict[str, Any]]:
    return documents(kubectl("kustomize", str(path)).stdout)


def find(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    (found,) = [
        item
        for item in objects
        if item["kind"] == kind and (name is None or item["metadata"]["name"] == name)
    ]
    return found


def kustomization(directory: Path, **content: Any) -> Path:
    """A kustomization in ``directory`` whose paths (relative to the repository) are rewritten
    relative to it: kustomize takes only relative paths to other kustomizations."""

    def relative(path: str) -> str:
        target = ROOT / path
        return os.path.relpath(target, directory) if target.exists() else path

    for key in ("resources", "components"):
        if key in content:
            content[key] = [relative(path) for path in content[key]]
    (directory / "kustomization.yaml").write_text(yaml.safe_dump(content), encoding="utf-8")
    return directory


def ensure_namespace(kubectl: Kubectl, name: str) -> None:
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
    kubectl("apply", "-f", "-", input=json.dumps(namespace))


# --- rendering ----------------------------------------------------------------------------------


@pytest.mark.testbed
def test_base_renders_the_operator_in_its_namespace(kubectl: Kubectl) -> None:
    objects = render(kubectl, DEPLOY)
    kinds = sorted((item["kind"], item["metadata"]["name"]) for item in objects)
    assert [kind for kind, _ in kinds] == sorted([
        "ClusterRole", "ClusterRoleBinding", "ConfigMap", "CustomResourceDefinition",
        "Deployment", "Namespace", "PodDisruptionBudget", "Role", "RoleBinding", "ServiceAccount",
    ])  # fmt: skip
    assert find(objects, "Namespace")["metadata"]["name"] == OPERATOR_NAMESPACE
    cluster_scoped = {"Namespace", "CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding"}
    for item in objects:
        if item["kind"] not in cluster_scoped:
            assert item["metadata"]["namespace"] == OPERATOR_NAMESPACE, item["metadata"]
    for binding in (find(objects, "ClusterRoleBinding"), find(objects, "RoleBinding")):
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": OPERATOR, "namespace": OPERATOR_NAMESPACE}
        ]


@pytest.mark.testbed
def test_base_deployment_is_two_hardened_replicas_sharing_the_exchanges(kubectl: Kubectl) -> None:
    objects = render(kubectl, DEPLOY)
    deployment = find(objects, "Deployment", OPERATOR)
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]

    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"] == {
        "type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }  # fmt: skip
    budget = find(objects, "PodDisruptionBudget", OPERATOR)
    assert budget["spec"]["maxUnavailable"] == 1
    assert budget["spec"]["selector"] == deployment["spec"]["selector"]
    assert pod["serviceAccountName"] == OPERATOR
    assert pod["terminationGracePeriodSeconds"] == 60
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
    assert {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}} in pod["volumes"]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "healthz"}
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports == {"healthz": 8080, "metrics": 9090}
    assert container["args"][:2] == ["run", "--all-namespaces"]
    assert set(container["resources"]) == {"requests", "limits"}
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == "9090"

    env = {item["name"]: item for item in container["env"]}
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    assert env["SHARDING"]["value"] == "on"
    assert env["OAUTH_CLIENT_SECRET"]["valueFrom"]["secretKeyRef"] == {
        "name": "overseer-manager-credentials", "key": "OAUTH_CLIENT_SECRET", "optional": True,
    }  # fmt: skip
    (config_ref,) = container["envFrom"]
    config = find(objects, "ConfigMap")
    assert config_ref["configMapRef"]["name"] == config["metadata"]["name"]
    assert config["data"] == {"LOG_LEVEL": "INFO"}


@pytest.mark.testbed
def test_overlay_moves_everything_to_its_namespace_and_sets_the_site(kubectl: Kubectl) -> None:
    objects = render(kubectl, OVERLAY)
    assert find(objects, "Namespace")["metadata"]["name"] == "openaperture"
    for binding in (find(objects, "ClusterRoleBinding"), find(objects, "RoleBinding")):
        assert binding["subjects"][0]["namespace"] == "openaperture"
    (container,) = find(objects, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "registry.example.com/openaperture/overseer-operator:0.1.0"
    config = find(objects, "ConfigMap")
    assert container["envFrom"][0]["configMapRef"]["name"] == config["metadata"]["name"]
    assert config["data"]["MANAGER_URL"] == "https://manager.example.com"
    sample = find(objects, "MessagingExchange")
    secret_ref = sample["spec"]["manager"]["oauth"]["clientSecretRef"]
    assert find(objects, "Secret", secret_ref["name"])["metadata"]["namespace"] == "openaperture"

    def named(items: list[dict[str, Any]]) -> set[tuple[str, str]]:
        # The Namespace is renamed and the ConfigMap's hash differs; both were checked above.
        renamed = {"Namespace", "ConfigMap"}
        return {(i["kind"], i["metadata"]["name"]) for i in items if i["kind"] not in renamed}

    assert named(render(kubectl, DEPLOY)) <= named(objects), "the overlay installs the whole base"


@pytest.mark.testbed
def test_ca_bundles_component_mounts_the_bundles(kubectl: Kubectl, tmp_path: Path) -> None:
    site = kustomization(
        tmp_path, resources=["deploy"], components=["deploy/components/ca-bundles"]
    )
    pod = find(render(kubectl, site), "Deployment")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {item["name"]: item.get("value") for item in container["env"]}
    mount = next(m for m in container["volumeMounts"] if m["name"] == "ca-bundles")
    assert env["MANAGER_CA_BUNDLE"] == f"{mount['mountPath']}/manager-ca.crt"
    assert env["AMQP_CA_BUNDLE"] == f"{mount['mountPath']}/amqp-ca.crt"
    assert {"name": "ca-bundles", "configMap": {"name": "overseer-ca-bundles"}} in pod["volumes"]
    assert "POD_NAME" in env, "the component adds to the base's env, it does not replace it"


@pytest.mark.testbed
def test_argocd_component_registers_the_health_check(kubectl: Kubectl, tmp_path: Path) -> None:
    # As Argo CD's install.yaml ships it: argocd-cm without a namespace; the kustomization sets it.
    argocd_cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "argocd-cm"},
                 "data": {"url": "https://argocd.example.com"}}  # fmt: skip
    (tmp_path / "argocd-cm.yaml").write_text(yaml.safe_dump(argocd_cm), encoding="utf-8")
    site = kustomization(
        tmp_path, namespace="argocd", resources=["argocd-cm.yaml"], components=["deploy/argocd"]
    )
    rendered = find(render(kubectl, site), "ConfigMap", "argocd-cm")
    script = (DEPLOY / "argocd" / "health.lua").read_text(encoding="utf-8")
    assert rendered["data"] == {
        "url": "https://argocd.example.com",
        "resource.customizations.health.openaperture.io_MessagingExchange": script,
    }


@pytest.mark.testbed
def test_flux_example_patch_applies_to_the_base(kubectl: Kubectl, tmp_path: Path) -> None:
    # Flux wraps spec.path in a kustomization with the Kustomization's images and patches.
    flux = flux_documents()
    operator = next(
        d for d in flux if d["kind"] == "Kustomization" and d["spec"]["path"] == "./deploy"
    )
    site = kustomization(
        tmp_path, resources=["deploy"], images=operator["spec"]["images"],
        patches=operator["spec"]["patches"],
    )  # fmt: skip
    (container,) = find(render(kubectl, site), "Deployment")["spec"]["template"]["spec"][
        "containers"
    ]
    env = {item["name"]: item.get("value") for item in container["env"]}
    assert env["MANAGER_URL"] == "https://manager.example.com"
    assert env["OAUTH_CLIENT_ID"] == "overseer"
    assert "POD_NAMESPACE" in env
    assert container["image"].startswith("registry.example.com/openaperture/overseer-operator:")


# --- the apiserver ------------------------------------------------------------------------------


@pytest.mark.testbed
@pytest.mark.usefixtures("crd_installed")
@pytest.mark.parametrize(
    ("path", "namespace"), [(DEPLOY, OPERATOR_NAMESPACE), (OVERLAY, "openaperture")]
)
def test_server_side_dry_run_accepts(kubectl: Kubectl, path: Path, namespace: str) -> None:
    # A dry run creates nothing, so the namespaced objects need their namespace to exist already.
    ensure_namespace(kubectl, namespace)
    applied = kubectl("apply", "-k", str(path), "--dry-run=server", check=False)
    assert applied.returncode == 0, applied.stderr
    assert "(server dry run)" in applied.stdout


@pytest.fixture(scope="module")
def installed(kubectl: Kubectl, crd_installed: Any) -> None:
    """The base applied for real, as `kubectl apply -k deploy/` does it. The test bed has no
    kubelet, so the Deployment's pod never runs; the tests act as its ServiceAccount instead."""
    kubectl("apply", "-k", str(DEPLOY))


def can_i(kubectl: Kubectl, verb: str, resource: str, scope: str) -> bool:
    args = ["auth", "can-i", verb, resource, f"--as={SERVICE_ACCOUNT}"]
    resource_name, _, subresource = resource.partition("/")
    if subresource:
        args[3] = resource_name
        args.append(f"--subresource={subresource}")
    args += ["--all-namespaces"] if scope == "*" else [] if scope == "" else ["-n", scope]
    answer = kubectl(*args, check=False)
    assert answer.stdout.strip() in ("yes", "no"), answer.stderr
    return answer.stdout.strip() == "yes"


# (verb, resource, namespace): "*" is every namespace at once, "" a cluster-scoped resource.
ALLOWED = [
    ("list", MX, "*"), ("watch", MX, "*"), ("get", MX, "team-a"), ("patch", MX, "team-a"),
    ("get", f"{MX}/status", "team-a"), ("patch", f"{MX}/status", "team-a"),
    ("update", f"{MX}/status", "team-a"),
    ("get", "secrets", "team-a"),
    ("create", "events", "team-a"), ("patch", "events", "team-a"),
    ("create", "events.events.k8s.io", "team-a"),
    ("list", CRDS, ""), ("watch", CRDS, ""),
    ("list", "namespaces", ""), ("watch", "namespaces", ""),
    ("create", MX, OPERATOR_NAMESPACE),
    *[(verb, "leases.coordination.k8s.io", OPERATOR_NAMESPACE)
      for verb in ("get", "list", "watch", "create", "update", "delete")],
]  # fmt: skip
DENIED = [
    ("create", "secrets", "team-a"), ("update", "secrets", "team-a"),
    ("patch", "secrets", "team-a"), ("delete", "secrets", "team-a"),
    ("list", "secrets", "team-a"), ("watch", "secrets", "*"),
    ("get", "pods", "team-a"), ("list", "pods", "*"), ("create", "pods/exec", "team-a"),
    ("delete", MX, "team-a"), ("deletecollection", MX, "team-a"),
    ("create", MX, "team-a"), ("create", MX, "default"),
    ("create", "deployments.apps", "team-a"), ("patch", "deployments.apps", OPERATOR_NAMESPACE),
    ("get", "configmaps", "team-a"), ("list", "configmaps", "*"),
    ("create", "configmaps", "team-a"), ("get", "configmaps", OPERATOR_NAMESPACE),
    ("create", CRDS, ""), ("delete", CRDS, ""), ("patch", "namespaces", ""),
    ("get", "kopfpeerings.kopf.dev", OPERATOR_NAMESPACE),
    ("create", "serviceaccounts/token", OPERATOR_NAMESPACE),
    ("get", "leases.coordination.k8s.io", "team-a"), ("list", "leases.coordination.k8s.io", "*"),
    ("update", "leases.coordination.k8s.io", "kube-system"),
    ("*", "*", "*"),
]  # fmt: skip


def ids(rules: list[tuple[str, str, str]]) -> list[str]:
    return [f"{verb} {resource} in {scope or 'cluster'}" for verb, resource, scope in rules]


@pytest.mark.testbed
@pytest.mark.usefixtures("installed")
@pytest.mark.parametrize(("verb", "resource", "scope"), ALLOWED, ids=ids(ALLOWED))
def test_service_account_may(kubectl: Kubectl, verb: str, resource: str, scope: str) -> None:
    assert can_i(kubectl, verb, resource, scope)


@pytest.mark.testbed
@pytest.mark.usefixtures("installed")
@pytest.mark.parametrize(("verb", "resource", "scope"), DENIED, ids=ids(DENIED))
def test_service_account_may_not(kubectl: Kubectl, verb: str, resource: str, scope: str) -> None:
    assert not can_i(kubectl, verb, resource, scope)


@pytest.fixture
def operator_kubeconfig(
    installed: None, service_account_kubeconfig: Callable[[str, str], Path]
) -> Path:
    return service_account_kubeconfig(OPERATOR_NAMESPACE, OPERATOR)


@pytest.mark.testbed
def test_service_account_token_reads_secrets_by_name_only(
    kubectl: Kubectl, namespace: str, operator_kubeconfig: Path
) -> None:
    kubectl("create", "secret", "generic", "oauth", "-n", namespace, "--from-literal=k=v")

    def as_operator(*args: str) -> subprocess.CompletedProcess[str]:
        return kubectl(*args, check=False, kubeconfig=operator_kubeconfig)

    assert as_operator("get", "secret", "oauth", "-n", namespace).returncode == 0
    assert as_operator("get", "mx", "--all-namespaces").returncode == 0
    for denied in (
        ("get", "secrets", "-n", namespace),
        ("create", "secret", "generic", "x", "-n", namespace, "--dry-run=server"),
        ("get", "pods", "-n", namespace),
        ("get", "configmaps", "-n", OPERATOR_NAMESPACE),
    ):
        result = as_operator(*denied)
        assert result.returncode != 0 and "forbidden" in result.stderr.lower(), denied


@pytest.mark.testbed
def test_the_operator_runs_with_exactly_the_granted_permissions(
    kubectl: Kubectl,
    namespace: str,
    exchange: Exchange,
    manager: ManagerEmulator,
    workers: Workers,
    start_operator: Callable[..., Any],
    operator_kubeconfig: Path,
) -> None:
    # The OAuth client secret comes only from a Secret in the exchange's namespace, so the
    # exchange can be Ready only if the ServiceAccount may read it.
    kubectl("create", "secret", "generic", "manager-oauth", "-n", namespace,
            f"--from-literal=clientSecret={CLIENT_SECRET}")  # fmt: skip
    secret_ref = {"name": "manager-oauth", "key": "clientSecret"}
    apply_exchange(
        kubectl, namespace, "rbac", exchange, manager={"oauth": {"clientSecretRef": secret_ref}}
    )
    workers.alive["builder-rbac"] = "builder"
    seed_id = f"rbac-{namespace}"[:64]
    operator = start_operator(
        namespace,
        KUBECONFIG=str(operator_kubeconfig),
        POD_NAMESPACE=OPERATOR_NAMESPACE,
        SHARDING="on",  # as deployed: its Leases in the operator's namespace
        OAUTH_CLIENT_SECRET="",
        EXCHANGE_ID=seed_id,
        BROKER_ID="1",
    )
    seeded = f"exchange-{seed_id}"
    try:
        # What a user (or Flux's kstatus) waits on.
        kubectl("wait", "--for=condition=Ready", "mx/rbac", "-n", namespace, "--timeout=90s")

        def ready() -> bool:
            resource = json.loads(
                kubectl("get", "mx", "rbac", "-n", namespace, "-o", "json").stdout
            )
            ready_condition = condition(resource, "Ready") or {}
            assert ready_condition.get("status") == "True", ready_condition
            return resource["status"]["workers"]["active"] >= 1

        eventually(ready, timeout=90, what="the exchange to become Ready as the ServiceAccount")
        registered = {"hostname": "builder-rbac", "status": "active"}
        eventually(
            lambda: any(row.items() >= registered.items()
                        for row in manager.modules(exchange.exchange_id)),
            timeout=30, what="the worker registered in the Manager",
        )  # fmt: skip
        eventually(
            lambda: "WorkerActive" in kubectl("get", "events", "-n", namespace).stdout,
            timeout=30, what="the operator's WorkerActive event",
        )  # fmt: skip
        # The legacy seed: created in the operator's own namespace through the Role.
        eventually(
            lambda: kubectl("get", "mx", seeded, "-n", OPERATOR_NAMESPACE, check=False).returncode
            == 0,
            timeout=30, what=f"the seeded MessagingExchange {seeded}",
        )  # fmt: skip
        # Deleting needs the operator to remove its finalizer (a patch) after shutting down.
        kubectl("delete", "mx", "rbac", "-n", namespace, "--wait=true", "--timeout=60s")
    finally:
        kubectl("delete", "mx", seeded, "-n", OPERATOR_NAMESPACE, "--ignore-not-found")
    refusals = re.findall(r".*(?:[Ff]orbidden|Not enough permissions).*", operator.logs())
    assert not refusals, "\n".join(refusals[:10])


# --- Flux health expressions ----------------------------------------------------------------------


def flux_documents() -> list[dict[str, Any]]:
    return documents((DEPLOY / "flux" / "overseer-operator.yaml").read_text(encoding="utf-8"))


def flux_health_check() -> dict[str, str]:
    exchanges = next(
        d
        for d in flux_documents()
        if d["kind"] == "Kustomization" and "healthCheckExprs" in d["spec"]
    )
    (check,) = exchanges["spec"]["healthCheckExprs"]
    assert (check["apiVersion"], check["kind"]) == ("openaperture.io/v1alpha1", "MessagingExchange")
    assert exchanges["spec"]["wait"] is True
    return check


def flux_verdict(check: dict[str, str], resource: dict[str, Any]) -> str:
    """What kustomize-controller concludes: the first expression that is true, in Flux's order;
    an expression that cannot be evaluated yet (a missing field) leaves it waiting."""
    for expression, verdict in (
        ("inProgress", "InProgress"),
        ("failed", "Failed"),
        ("current", "Current"),
    ):
        try:
            if cel.evaluate(check[expression], resource) is True:
                return verdict
        except (RuntimeError, KeyError):  # evaluation errors; a syntax error (ValueError) fails
            return "InProgress"
    return "InProgress"


ARGOCD_CASES = yaml.safe_load((DEPLOY / "argocd" / "health_test.yaml").read_text(encoding="utf-8"))[
    "tests"
]
ARGO_TO_FLUX = {"Healthy": "Current", "Degraded": "Failed", "Progressing": "InProgress"}


@pytest.mark.parametrize(
    "case",
    # kstatus reports a resource being deleted as Terminating before any expression is evaluated.
    [case for case in ARGOCD_CASES if "deleting" not in case["inputPath"]],
    ids=lambda case: Path(case["inputPath"]).stem,
)
def test_flux_health_expressions_agree_with_the_argocd_check(case: dict[str, Any]) -> None:
    resource = yaml.safe_load((DEPLOY / "argocd" / case["inputPath"]).read_text(encoding="utf-8"))
    expected = ARGO_TO_FLUX[case["healthStatus"]["status"]]
    assert flux_verdict(flux_health_check(), resource) == expected


@pytest.mark.parametrize("reason", sorted(CONFIGURATION_REASONS))
def test_flux_fails_on_every_configuration_reason(reason: str) -> None:
    resource = {
        "metadata": {"generation": 1},
        "status": {"observedGeneration": 1, "conditions": [
            {"type": "Ready", "status": "False", "reason": reason, "message": "fix me"},
        ]},
    }  # fmt: skip
    assert flux_verdict(flux_health_check(), resource) == "Failed"


def test_operations_docs_show_the_flux_health_check() -> None:
    docs = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
    snippets = [
        yaml.safe_load(block)
        for block in re.findall(r"```yaml\n(.*?)```", docs, re.DOTALL)
        if "healthCheckExprs" in block
    ]
    assert snippets == [{"wait": True, "healthCheckExprs": [flux_health_check()]}]
