"""Configuration: the spec (with its defaults and errors), the environment filling its gaps, and
Secrets read with failures a user can act on."""

from __future__ import annotations

import base64
import re
from dataclasses import fields
from pathlib import Path

import certifi
import pytest

from overseer_operator import defaults
from overseer_operator.config import (
    ExchangeSpec,
    OperatorEnvironment,
    SecretKeyRef,
    parse_spec,
    resolve_connections,
    secret_reader,
)
from overseer_operator.kube import KubeApiError
from overseer_operator.model import ConfigError, Reason, Thresholds
from tests.kube_fakes import FakeKube

MINIMAL = {"exchangeId": "1", "brokerId": "7"}
# Real PEM certificates (a CA bundle must load), three different ones.
MANAGER_CA, BROKER_CA, ENV_BROKER_CA = re.findall(
    r"-----BEGIN CERTIFICATE-----\n.*?-----END CERTIFICATE-----\n",
    Path(certifi.where()).read_text(encoding="ascii"),
    re.DOTALL,
)[:3]


def b64(text: str | bytes) -> str:
    raw = text.encode() if isinstance(text, str) else text
    return base64.b64encode(raw).decode()


def config_error(spec: dict) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        parse_spec(spec)
    return caught.value


# parse_spec


def test_a_minimal_spec_takes_every_default():
    spec = parse_spec(MINIMAL)
    assert spec == ExchangeSpec(exchange_id="1", broker_id="7")
    assert (spec.module_type, spec.queue, spec.prefetch) == (
        defaults.MODULE_TYPE,
        defaults.QUEUE,
        defaults.PREFETCH,
    )
    assert spec.thresholds == Thresholds(
        defaults.INACTIVE_AFTER, defaults.OFFLINE_AFTER, defaults.FORGET_AFTER
    )
    assert spec.refresh_interval == defaults.REFRESH_INTERVAL
    unset = (
        "manager_url",
        "login_url",
        "client_id",
        "client_secret_ref",
        "manager_ca_ref",
        "amqp_url_ref",
        "amqp_ca_ref",
    )
    assert [getattr(spec, name) for name in unset] == [None] * len(unset)


def test_explicit_defaults_parse_like_absent_ones():
    spec = parse_spec(
        {
            **MINIMAL,
            "queues": {},
            "thresholds": {"inactiveAfter": "", "offlineAfter": None},
            "manager": {"url": "", "oauth": {}},
            "amqp": None,
        }
    )
    assert spec == parse_spec(MINIMAL)


def test_a_full_spec():
    spec = parse_spec(
        {
            "exchangeId": " 12 ",
            "brokerId": 3,
            "moduleType": "overseer-b",
            "queues": {"systemModules": "aws:us-east-1.system_modules"},
            "thresholds": {"inactiveAfter": "90s", "offlineAfter": "1m40s", "forgetAfter": "0s"},
            "manager": {
                "url": "https://manager.example",
                "refreshInterval": "0s",
                "caSecretRef": {"name": "manager-ca", "key": "ca.crt"},
                "oauth": {
                    "loginUrl": "https://auth.example/token",
                    "clientId": "overseer",
                    "clientSecretRef": {"name": "oauth", "key": "secret"},
                },
            },
            "amqp": {
                "prefetch": 50,
                "urlSecretRef": {"name": "broker", "key": "url"},
                "caSecretRef": {"name": "broker-ca", "key": "ca.crt"},
            },
        }
    )
    assert spec == ExchangeSpec(
        exchange_id="12",
        broker_id="3",
        module_type="overseer-b",
        queue="aws:us-east-1.system_modules",
        prefetch=50,
        thresholds=Thresholds(90.0, 100.0, 0.0),
        refresh_interval=0.0,
        manager_url="https://manager.example",
        login_url="https://auth.example/token",
        client_id="overseer",
        client_secret_ref=SecretKeyRef("oauth", "secret"),
        manager_ca_ref=SecretKeyRef("manager-ca", "ca.crt"),
        amqp_url_ref=SecretKeyRef("broker", "url"),
        amqp_ca_ref=SecretKeyRef("broker-ca", "ca.crt"),
    )


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ({}, "spec.exchangeId and spec.brokerId are required"),
        ({"exchangeId": "1"}, "spec.exchangeId and spec.brokerId are required"),
        ({"brokerId": "1", "exchangeId": "  "}, "spec.exchangeId and spec.brokerId are required"),
        ({**MINIMAL, "thresholds": {"inactiveAfter": "10 minutes"}}, "thresholds.inactiveAfter"),
        ({**MINIMAL, "thresholds": {"offlineAfter": "-1m"}}, "thresholds.offlineAfter"),
        ({**MINIMAL, "thresholds": {"forgetAfter": "1d"}}, "thresholds.forgetAfter"),
        ({**MINIMAL, "manager": {"refreshInterval": "5"}}, "spec.manager.refreshInterval"),
        ({**MINIMAL, "thresholds": {"inactiveAfter": "999ms"}}, "at least 1s"),
        (
            {**MINIMAL, "thresholds": {"inactiveAfter": "20m", "offlineAfter": "20m"}},
            "offlineAfter must be longer",
        ),
        (
            {**MINIMAL, "thresholds": {"inactiveAfter": "30m"}},  # against the 20m default
            "offlineAfter must be longer",
        ),
        ({**MINIMAL, "thresholds": "10m"}, "spec.thresholds must be an object"),
        ({**MINIMAL, "manager": ["x"]}, "spec.manager must be an object"),
        ({**MINIMAL, "amqp": "amqp://x"}, "spec.amqp must be an object"),
        ({**MINIMAL, "queues": "q"}, "spec.queues must be an object"),
        (
            {**MINIMAL, "amqp": {"urlSecretRef": {"name": "broker"}}},
            "spec.amqp.urlSecretRef needs both name and key",
        ),
        (
            {**MINIMAL, "amqp": {"caSecretRef": {"key": "ca.crt"}}},
            "spec.amqp.caSecretRef needs both name and key",
        ),
        (
            {**MINIMAL, "manager": {"caSecretRef": "manager-ca"}},
            "spec.manager.caSecretRef needs both name and key",
        ),
        (
            {**MINIMAL, "manager": {"oauth": {"clientSecretRef": {"name": "", "key": "k"}}}},
            "spec.manager.oauth.clientSecretRef needs both name and key",
        ),
    ],
)
def test_invalid_specs_say_what_is_wrong(spec, needle):
    error = config_error(spec)
    assert error.reason is Reason.INVALID_SPEC
    assert needle in error.message


def test_the_smallest_threshold_is_one_second():
    spec = parse_spec({**MINIMAL, "thresholds": {"inactiveAfter": "1s", "offlineAfter": "1001ms"}})
    assert (spec.thresholds.inactive_after, spec.thresholds.offline_after) == (1.0, 1.001)


def test_connection_fields_are_what_needs_new_connections():
    base = parse_spec(MINIMAL)
    in_place = parse_spec({**MINIMAL, "thresholds": {"inactiveAfter": "1m", "offlineAfter": "2m"}})
    assert in_place.connection_fields == base.connection_fields
    assert parse_spec({**MINIMAL, "manager": {"refreshInterval": "1m"}}).connection_fields == (
        base.connection_fields
    )
    for changed in (
        {**MINIMAL, "brokerId": "8"},
        {**MINIMAL, "queues": {"systemModules": "other"}},
        {**MINIMAL, "amqp": {"prefetch": 10}},
        {**MINIMAL, "moduleType": "overseer-2"},
        {**MINIMAL, "manager": {"url": "https://m2"}},
        {**MINIMAL, "manager": {"oauth": {"loginUrl": "https://a2"}}},
        {**MINIMAL, "manager": {"oauth": {"clientId": "c2"}}},
        {**MINIMAL, "manager": {"oauth": {"clientSecretRef": {"name": "s", "key": "k"}}}},
        {**MINIMAL, "manager": {"caSecretRef": {"name": "s", "key": "k"}}},
        {**MINIMAL, "amqp": {"urlSecretRef": {"name": "s", "key": "k"}}},
        {**MINIMAL, "amqp": {"caSecretRef": {"name": "s", "key": "k"}}},
    ):
        assert parse_spec(changed).connection_fields != base.connection_fields, changed


# The operator's environment


def test_environment_reads_every_variable_and_treats_empty_as_unset():
    env = OperatorEnvironment.from_environ(
        {
            "MANAGER_URL": "https://m",
            "OAUTH_LOGIN_URL": "https://a",
            "OAUTH_CLIENT_ID": "id",
            "OAUTH_CLIENT_SECRET": "s3cret",
            "MANAGER_CA_BUNDLE": "/ca/manager.pem",
            "AMQP_CA_BUNDLE": "/ca/amqp.pem",
            "POD_NAME": "overseer-0",
            "HOSTNAME": "ignored-host",
            "POD_NAMESPACE": "openaperture",
            "EXCHANGE_ID": "1",
            "BROKER_ID": "2",
            "SYSTEM_MODULES_QUEUE_NAME": "q",
            "MANAGER_WRITE_LATENESS_ALLOWED": "2m",
        }
    )
    assert env == OperatorEnvironment(
        manager_url="https://m",
        login_url="https://a",
        client_id="id",
        client_secret="s3cret",
        manager_ca_bundle="/ca/manager.pem",
        amqp_ca_bundle="/ca/amqp.pem",
        identity="overseer-0",
        namespace="openaperture",
        legacy_exchange_id="1",
        legacy_broker_id="2",
        legacy_queue="q",
        manager_write_lateness_allowed=120.0,
    )
    assert "s3cret" not in repr(env)


def test_identity_falls_back_to_the_host_name():
    assert OperatorEnvironment.from_environ({"HOSTNAME": "box"}).identity == "box"
    assert OperatorEnvironment.from_environ({"POD_NAME": "", "HOSTNAME": "box"}).identity == "box"
    assert OperatorEnvironment.from_environ({}).identity  # the machine's name, never empty


# resolve_connections: the spec first, then the environment

ENV = OperatorEnvironment(
    manager_url="https://env-manager",
    login_url="https://env-auth/token",
    client_id="env-client",
    client_secret="env-secret",
    manager_ca_bundle="/env/manager-ca.pem",
)
FULL_MANAGER_SPEC = {
    **MINIMAL,
    "manager": {
        "url": "https://spec-manager",
        "caSecretRef": {"name": "manager-ca", "key": "ca.crt"},
        "oauth": {
            "loginUrl": "https://spec-auth/token",
            "clientId": "spec-client",
            "clientSecretRef": {"name": "oauth", "key": "secret"},
        },
    },
}


@pytest.fixture
def kube() -> FakeKube:
    kube = FakeKube()
    kube.secrets["ns", "oauth"] = {"secret": b64("spec-secret\n")}
    kube.secrets["ns", "manager-ca"] = {"ca.crt": b64(MANAGER_CA)}
    kube.secrets["ns", "broker"] = {"url": b64(" amqps://u:p@broker:5671/vh \n")}
    kube.secrets["ns", "broker-ca"] = {"ca.crt": b64(BROKER_CA)}
    return kube


async def resolve(spec: dict, env: OperatorEnvironment, kube: FakeKube):
    return await resolve_connections(
        parse_spec(spec), env, secret_reader(kube.get_secret_data, "ns")
    )


async def test_the_spec_wins_over_the_environment_for_every_manager_field(kube):
    manager = (await resolve(FULL_MANAGER_SPEC, ENV, kube)).manager
    assert (manager.url, manager.login_url, manager.client_id, manager.client_secret) == (
        "https://spec-manager",
        "https://spec-auth/token",
        "spec-client",
        "spec-secret",
    )
    assert (manager.ca_data, manager.ca_bundle) == (MANAGER_CA, None)


@pytest.mark.parametrize(
    ("spec_field", "attribute", "from_env"),
    [
        ("url", "url", "https://env-manager"),
        ("loginUrl", "login_url", "https://env-auth/token"),
        ("clientId", "client_id", "env-client"),
        ("clientSecretRef", "client_secret", "env-secret"),
        ("caSecretRef", "ca_bundle", "/env/manager-ca.pem"),
    ],
)
async def test_each_field_the_spec_leaves_out_comes_from_the_environment(
    kube, spec_field, attribute, from_env
):
    manager_spec = {
        **FULL_MANAGER_SPEC["manager"],
        "oauth": {**FULL_MANAGER_SPEC["manager"]["oauth"]},
    }
    manager_spec.pop(spec_field, None)
    manager_spec["oauth"].pop(spec_field, None)
    spec_values = {
        "url": "https://spec-manager",
        "login_url": "https://spec-auth/token",
        "client_id": "spec-client",
        "client_secret": "spec-secret",
    }
    if spec_field == "clientSecretRef":
        # The operator's own secret goes only to its own Manager: the spec names that one.
        manager_spec["url"] = spec_values["url"] = ENV.manager_url
        manager_spec["oauth"]["loginUrl"] = spec_values["login_url"] = ENV.login_url
    manager = (await resolve({**MINIMAL, "manager": manager_spec}, ENV, kube)).manager
    assert getattr(manager, attribute) == from_env
    for other, value in spec_values.items():
        if other != attribute:
            assert getattr(manager, other) == value
    if spec_field == "caSecretRef":
        assert manager.ca_data is None


async def test_the_environment_alone_is_enough(kube):
    connections = await resolve(MINIMAL, ENV, kube)
    manager = connections.manager
    assert (manager.url, manager.login_url, manager.client_id, manager.client_secret) == (
        "https://env-manager",
        "https://env-auth/token",
        "env-client",
        "env-secret",
    )
    assert (connections.amqp_url, connections.amqp_ca_data) == (None, None)
    assert kube.secret_reads == []  # nothing to read


async def test_every_missing_manager_setting_is_named(kube):
    with pytest.raises(ConfigError) as caught:
        await resolve(MINIMAL, OperatorEnvironment(), kube)
    assert caught.value.reason is Reason.INVALID_SPEC
    assert caught.value.message == (
        "missing Manager settings: manager.url (or MANAGER_URL), "
        "manager.oauth.loginUrl (or OAUTH_LOGIN_URL), "
        "manager.oauth.clientId (or OAUTH_CLIENT_ID), "
        "manager.oauth.clientSecretRef (or OAUTH_CLIENT_SECRET)"
    )


async def test_a_blank_secret_counts_as_missing(kube):
    kube.secrets["ns", "oauth"] = {"secret": b64("  \n")}
    with pytest.raises(ConfigError) as caught:
        await resolve(FULL_MANAGER_SPEC, ENV, kube)
    assert "clientSecretRef (or OAUTH_CLIENT_SECRET)" in caught.value.message
    assert "MANAGER_URL" not in caught.value.message


async def test_the_broker_url_and_ca_come_from_secrets(kube):
    spec = {
        **MINIMAL,
        "amqp": {
            "urlSecretRef": {"name": "broker", "key": "url"},
            "caSecretRef": {"name": "broker-ca", "key": "ca.crt"},
        },
    }
    connections = await resolve(spec, ENV, kube)
    assert connections.amqp_url == "amqps://u:p@broker:5671/vh"
    assert connections.amqp_ca_data == BROKER_CA
    assert "u:p" not in repr(connections)


@pytest.mark.parametrize("url", ["amqp://u:p@broker/", "amqps://broker:5671"])
async def test_both_amqp_schemes_are_accepted(kube, url):
    kube.secrets["ns", "broker"] = {"url": b64(url)}
    spec = {**MINIMAL, "amqp": {"urlSecretRef": {"name": "broker", "key": "url"}}}
    assert (await resolve(spec, ENV, kube)).amqp_url == url


async def test_the_broker_ca_falls_back_to_the_environments_file(kube, tmp_path: Path):
    bundle = tmp_path / "amqp-ca.pem"
    bundle.write_text(ENV_BROKER_CA, encoding="utf-8")
    env = OperatorEnvironment(
        **{f.name: getattr(ENV, f.name) for f in fields(ENV)} | {"amqp_ca_bundle": str(bundle)}
    )
    assert (await resolve(MINIMAL, env, kube)).amqp_ca_data == ENV_BROKER_CA
    spec = {**MINIMAL, "amqp": {"caSecretRef": {"name": "broker-ca", "key": "ca.crt"}}}
    assert (await resolve(spec, env, kube)).amqp_ca_data == BROKER_CA


@pytest.mark.parametrize("url", ["http://broker", "broker:5672", "amqp:/x"])
async def test_a_broker_url_that_is_not_amqp_is_refused(kube, url):
    kube.secrets["ns", "broker"] = {"url": b64(url)}
    spec = {**MINIMAL, "amqp": {"urlSecretRef": {"name": "broker", "key": "url"}}}
    with pytest.raises(ConfigError) as caught:
        await resolve(spec, ENV, kube)
    assert caught.value.reason is Reason.INVALID_BROKER_URL
    assert "Secret 'broker' key 'url'" in caught.value.message
    assert url not in caught.value.message  # it may hold credentials


# secret_reader


@pytest.mark.parametrize(
    ("status", "reason", "needle"),
    [
        (404, Reason.SECRET_NOT_FOUND, "Secret 'oauth' not found in namespace 'ns'"),
        (403, Reason.SECRET_FORBIDDEN, "may not read Secret 'oauth' in namespace 'ns'"),
        (500, Reason.KUBERNETES_UNREACHABLE, "cannot read Secret 'oauth'"),
        (0, Reason.KUBERNETES_UNREACHABLE, "cannot read Secret 'oauth'"),
        (401, Reason.KUBERNETES_UNREACHABLE, "cannot read Secret 'oauth'"),
    ],
)
async def test_kubernetes_failures_become_condition_reasons(kube, status, reason, needle):
    kube.fail_next(KubeApiError("the API said no", status))
    read = secret_reader(kube.get_secret_data, "ns")
    with pytest.raises(ConfigError) as caught:
        await read(SecretKeyRef("oauth", "secret"))
    assert caught.value.reason is reason
    assert needle in caught.value.message


async def test_secrets_are_read_only_in_the_resources_namespace(kube):
    kube.secrets["other", "oauth"] = {"secret": b64("elsewhere")}
    read = secret_reader(kube.get_secret_data, "other")
    assert await read(SecretKeyRef("oauth", "secret")) == "elsewhere"
    assert kube.secret_reads == [("other", "oauth")]


async def test_a_missing_key_is_secret_not_found(kube):
    read = secret_reader(kube.get_secret_data, "ns")
    with pytest.raises(ConfigError) as caught:
        await read(SecretKeyRef("oauth", "clientSecret"))
    assert caught.value.reason is Reason.SECRET_NOT_FOUND
    assert caught.value.message == "Secret 'oauth' has no key 'clientSecret'"


@pytest.mark.parametrize("encoded", [b64(b"\xff\xfe not utf-8"), "***not base64***"])
async def test_a_value_that_is_not_text_is_an_invalid_spec(kube, encoded):
    kube.secrets["ns", "oauth"] = {"secret": encoded}
    read = secret_reader(kube.get_secret_data, "ns")
    with pytest.raises(ConfigError) as caught:
        await read(SecretKeyRef("oauth", "secret"))
    assert caught.value.reason is Reason.INVALID_SPEC
    assert "not UTF-8 text" in caught.value.message


async def test_secret_text_is_returned_as_stored(kube):
    kube.secrets["ns", "ca"] = {"ca.crt": b64("-----BEGIN CERTIFICATE-----\nMIIB\n")}
    read = secret_reader(kube.get_secret_data, "ns")
    assert await read(SecretKeyRef("ca", "ca.crt")) == "-----BEGIN CERTIFICATE-----\nMIIB\n"
    assert str(SecretKeyRef("ca", "ca.crt")) == "Secret 'ca' key 'ca.crt'"
