"""Kubernetes credentials: the pod's ServiceAccount in a cluster, else the current kubeconfig.

One loader for both API clients of the operator: kopf's (registered as its login handler, so
kopf and the monitors' own client always agree) and ``kube.KubeApi``. It returns a
``kopf.ConnectionInfo``, which already knows how to become an SSL context and an
``Authorization`` header.

It covers what an operator meets: in-cluster ServiceAccount tokens (re-read when they rotate), and
kubeconfigs with several files in ``KUBECONFIG``, the current context, CA/client certificates as
files (relative to the kubeconfig) or inline data, ``insecure-skip-tls-verify``, ``token``,
``tokenFile``, basic auth and ``exec`` credential plugins (EKS, GKE, AKS, OIDC helpers). The
legacy ``auth-provider`` stanza is read only for a token it already holds.
"""

from __future__ import annotations

import json
import os
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import kopf
import yaml

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
# A rotated ServiceAccount token is re-read after this long (the kubelet refreshes the projected
# file well before expiry; client-go re-reads it every minute too).
TOKEN_FILE_REFRESH = timedelta(minutes=1)


class CredentialsError(Exception):
    """No usable credentials: no ServiceAccount and no (valid) kubeconfig."""


def load_credentials() -> kopf.ConnectionInfo:
    """In-cluster credentials when the pod has a ServiceAccount token, else the kubeconfig's."""
    if _in_cluster():
        return _service_account()
    return _kubeconfig()


def login(**_: Any) -> kopf.ConnectionInfo:
    """kopf's login handler: the same credentials the monitors' own client uses."""
    try:
        return load_credentials()
    except CredentialsError as error:
        raise kopf.LoginError(str(error)) from error


def _in_cluster() -> bool:
    return (
        bool(os.environ.get("KUBERNETES_SERVICE_HOST"))
        and (SERVICE_ACCOUNT_DIR / "token").is_file()
    )


def _service_account() -> kopf.ConnectionInfo:
    host = os.environ["KUBERNETES_SERVICE_HOST"]
    port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
    if ":" in host:  # IPv6
        host = f"[{host}]"
    namespace_file = SERVICE_ACCOUNT_DIR / "namespace"
    ca_file = SERVICE_ACCOUNT_DIR / "ca.crt"
    return kopf.ConnectionInfo(
        server=f"https://{host}:{port}",
        ca_path=str(ca_file) if ca_file.is_file() else None,
        token=(SERVICE_ACCOUNT_DIR / "token").read_text(encoding="utf-8").strip(),
        default_namespace=(
            namespace_file.read_text(encoding="utf-8").strip() if namespace_file.is_file() else None
        ),
        expiration=datetime.now(UTC) + TOKEN_FILE_REFRESH,
    )


def _kubeconfig_paths() -> list[Path]:
    value = os.environ.get("KUBECONFIG", "")
    paths = [Path(path).expanduser() for path in value.split(os.pathsep) if path.strip()]
    if not paths:
        default = Path("~/.kube/config").expanduser()
        if not default.is_file():
            raise CredentialsError(
                "no Kubernetes credentials: not in a cluster, KUBECONFIG is not set "
                "and ~/.kube/config does not exist"
            )
        paths = [default]
    return paths


def _kubeconfig() -> kopf.ConnectionInfo:
    # As kubectl merges them: the first file to set a value, or to name an entry, wins.
    current: str | None = None
    entries: dict[str, dict[str, tuple[dict[str, Any], Path]]] = {
        "contexts": {},
        "clusters": {},
        "users": {},
    }
    for path in _kubeconfig_paths():
        try:
            config = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except FileNotFoundError:
            continue  # kubectl skips a missing file in a KUBECONFIG list
        except (OSError, yaml.YAMLError) as error:
            raise CredentialsError(f"cannot read kubeconfig {path}: {error}") from error
        current = current or config.get("current-context")
        for section, kind in (("contexts", "context"), ("clusters", "cluster"), ("users", "user")):
            for item in config.get(section) or ():
                entries[section].setdefault(item["name"], (item.get(kind) or {}, path.parent))
    if not current:
        raise CredentialsError("the kubeconfig sets no current-context")
    try:
        context, _ = entries["contexts"][current]
        cluster, cluster_dir = entries["clusters"][context["cluster"]]
    except KeyError as error:
        raise CredentialsError(f"kubeconfig context {current!r}: no {error}") from error
    user, user_dir = entries["users"].get(context.get("user", ""), ({}, Path()))

    token = user.get("token")
    if not token and user.get("tokenFile"):
        token = _relative(user_dir, user["tokenFile"]).read_text(encoding="utf-8").strip()
    if not token:
        token = ((user.get("auth-provider") or {}).get("config") or {}).get("access-token")
    certificate_path = _optional_path(user_dir, user.get("client-certificate"))
    certificate_data = user.get("client-certificate-data")
    key_path = _optional_path(user_dir, user.get("client-key"))
    key_data = user.get("client-key-data")
    expiration = None
    if user.get("exec"):
        issued = _exec_credential(user["exec"], cluster)
        token = issued.get("token") or token
        if issued.get("clientCertificateData"):
            certificate_path, certificate_data = None, issued["clientCertificateData"]
            key_path, key_data = None, issued["clientKeyData"]
        if issued.get("expirationTimestamp"):
            expiration = datetime.fromisoformat(
                issued["expirationTimestamp"].replace("Z", "+00:00")
            )
    if user.get("tokenFile"):
        expiration = datetime.now(UTC) + TOKEN_FILE_REFRESH

    return kopf.ConnectionInfo(
        server=cluster.get("server") or "",
        ca_path=_optional_path(cluster_dir, cluster.get("certificate-authority")),
        ca_data=cluster.get("certificate-authority-data"),
        insecure=bool(cluster.get("insecure-skip-tls-verify")),
        username=user.get("username"),
        password=user.get("password"),
        token=token,
        certificate_path=certificate_path,
        certificate_data=certificate_data,
        private_key_path=key_path,
        private_key_data=key_data,
        default_namespace=context.get("namespace"),
        proxy_url=cluster.get("proxy-url"),
        expiration=expiration,
    )


def _relative(base: Path, value: str) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else base / path


def _optional_path(base: Path, value: str | None) -> str | None:
    return str(_relative(base, value)) if value else None


def _exec_credential(spec: dict[str, Any], cluster: dict[str, Any]) -> dict[str, Any]:
    """Run a client-go credential plugin and return its ``ExecCredential.status``."""
    api_version = spec.get("apiVersion", "client.authentication.k8s.io/v1")
    request: dict[str, Any] = {
        "apiVersion": api_version,
        "kind": "ExecCredential",
        "spec": {"interactive": False},
    }
    if spec.get("provideClusterInfo"):
        request["spec"]["cluster"] = {
            key: value
            for key, value in {
                "server": cluster.get("server"),
                "certificate-authority-data": cluster.get("certificate-authority-data"),
                "insecure-skip-tls-verify": cluster.get("insecure-skip-tls-verify"),
            }.items()
            if value is not None
        }
    env = {**os.environ, "KUBERNETES_EXEC_INFO": json.dumps(request)}
    env.update({item["name"]: item["value"] for item in spec.get("env") or ()})
    command = [spec["command"], *(spec.get("args") or ())]
    try:
        done = subprocess.run(
            command, env=env, capture_output=True, text=True, timeout=60, check=True
        )
        status = json.loads(done.stdout).get("status") or {}
    except (OSError, subprocess.SubprocessError, ValueError) as error:
        raise CredentialsError(f"kubeconfig exec plugin {spec['command']!r}: {error}") from error
    if not isinstance(status, dict) or not (status.get("token") or status.get("clientKeyData")):
        raise CredentialsError(f"kubeconfig exec plugin {spec['command']!r} returned no credential")
    return status
