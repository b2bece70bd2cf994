"""End to end: the operator as a process, the real apiserver and broker, the Manager emulator.

Short thresholds (inactive after 4 s, offline after 8 s) stand in for the production 10 and 20
minutes; the fast tier (tests/unit/test_fleet.py) covers the real values under looptime.
"""

from __future__ import annotations

import time

import pytest

from overseer_operator.heartbeat import encode_etf
from overseer_operator.model import Heartbeat
from tests.fixtures.operator import (
    apply_exchange,
    condition,
    eventually,
    get_exchange,
    manager_calls,
    manager_states,
    monitored_by,
    publish,
)

pytestmark = [pytest.mark.testbed, pytest.mark.usefixtures("crd_installed")]

SHORT = {"inactiveAfter": "4s", "offlineAfter": "8s"}


def test_workers_go_active_inactive_offline_and_come_back(
    kubectl, namespace, manager, exchange, workers, start_operator
):
    apply_exchange(
        kubectl, namespace, "fleet", exchange, thresholds=SHORT, manager={"refreshInterval": "1h"}
    )
    workers.alive.update({"builder-1": "builder", "deployer-1": "deployer", "builder-2": "builder"})
    operator = start_operator(namespace)

    # Every worker, and the operator itself, is registered active in the Manager...
    eventually(
        lambda: (
            manager_states(manager, exchange.exchange_id)
            == {
                "builder-1": "active",
                "deployer-1": "active",
                "builder-2": "active",
                monitored_by(kubectl, namespace, "fleet"): "active",
            }
        ),
        timeout=60,
        what="all workers active in the Manager",
    )
    # ...and in the resource's status, with the conditions a user waits on.
    resource = eventually(
        lambda: (
            (r := get_exchange(kubectl, namespace, "fleet"))["status"]["workers"]["active"] == 4
            and r
        ),
        what="status counts",
    )
    assert condition(resource, "Ready")["status"] == "True"
    assert condition(resource, "BrokerConnected")["status"] == "True"
    assert resource["status"]["observedGeneration"] == resource["metadata"]["generation"]
    own = monitored_by(kubectl, namespace, "fleet")
    overseer = [row for row in manager.modules(exchange.exchange_id) if row["hostname"] == own]
    assert overseer[0]["type"] == "overseer"

    # builder-2 goes quiet: inactive after 4 s, offline (deleted) after 8 s, in that order.
    del workers.alive["builder-2"]
    eventually(
        lambda: "builder-2" not in manager_states(manager, exchange.exchange_id),
        timeout=30,
        what="builder-2 deleted from the Manager",
    )
    assert manager_calls(manager, exchange.exchange_id, "builder-2")[-2:] == [
        ("POST", "inactive"),
        ("DELETE", None),
    ]
    resource = eventually(
        lambda: (
            (r := get_exchange(kubectl, namespace, "fleet"))["status"]["workers"]["offline"] == 1
            and r
        ),
        what="builder-2 offline in status",
    )
    assert resource["status"]["modules"][0] == {
        **resource["status"]["modules"][0],
        "hostname": "builder-2",
        "state": "offline",
    }
    assert resource["status"]["workers"] == {"total": 4, "active": 3, "inactive": 0, "offline": 1}
    assert (
        condition(resource, "Ready")["status"] == "True"
    )  # the fleet's health is not the monitor's
    assert condition(resource, "WorkersHealthy")["reason"] == "WorkersOffline"
    offline_event = "worker builder-2 (builder) is offline: no heartbeat for 8s"
    eventually(
        lambda: offline_event in kubectl("get", "events", "-n", namespace).stdout,
        what="the WorkerOffline event",
    )
    table = kubectl("get", "mx", "fleet", "-n", namespace).stdout.split("\n")
    assert table[0].split()[:7] == [
        "NAME",
        "EXCHANGE",
        "BROKER",
        "READY",
        "ACTIVE",
        "INACTIVE",
        "OFFLINE",
    ]
    assert table[1].split()[:7] == ["fleet", "901", "1", "True", "3", "0", "1"]

    # The others stayed active the whole time: no write about them after registration.
    assert manager_calls(manager, exchange.exchange_id, "builder-1") == [("POST", "active")]

    # builder-2 comes back.
    workers.alive["builder-2"] = "builder"
    eventually(
        lambda: manager_states(manager, exchange.exchange_id).get("builder-2") == "active",
        what="builder-2 active again",
    )
    eventually(
        lambda: get_exchange(kubectl, namespace, "fleet")["status"]["workers"]["active"] == 4,
        what="builder-2 active again in status",
    )
    assert operator.metric("overseer_worker_transitions_total", state="offline") == 1


def test_erlang_runtime_body_and_malformed_messages(
    kubectl, namespace, manager, exchange, start_operator, erlang_status_body, amqp_url
):
    apply_exchange(kubectl, namespace, "wire", exchange)
    operator = start_operator(namespace)
    eventually(
        lambda: condition(get_exchange(kubectl, namespace, "wire"), "Ready")["status"] == "True",
        timeout=60,
        what="Ready",
    )

    garbage = [
        b"",
        b"\x83garbage",
        b"{not json",
        b'{"event_type":"status"}',
        b'{"event_type":"status","hostname":"bad host name"}',
        b"\x00" * 10,
    ]
    other_event = encode_etf(
        Heartbeat("ignored-1", "builder", "active", []), event_type="upgrade_request"
    )
    # A sender choosing event types at will must not create metric series at will.
    invented = [
        encode_etf(Heartbeat(f"h{index}", "builder", "active", []), event_type=f"made_up_{index}")
        for index in range(20)
    ]
    publish(amqp_url, exchange, *garbage, other_event, *invented, erlang_status_body)

    eventually(
        lambda: manager_states(manager, exchange.exchange_id).get("007aaefbbcc9") == "active",
        what="the Erlang-encoded worker in the Manager",
    )
    posted = [
        r.body
        for r in manager.module_writes(exchange.exchange_id)
        if (r.body or {}).get("hostname") == "007aaefbbcc9"
    ]
    assert posted[0] == {
        "hostname": "007aaefbbcc9",
        "type": "builder",
        "status": "active",
        "workload": [{"description": "building workflow 123"}],
    }
    assert operator.metric("overseer_messages_rejected_total") == len(garbage)
    assert operator.metric("overseer_messages_ignored_total", event_type="upgrade_request") == 1
    assert operator.metric("overseer_messages_ignored_total", event_type="other") == 20
    assert "made_up_" not in operator.metrics()
    assert "ignored-1" not in manager_states(manager, exchange.exchange_id)
    assert operator.alive()


def test_a_steady_fleet_costs_no_manager_write_and_at_most_one_status_patch(
    kubectl, namespace, manager, exchange, workers, start_operator
):
    apply_exchange(kubectl, namespace, "steady", exchange)  # default refreshInterval: 5m
    workers.alive.update({f"steady-{index}": "builder" for index in range(20)})
    operator = start_operator(namespace)
    eventually(
        lambda: len(manager.modules(exchange.exchange_id)) == 21,
        timeout=60,
        what="20 workers and the operator registered",
    )
    eventually(
        lambda: get_exchange(kubectl, namespace, "steady")["status"]["workers"]["active"] == 21,
        what="status counts",
    )
    time.sleep(2)  # the coalesced status patch for the last registrations
    manager_writes = len(manager.module_writes(exchange.exchange_id))
    status_patches = operator.metric("overseer_kubernetes_writes_total", kind="status")
    heartbeats = operator.metric("overseer_heartbeats_received_total")

    beats = workers.beats
    eventually(lambda: workers.beats >= beats + 10, timeout=30, what="10 more rounds")

    assert operator.metric("overseer_heartbeats_received_total") - heartbeats >= 180
    assert len(manager.module_writes(exchange.exchange_id)) == manager_writes
    # Heartbeat times alone are refreshed at most once a minute.
    assert operator.metric("overseer_kubernetes_writes_total", kind="status") - status_patches <= 1
