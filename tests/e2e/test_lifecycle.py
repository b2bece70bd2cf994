"""End to end: the life of a MessagingExchange — configuration errors, spec changes, deletion."""

from __future__ import annotations

import json

import pytest

from overseer_operator.heartbeat import encode_json
from overseer_operator.model import Heartbeat
from tests.fixtures.manager import CLIENT_SECRET
from tests.fixtures.operator import (
    apply_exchange,
    condition,
    create_secret,
    eventually,
    get_exchange,
    manager_states,
    patch_spec,
    provision,
    publish,
)

pytestmark = [pytest.mark.testbed, pytest.mark.usefixtures("crd_installed")]


def ready(kubectl, namespace: str, name: str) -> dict:
    resource = get_exchange(kubectl, namespace, name)
    return condition(resource, "Ready") or {}


def consumers(rabbitmq_api, queue: str) -> int:
    return rabbitmq_api.queue(queue).get("consumers", 0)  # absent until stats are collected


def test_delete_stops_the_monitor_and_releases_the_resource(
    kubectl, namespace, manager, exchange, start_operator, rabbitmq_api
):
    apply_exchange(kubectl, namespace, "doomed", exchange)
    operator = start_operator(namespace)
    eventually(
        lambda: ready(kubectl, namespace, "doomed").get("status") == "True",
        timeout=60,
        what="Ready",
    )
    eventually(lambda: consumers(rabbitmq_api, exchange.queue) == 1, what="one consumer")
    resource = get_exchange(kubectl, namespace, "doomed")
    assert "overseer.openaperture.io/monitor" in resource["metadata"]["finalizers"]

    kubectl("delete", "mx", "doomed", "-n", namespace, "--timeout=40s")  # waits for finalizers

    assert kubectl("get", "mx", "-n", namespace, "-o", "name").stdout.strip() == ""
    eventually(
        lambda: consumers(rabbitmq_api, exchange.queue) == 0, timeout=10, what="the consumer gone"
    )
    hostnames = manager_states(manager, exchange.exchange_id)
    assert not set(operator.identities) & set(hostnames)  # own registrations taken out


def test_spec_changes_apply_without_a_restart(
    kubectl, namespace, manager, exchange, start_operator, rabbitmq_api, amqp_url
):
    apply_exchange(
        kubectl,
        namespace,
        "tuned",
        exchange,
        thresholds={"inactiveAfter": "1h", "offlineAfter": "2h"},
    )
    operator = start_operator(namespace)
    eventually(
        lambda: ready(kubectl, namespace, "tuned").get("status") == "True", timeout=60, what="Ready"
    )
    publish(amqp_url, exchange, encode_json(Heartbeat("lonely-1", "builder", "active", [])))
    eventually(
        lambda: "lonely-1" in manager_states(manager, exchange.exchange_id),
        what="registered",
    )

    # Shorter thresholds: the silent worker is inactive within seconds, no restart needed.
    patch_spec(
        kubectl, namespace, "tuned", thresholds={"inactiveAfter": "2s", "offlineAfter": "1h"}
    )
    eventually(
        lambda: manager_states(manager, exchange.exchange_id).get("lonely-1") == "inactive",
        timeout=20,
        what="lonely-1 inactive after the threshold change",
    )
    resource = get_exchange(kubectl, namespace, "tuned")
    eventually(
        lambda: (
            get_exchange(kubectl, namespace, "tuned")["status"]["observedGeneration"]
            == resource["metadata"]["generation"]
        ),
        what="observedGeneration",
    )

    # A new queue: the monitor reconnects and consumes it instead of the old one.
    moved = type(exchange)(
        exchange.exchange_id,
        exchange.broker_id,
        exchange.root_exchange_name,
        exchange.routing_key,
        f"{exchange.queue}.v2",
    )
    provision(rabbitmq_api, moved)
    try:
        patch_spec(kubectl, namespace, "tuned", queues={"systemModules": moved.queue})
        eventually(
            lambda: consumers(rabbitmq_api, moved.queue) == 1,
            timeout=30,
            what="a consumer on the new queue",
        )
        eventually(lambda: consumers(rabbitmq_api, exchange.queue) == 0, what="old queue left")
        publish(amqp_url, moved, encode_json(Heartbeat("mover-1", "deployer", "active", [])))
        eventually(
            lambda: "mover-1" in manager_states(manager, exchange.exchange_id),
            what="a heartbeat from the new queue",
        )
        assert operator.alive()
    finally:
        rabbitmq_api.delete_queue(moved.queue)


def test_missing_secret_and_refused_credentials_show_as_conditions(
    kubectl, namespace, manager, exchange, start_operator
):
    apply_exchange(
        kubectl,
        namespace,
        "creds",
        exchange,
        manager={
            "url": manager.url,
            "oauth": {
                "loginUrl": manager.login_url,
                "clientId": "overseer-tests",
                "clientSecretRef": {"name": "manager-oauth", "key": "clientSecret"},
            },
        },
    )
    start_operator(namespace)
    missing = eventually(
        lambda: (c := ready(kubectl, namespace, "creds")).get("reason") == "SecretNotFound" and c,
        timeout=60,
        what="SecretNotFound",
    )
    assert missing["status"] == "False"
    assert "manager-oauth" in missing["message"]
    stalled = condition(get_exchange(kubectl, namespace, "creds"), "Stalled")
    assert (stalled["status"], stalled["reason"]) == ("True", "SecretNotFound")

    create_secret(kubectl, namespace, "manager-oauth", clientSecret="not-the-secret")
    refused = eventually(
        lambda: (
            (c := ready(kubectl, namespace, "creds")).get("reason") == "ManagerUnauthorized" and c
        ),
        timeout=60,
        what="ManagerUnauthorized",
    )
    assert "not-the-secret" not in json.dumps(get_exchange(kubectl, namespace, "creds"))

    create_secret(kubectl, namespace, "manager-oauth", clientSecret=CLIENT_SECRET)
    eventually(
        lambda: ready(kubectl, namespace, "creds").get("status") == "True",
        timeout=90,
        what="Ready once the right secret is in place",
    )
    assert refused["status"] == "False"
    assert condition(get_exchange(kubectl, namespace, "creds"), "Stalled")["status"] == "False"


def test_a_tls_broker_from_secrets(
    kubectl, namespace, manager, exchange, start_operator, testbed, amqp_url
):
    create_secret(kubectl, namespace, "broker", url=testbed.amqps_url)
    create_secret(kubectl, namespace, "broker-ca", **{"ca.crt": testbed.ca_file.read_text()})
    apply_exchange(
        kubectl,
        namespace,
        "tls",
        exchange,
        amqp={
            "urlSecretRef": {"name": "broker", "key": "url"},
            "caSecretRef": {"name": "broker-ca", "key": "ca.crt"},
        },
    )
    start_operator(namespace)
    eventually(
        lambda: ready(kubectl, namespace, "tls").get("status") == "True",
        timeout=60,
        what="Ready over amqps",
    )
    publish(amqp_url, exchange, encode_json(Heartbeat("tls-1", "builder", "active", [])))
    eventually(
        lambda: "tls-1" in manager_states(manager, exchange.exchange_id),
        what="a heartbeat consumed over TLS",
    )
    assert manager.requests_to("GET", "/messaging/brokers") == []  # the URL came from the Secret
    resource = json.dumps(get_exchange(kubectl, namespace, "tls"))
    assert "guest:guest" not in resource
