"""Tenant input: what ``parse_spec`` and ``resolve_connections`` refuse in a MessagingExchange,
so that a tenant reaches no Secret outside its namespace and never borrows the operator's own
credentials for a Manager of its choosing (docs/security.md)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from overseer_operator.config import (
    ConfigError,
    OperatorEnvironment,
    SecretKeyRef,
    parse_spec,
    resolve_connections,
)
from overseer_operator.heartbeat import NAME_PATTERN
from overseer_operator.model import Reason
from overseer_operator.names import DNS_SUBDOMAIN_PATTERN as SECRET_NAME_PATTERN
from overseer_operator.names import SECRET_KEY_PATTERN

SECRET_REFS = {
    "manager.oauth.clientSecretRef": lambda ref: {"manager": {"oauth": {"clientSecretRef": ref}}},
    "manager.caSecretRef": lambda ref: {"manager": {"caSecretRef": ref}},
    "amqp.urlSecretRef": lambda ref: {"amqp": {"urlSecretRef": ref}},
    "amqp.caSecretRef": lambda ref: {"amqp": {"caSecretRef": ref}},
}

BAD_SECRET_NAMES = [
    "../../kube-system/secrets/admin-token",
    "..",
    ".",
    "a/b",
    "a%2Fb",
    "Upper",
    "-leading-dash",
    "trailing-dash-",
    "under_score",
    "a..b",
    ".hidden",
    "a" * 254,
    "with space",
    "new\nline",
    "tab\t",
    "é",
]
GOOD_SECRET_NAMES = ["s", "manager-oauth", "a.b-c.d9", "0abc", "a" * 253]
BAD_SECRET_KEYS = ["a/b", "../x", "..", ".", "with space", "k" * 254, "é", "a:b"]
GOOD_SECRET_KEYS = ["client_secret", "tls.crt", "-a.b_C9", ".dotfile", "k" * 253]


def spec(**extra: Any) -> dict[str, Any]:
    return {"exchangeId": "901", "brokerId": "1", **extra}


@pytest.mark.parametrize("field", SECRET_REFS)
@pytest.mark.parametrize("name", BAD_SECRET_NAMES)
def test_a_secret_ref_name_must_be_a_dns_subdomain(field: str, name: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_spec(spec(**SECRET_REFS[field]({"name": name, "key": "k"})))
    assert caught.value.reason is Reason.INVALID_SPEC
    assert f"spec.{field}.name" in caught.value.message
    assert "DNS subdomain" in caught.value.message


@pytest.mark.parametrize("field", SECRET_REFS)
@pytest.mark.parametrize("key", BAD_SECRET_KEYS)
def test_a_secret_ref_key_must_be_a_secret_key(field: str, key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_spec(spec(**SECRET_REFS[field]({"name": "creds", "key": key})))
    assert caught.value.reason is Reason.INVALID_SPEC
    assert f"spec.{field}.key" in caught.value.message


@pytest.mark.parametrize("field", SECRET_REFS)
def test_good_secret_refs_are_accepted(field: str) -> None:
    for name in GOOD_SECRET_NAMES:
        for key in GOOD_SECRET_KEYS:
            parsed = parse_spec(spec(**SECRET_REFS[field]({"name": name, "key": key})))
            refs = (
                parsed.client_secret_ref,
                parsed.manager_ca_ref,
                parsed.amqp_url_ref,
                parsed.amqp_ca_ref,
            )
            assert SecretKeyRef(name, key) in refs


@pytest.mark.parametrize("module_type", ["", "two words", "a/b", "t" * 65, "é", "line\nbreak"])
def test_module_type_follows_the_heartbeat_type_rule(module_type: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_spec(spec(moduleType=module_type))
    assert caught.value.reason is Reason.INVALID_SPEC
    assert "spec.moduleType" in caught.value.message


def test_module_type_default_and_a_legal_one() -> None:
    assert parse_spec(spec()).module_type == "overseer"
    assert parse_spec(spec(moduleType="fleet_manager:v2.1")).module_type == "fleet_manager:v2.1"


# --- the operator's default credentials --------------------------------------------------------

DEFAULT_SECRET = "operator-default-secret"
ENV = OperatorEnvironment(
    manager_url="https://manager.example.com/api",
    login_url="https://auth.example.com/oauth/token",
    client_id="overseer",
    client_secret=DEFAULT_SECRET,
)


class Secrets:
    """A ``SecretReader`` over a dict, recording what was read."""

    def __init__(self, values: dict[tuple[str, str], str] | None = None) -> None:
        self.values = values or {}
        self.read: list[SecretKeyRef] = []

    async def __call__(self, ref: SecretKeyRef) -> str:
        self.read.append(ref)
        return self.values[(ref.name, ref.key)]


async def resolve(manager: dict[str, Any], env: OperatorEnvironment = ENV, secrets=None):
    return await resolve_connections(parse_spec(spec(manager=manager)), env, secrets or Secrets())


async def test_the_default_credentials_go_to_the_default_urls() -> None:
    connections = await resolve({})
    assert connections.manager.client_secret == DEFAULT_SECRET
    assert connections.manager.url == ENV.manager_url
    assert connections.manager.login_url == ENV.login_url
    # The same URLs spelled out in the spec (a trailing slash aside) are the defaults too.
    same = await resolve(
        {"url": ENV.manager_url + "/", "oauth": {"loginUrl": ENV.login_url, "clientId": "x"}}
    )
    assert same.manager.client_secret == DEFAULT_SECRET


@pytest.mark.parametrize(
    "manager",
    [
        {"url": "https://evil.example.net/api"},
        {"oauth": {"loginUrl": "https://evil.example.net/oauth/token"}},
        {"url": "https://manager.example.com.evil.example.net/api"},
        {"url": "https://manager.example.com@evil.example.net/api"},
        {"url": "https://manager.example.com:8443/api"},  # another port is another server
        {"url": "http://manager.example.com/api"},  # and another scheme: plain text
        {"oauth": {"loginUrl": "https://auth.example.com/oauth/token/../../steal"}},
    ],
)
async def test_the_default_credentials_never_go_to_a_url_the_tenant_chose(
    manager: dict[str, Any],
) -> None:
    with pytest.raises(ConfigError) as caught:
        await resolve(manager)
    assert caught.value.reason is Reason.INVALID_SPEC
    assert "clientSecretRef" in caught.value.message
    assert "MANAGER_ALLOWED_HOSTS" in caught.value.message
    assert DEFAULT_SECRET not in caught.value.message


async def test_a_url_without_a_default_to_compare_with_needs_its_own_secret() -> None:
    env = OperatorEnvironment(client_id="overseer", client_secret=DEFAULT_SECRET)
    with pytest.raises(ConfigError) as caught:
        await resolve(
            {"url": "https://m.example.org", "oauth": {"loginUrl": "https://m.example.org/t"}},
            env,
        )
    assert caught.value.reason is Reason.INVALID_SPEC


async def test_hosts_the_administrator_allowed_may_use_the_default_credentials() -> None:
    env = OperatorEnvironment.from_environ(
        {
            "MANAGER_URL": ENV.manager_url,
            "OAUTH_LOGIN_URL": ENV.login_url,
            "OAUTH_CLIENT_ID": "overseer",
            "OAUTH_CLIENT_SECRET": DEFAULT_SECRET,
            "MANAGER_ALLOWED_HOSTS": " Manager-EU.example.com , auth-eu.example.com:8443,",
        }
    )
    assert env.manager_allowed_hosts == frozenset(
        {"manager-eu.example.com", "auth-eu.example.com:8443"}
    )
    connections = await resolve(
        {
            "url": "https://manager-eu.example.com/api",
            "oauth": {"loginUrl": "https://auth-eu.example.com:8443/token"},
        },
        env,
    )
    assert connections.manager.client_secret == DEFAULT_SECRET
    # host:port allows that port only; a bare host allows the scheme's default port only.
    for manager in (
        {"oauth": {"loginUrl": "https://auth-eu.example.com/token"}},
        {"url": "https://manager-eu.example.com:444/api"},
    ):
        with pytest.raises(ConfigError):
            await resolve(manager, env)


async def test_a_tenant_with_its_own_secret_may_choose_any_manager() -> None:
    secrets = Secrets({("own", "secret"): "tenant-secret\n"})
    connections = await resolve(
        {
            "url": "https://tenant.example.net/api",
            "oauth": {
                "loginUrl": "https://tenant.example.net/token",
                "clientSecretRef": {"name": "own", "key": "secret"},
            },
        },
        secrets=secrets,
    )
    assert connections.manager.client_secret == "tenant-secret"
    assert secrets.read == [SecretKeyRef("own", "secret")]


@pytest.mark.parametrize("url", ["ftp://m.example.com", "file:///etc/passwd", "m.example.com"])
async def test_manager_urls_must_be_http(url: str) -> None:
    secrets = Secrets({("own", "secret"): "s"})
    oauth = {"clientSecretRef": {"name": "own", "key": "secret"}}
    for manager in ({"url": url, "oauth": oauth}, {"oauth": {**oauth, "loginUrl": url}}):
        with pytest.raises(ConfigError) as caught:
            await resolve(manager, secrets=secrets)
        assert caught.value.reason is Reason.INVALID_SPEC
        assert "http:// or https://" in caught.value.message


# --- the CRD declares the same rules, so `kubectl apply` refuses first -------------------------

CRD = Path(__file__).resolve().parents[2] / "crds" / "openaperture.io_messagingexchanges.yaml"


def spec_schema() -> dict[str, Any]:
    crd = yaml.safe_load(CRD.read_text())
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]


def secret_refs(schema: dict[str, Any], path: str = "spec") -> dict[str, dict[str, Any]]:
    found = {}
    for name, child in (schema.get("properties") or {}).items():
        if name.endswith("SecretRef"):
            found[f"{path}.{name}"] = child
        found.update(secret_refs(child, f"{path}.{name}"))
    return found


def test_the_crd_holds_every_secret_ref_to_the_code_s_rules() -> None:
    refs = secret_refs(spec_schema())
    assert set(refs) == {f"spec.{field}" for field in SECRET_REFS}
    for ref in refs.values():
        name, key = ref["properties"]["name"], ref["properties"]["key"]
        assert (name["pattern"], name["maxLength"]) == (SECRET_NAME_PATTERN, 253)
        assert (key["pattern"], key["maxLength"]) == (SECRET_KEY_PATTERN, 253)
    for name in BAD_SECRET_NAMES:
        assert len(name) > 253 or not re.search(SECRET_NAME_PATTERN, name), name
    for name in GOOD_SECRET_NAMES:
        assert re.search(SECRET_NAME_PATTERN, name), name


def test_the_crd_holds_module_type_and_urls_to_the_code_s_rules() -> None:
    schema = spec_schema()
    assert schema["properties"]["moduleType"]["pattern"] == NAME_PATTERN
    manager = schema["properties"]["manager"]["properties"]
    for url in (manager["url"], manager["oauth"]["properties"]["loginUrl"]):
        assert url["pattern"].startswith("^https?://")
        assert not re.search(url["pattern"], "file:///etc/passwd")
