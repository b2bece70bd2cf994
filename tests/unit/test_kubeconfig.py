"""Credential loading without the ``kubernetes`` package: kubeconfig files as kubectl reads
them, the in-cluster ServiceAccount, exec plugins; and kopf's identity for a uid without a passwd
entry."""

from __future__ import annotations

import base64
import os
import ssl
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from overseer_operator import cli, kubeconfig


def write_config(path: Path, *, context: str = "c", cluster: dict, user: dict, **extra) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "k", "cluster": cluster}],
                "users": [{"name": "u", "user": user}],
                "contexts": [{"name": context, "context": {"cluster": "k", "user": "u", **extra}}],
                "current-context": context,
            }
        ),
        encoding="utf-8",
    )
    return path


@pytest.fixture(autouse=True)
def outside_a_cluster(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setattr(kubeconfig, "SERVICE_ACCOUNT_DIR", tmp_path / "no-service-account")


def test_token_and_inline_ca(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    ca = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
    config = write_config(
        tmp_path / "config",
        cluster={
            "server": "https://10.0.0.1:6443",
            "certificate-authority-data": base64.b64encode(ca.encode()).decode(),
        },
        user={"token": "abc"},
        namespace="team-a",
    )
    monkeypatch.setenv("KUBECONFIG", str(config))
    info = kubeconfig.load_credentials()
    assert info.server == "https://10.0.0.1:6443"
    assert info.as_http_headers() == {"Authorization": "Bearer abc"}
    assert info.default_namespace == "team-a"
    assert info.insecure is False


def test_files_are_relative_to_the_kubeconfig_and_the_first_file_wins(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "token").write_text("from-file\n", encoding="utf-8")
    first = write_config(
        tmp_path / "a" / "config",
        cluster={"server": "https://first", "certificate-authority": "ca.crt"},
        user={"tokenFile": "token"},
    )
    second = write_config(
        tmp_path / "second", context="other", cluster={"server": "https://second"}, user={}
    )
    missing = tmp_path / "missing"
    monkeypatch.setenv("KUBECONFIG", os.pathsep.join(map(str, [missing, first, second])))
    info = kubeconfig.load_credentials()
    assert info.server == "https://first"
    assert info.ca_path == str(tmp_path / "a" / "ca.crt")
    assert info.token == "from-file"
    assert info.expiration is not None  # a token file is re-read, as it may rotate


def test_insecure_skip_tls_verify_gives_an_unverified_context(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config = write_config(
        tmp_path / "config",
        cluster={"server": "https://x", "insecure-skip-tls-verify": True},
        user={"username": "admin", "password": "secret"},
    )
    monkeypatch.setenv("KUBECONFIG", str(config))
    info = kubeconfig.load_credentials()
    assert info.as_ssl_context().verify_mode == ssl.CERT_NONE
    assert info.as_http_headers()["Authorization"].startswith("Basic ")


def test_exec_plugin_token(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    plugin = tmp_path / "plugin.py"
    plugin.write_text(
        "import json, os\n"
        "request = json.loads(os.environ['KUBERNETES_EXEC_INFO'])\n"
        "print(json.dumps({'apiVersion': request['apiVersion'], 'kind': 'ExecCredential',\n"
        "  'status': {'token': 'issued-' + os.environ['AUDIENCE'] + '-'\n"
        "             + request['spec']['cluster']['server'],\n"
        "             'expirationTimestamp': '2030-01-01T00:00:00Z'}}))\n",
        encoding="utf-8",
    )
    config = write_config(
        tmp_path / "config",
        cluster={"server": "https://eks"},
        user={
            "exec": {
                "apiVersion": "client.authentication.k8s.io/v1",
                "command": sys.executable,
                "args": [str(plugin)],
                "env": [{"name": "AUDIENCE", "value": "aud"}],
                "provideClusterInfo": True,
            }
        },
    )
    monkeypatch.setenv("KUBECONFIG", str(config))
    info = kubeconfig.load_credentials()
    assert info.token == "issued-aud-https://eks"
    assert info.expiration == datetime(2030, 1, 1, tzinfo=UTC)


def test_exec_plugin_failure_is_a_credentials_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config = write_config(
        tmp_path / "config",
        cluster={"server": "https://x"},
        user={"exec": {"command": sys.executable, "args": ["-c", "raise SystemExit(3)"]}},
    )
    monkeypatch.setenv("KUBECONFIG", str(config))
    with pytest.raises(kubeconfig.CredentialsError, match="exec plugin"):
        kubeconfig.load_credentials()


def test_no_credentials_at_all(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(kubeconfig.CredentialsError, match="KUBECONFIG is not set"):
        kubeconfig.load_credentials()


def test_in_cluster_service_account(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    account = tmp_path / "serviceaccount"
    account.mkdir()
    (account / "token").write_text("sa-token\n", encoding="utf-8")
    (account / "namespace").write_text("overseer-system", encoding="utf-8")
    (account / "ca.crt").write_text("unused", encoding="utf-8")
    monkeypatch.setattr(kubeconfig, "SERVICE_ACCOUNT_DIR", account)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "fd00::1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "ignored"))
    info = kubeconfig.load_credentials()
    assert info.server == "https://[fd00::1]:443"
    assert info.token == "sa-token"
    assert info.ca_path == str(account / "ca.crt")
    assert info.default_namespace == "overseer-system"
    assert info.expiration is not None  # projected tokens rotate: re-read


def test_kopf_identity_prefers_the_pod_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("POD_ID", raising=False)
    monkeypatch.setenv("POD_NAME", "overseer-operator-5d9c")
    assert cli.kopf_identity() == "overseer-operator-5d9c"
    monkeypatch.setenv("POD_ID", "kopf-own")
    assert cli.kopf_identity() == "kopf-own"


def test_kopf_identity_without_a_passwd_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    """What uid 65532 in the image meets: no USER/LOGNAME and no passwd entry (the image test
    runs the real thing; here pwd's lookup is made to fail as it does there)."""
    for variable in ("POD_ID", "POD_NAME", "LOGNAME", "USER", "LNAME", "USERNAME"):
        monkeypatch.delenv(variable, raising=False)

    def no_entry(uid: int) -> None:
        raise KeyError(f"getpwuid(): uid not found: {uid}")

    monkeypatch.setattr("pwd.getpwuid", no_entry)
    assert cli.kopf_identity().startswith(f"uid-{os.getuid()}@")


def test_the_package_does_not_depend_on_the_kubernetes_client() -> None:
    import tomllib

    pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
    dependencies = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]["dependencies"]
    assert not [d for d in dependencies if d.split(">")[0].split("=")[0].strip() == "kubernetes"]
    for module in Path(kubeconfig.__file__).parent.glob("*.py"):
        text = module.read_text(encoding="utf-8")
        assert "import kubernetes" not in text and "from kubernetes" not in text, module
