"""End to end: restarts of the operator and outages of the broker flip no healthy worker, and the
workers that died meanwhile are still found."""

from __future__ import annotations

import subprocess
import time
from datetime import UTC, datetime, timedelta

import pytest

from tests.fixtures.operator import (
    REPO,
    apply_exchange,
    condition,
    eventually,
    get_exchange,
    manager_calls,
    manager_states,
    manager_writes,
)

pytestmark = [pytest.mark.testbed, pytest.mark.usefixtures("crd_installed")]


def test_restart_finds_dead_workers_and_spares_live_ones(
    kubectl, namespace, manager, exchange, workers, start_operator
):
    now = datetime.now(UTC)
    # What the Manager knew before the operator (re)started:
    # An active row may lag its worker's last heartbeat by a refresh interval (1 h here), so only
    # a row older than that plus offlineAfter proves the worker offline.
    manager.put_module(
        exchange.exchange_id, "dead-1", "builder", "active", updated_at=now - timedelta(hours=3)
    )
    manager.put_module(
        exchange.exchange_id,
        "stale-1",
        "builder",
        "inactive",
        updated_at=now - timedelta(seconds=3),
    )  # inactive row: silent >= 3 + 6 s
    manager.put_module(
        exchange.exchange_id, "quiet-1", "builder", "active", updated_at=now - timedelta(seconds=2)
    )  # no proof: a full threshold
    manager.put_module(exchange.exchange_id, "live-1", "deployer", "active", updated_at=now)
    workers.alive["live-1"] = "deployer"
    apply_exchange(
        kubectl,
        namespace,
        "restarts",
        exchange,
        thresholds={"inactiveAfter": "6s", "offlineAfter": "12s"},
        manager={"refreshInterval": "1h"},
    )

    started = time.monotonic()
    operator = start_operator(namespace)
    eventually(
        lambda: "dead-1" not in manager_states(manager, exchange.exchange_id),
        timeout=30,
        what="dead-1 deleted",
    )
    assert manager_calls(manager, exchange.exchange_id, "dead-1") == [("DELETE", None)]
    eventually(
        lambda: "stale-1" not in manager_states(manager, exchange.exchange_id),
        timeout=30,
        what="stale-1 deleted",
    )
    assert manager_calls(manager, exchange.exchange_id, "stale-1") == [("DELETE", None)]
    eventually(
        lambda: manager_states(manager, exchange.exchange_id).get("quiet-1") == "inactive",
        timeout=30,
        what="quiet-1 inactive",
    )
    ((inactivated, _, _),) = manager_writes(manager, exchange.exchange_id, "quiet-1")
    assert inactivated - started >= 6.0 - 0.5  # it had its full threshold to report again

    # A restart shorter than the threshold: the live worker is never flipped.
    operator.stop()
    time.sleep(2)
    restarted = start_operator(namespace, identity="overseer-e2e-2")
    eventually(
        lambda: (
            condition(get_exchange(kubectl, namespace, "restarts"), "Ready")["status"] == "True"
        ),
        timeout=60,
        what="Ready after the restart",
    )
    time.sleep(8)  # longer than inactiveAfter
    assert manager_calls(manager, exchange.exchange_id, "live-1") == []
    assert manager_states(manager, exchange.exchange_id)["live-1"] == "active"
    assert restarted.alive()


def rabbitmqctl(*args: str) -> None:
    subprocess.run(
        [str(REPO / "scripts" / "testbed"), "rabbitmqctl", *args],
        check=True,
        capture_output=True,
        timeout=120,
    )


def test_a_broker_outage_flips_nobody(
    kubectl, namespace, manager, exchange, workers, start_operator, rabbitmq_api
):
    workers.alive.update({"live-1": "builder", "live-2": "deployer"})
    apply_exchange(
        kubectl,
        namespace,
        "outage",
        exchange,
        thresholds={"inactiveAfter": "3s", "offlineAfter": "6s"},
        manager={"refreshInterval": "1h"},
    )
    operator = start_operator(namespace)
    eventually(
        lambda: manager_states(manager, exchange.exchange_id).get("live-2") == "active",
        timeout=60,
        what="workers registered",
    )

    rabbitmqctl("stop_app")
    try:
        eventually(
            lambda: (
                condition(get_exchange(kubectl, namespace, "outage"), "BrokerConnected")["status"]
                == "False"
            ),
            timeout=30,
            what="BrokerConnected=False",
        )
        time.sleep(8)  # longer than offlineAfter
    finally:
        rabbitmqctl("start_app")

    eventually(
        lambda: condition(get_exchange(kubectl, namespace, "outage"), "Ready")["status"] == "True",
        timeout=60,
        what="Ready again",
    )
    eventually(
        lambda: rabbitmq_api.queue(exchange.queue).get("consumers", 0) == 1,
        timeout=30,
        what="the consumer restored",
    )
    beats = workers.beats
    eventually(lambda: workers.beats >= beats + 5, timeout=30, what="workers beating again")
    for hostname in ("live-1", "live-2"):
        assert manager_calls(manager, exchange.exchange_id, hostname) == [("POST", "active")], (
            hostname
        )
    assert operator.metric("overseer_worker_transitions_total", state="inactive") == 0
