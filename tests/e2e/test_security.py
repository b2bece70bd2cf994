"""End to end: a tenant stays in its namespace and no heartbeat steers the Manager.

The operator runs as a process against the real apiserver and RabbitMQ; a second Manager emulator
plays a server the tenant controls, recording everything sent to it. docs/security.md lists what
each test proves.
"""

from __future__ import annotations

import base64
import json
import re
import time
from collections.abc import Iterator
from urllib.parse import unquote

import pytest

from devtools.manager_emulator import ManagerEmulator
from overseer_operator.heartbeat import encode_etf, encode_json
from overseer_operator.model import Heartbeat
from tests.fixtures.manager import CLIENT_SECRET
from tests.fixtures.operator import (
    apply_exchange,
    condition,
    eventually,
    get_exchange,
    manager_states,
    publish,
)
from tests.fixtures.testbed import unique_name

pytestmark = [pytest.mark.testbed, pytest.mark.usefixtures("crd_installed")]

STOLEN = "other-tenant-secret-4f1e"  # distinctive, so a leak anywhere is found


@pytest.fixture
def tenant_server() -> Iterator[ManagerEmulator]:
    """A Manager and token endpoint chosen by the tenant: it knows no client, records all."""
    with ManagerEmulator(clients={}) as emulator:
        yield emulator


@pytest.fixture
def other_namespace(kubectl) -> Iterator[str]:
    """Another tenant's namespace, holding a Secret the first tenant must never obtain."""
    name = unique_name("t", "victim")
    kubectl("create", "namespace", name)
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "stolen", "namespace": name},
        "data": {"token": base64.b64encode(STOLEN.encode()).decode()},
    }
    kubectl("apply", "-f", "-", input=json.dumps(secret))
    yield name
    kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found", check=False)


def leaked(server: ManagerEmulator, *secrets: str) -> list[str]:
    """Every request to ``server`` that carried one of ``secrets`` (body or headers)."""
    found = []
    for request in server.requests:
        text = request.raw_body.decode(errors="replace") + json.dumps(request.headers)
        if any(secret in text for secret in secrets):
            found.append(f"{request.method} {request.path}")
    return found


def test_a_secret_ref_cannot_reach_another_namespace(
    kubectl, namespace, other_namespace, manager, exchange, tenant_server, start_operator
):
    operator = start_operator(namespace)
    tenant_oauth = {
        "url": tenant_server.url,
        "oauth": {
            "loginUrl": tenant_server.login_url,
            "clientId": "tenant",
            "clientSecretRef": {"name": f"../../{other_namespace}/secrets/stolen", "key": "token"},
        },
    }
    resource = {
        "apiVersion": "openaperture.io/v1alpha1",
        "kind": "MessagingExchange",
        "metadata": {"name": "escape", "namespace": namespace},
        "spec": {
            "exchangeId": exchange.exchange_id,
            "brokerId": exchange.broker_id,
            "queues": {"systemModules": exchange.queue},
            "manager": tenant_oauth,
        },
    }
    applied = kubectl("apply", "-f", "-", input=json.dumps(resource), check=False)
    if applied.returncode == 0:  # the apiserver took it: give the operator time to act on it
        eventually(
            lambda: condition(get_exchange(kubectl, namespace, "escape"), "Ready"),
            timeout=30,
            what="the operator to judge the resource",
        )
        time.sleep(3)
    assert leaked(tenant_server, STOLEN) == [], "another namespace's Secret was sent out"
    assert applied.returncode != 0, "the CRD accepted a Secret name with a path in it"
    assert "clientSecretRef.name" in applied.stderr and "should match" in applied.stderr

    # The observation channel works: the tenant's own Secret, legitimately named, does reach
    # the tenant's server (so an exfiltration above would have been seen).
    own = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "own", "namespace": namespace},
        "stringData": {"token": "tenant-own-secret"},
    }
    kubectl("apply", "-f", "-", input=json.dumps(own))
    tenant_oauth["oauth"]["clientSecretRef"] = {"name": "own", "key": "token"}
    apply_exchange(kubectl, namespace, "own", exchange, manager=tenant_oauth)
    eventually(
        lambda: leaked(tenant_server, "tenant-own-secret"),
        what="the tenant's own secret at its own token endpoint",
    )
    assert leaked(tenant_server, STOLEN, CLIENT_SECRET) == []
    # Neither value is in the operator's log, the resource or the namespace's Events.
    visible = [
        operator.logs(),
        json.dumps(get_exchange(kubectl, namespace, "own")),
        kubectl("get", "events", "-n", namespace, "-o", "json").stdout,
    ]
    for secret in (STOLEN, "tenant-own-secret", CLIENT_SECRET):
        assert all(secret not in text for text in visible), secret


def test_the_default_credentials_never_go_to_a_tenant_s_manager(
    kubectl, namespace, manager, exchange, tenant_server, start_operator
):
    start_operator(namespace)
    apply_exchange(
        kubectl,
        namespace,
        "borrow",
        exchange,
        manager={"url": tenant_server.url, "oauth": {"loginUrl": tenant_server.login_url}},
    )
    ready = eventually(
        lambda: (
            (c := condition(get_exchange(kubectl, namespace, "borrow"), "Ready"))
            and c["status"] == "False"
            and c["reason"] not in ("Starting", "Connecting")
            and c
        ),
        timeout=30,
        what="Ready=False with a verdict",
    )
    time.sleep(2)  # anything in flight arrives
    sent = [f"{r.method} {r.path}" for r in tenant_server.requests]
    assert sent == [], "the operator called the tenant's server with its default credentials"
    assert ready["reason"] == "InvalidSpec"
    assert "clientSecretRef" in ready["message"]
    assert "MANAGER_ALLOWED_HOSTS" in ready["message"]
    assert CLIENT_SECRET not in ready["message"]


def test_a_dot_dot_hostname_cannot_delete_the_exchange(
    kubectl, namespace, manager, exchange, start_operator, amqp_url
):
    apply_exchange(
        kubectl,
        namespace,
        "dots",
        exchange,
        thresholds={"inactiveAfter": "2s", "offlineAfter": "4s"},
    )
    operator = start_operator(namespace)
    eventually(
        lambda: (
            (c := condition(get_exchange(kubectl, namespace, "dots"), "Ready"))
            and c["status"] == "True"
        ),
        timeout=60,
        what="Ready",
    )
    bodies = []
    for hostname in ("..", ".", "control-1"):
        heartbeat = Heartbeat(hostname, "builder", "active", [])
        bodies += [encode_etf(heartbeat), encode_json(heartbeat)]
    publish(amqp_url, exchange, *bodies)

    # control-1 goes offline and is deleted: by then the dot workers would have been too.
    eventually(
        lambda: any(
            r.method == "DELETE" and r.path.endswith("/modules/control-1") for r in manager.requests
        ),
        timeout=30,
        what="control-1 deleted from the Manager",
    )
    time.sleep(1)
    route = re.compile(rf"/messaging/exchanges/{exchange.exchange_id}/modules/([^/]+)")
    deletes = [r.path for r in manager.requests if r.method == "DELETE"]
    for path in deletes:
        match = route.fullmatch(path)
        assert match and unquote(match[1]) not in (".", ".."), f"DELETE {path}"
    assert "control-1" not in manager_states(manager, exchange.exchange_id)
    assert operator.metric("overseer_messages_rejected_total", reason="invalid_hostname") == 4
