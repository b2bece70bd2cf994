"""End to end: restarts of the operator and outages of the broker flip no healthy worker, and the
workers that died meanwhile are still found."""

from __future__ import annotations

import dataclasses
import subprocess
import time
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from tests.fixtures.operator import (
    REPO,
    Workers,
    apply_exchange,
    condition,
    eventually,
    free_port,
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


TOTAL_AND_READY = "{.status.workers.total} {.status.conditions[?(@.type=='Ready')].reason}{\"\\n\"}"


def test_a_restart_shows_the_whole_fleet_throughout(
    kubectl, namespace, manager, exchange, start_operator, amqp_url
):
    """More workers than the status lists (50): a restarted process knows the others only from
    the Manager's list, and its status waits for it. Before, its first patch counted the 50
    listed workers (the fleet seemed to shrink at every restart), the next ones counted more.
    Every version of the status across the restart is read, through a watch."""
    hosts = [f"many-{index}" for index in range(60)]
    workers = Workers(amqp_url, exchange, interval=2.0)
    try:
        workers.alive.update(dict.fromkeys(hosts, "builder"))
        apply_exchange(
            kubectl,
            namespace,
            "many",
            exchange,
            thresholds={"inactiveAfter": "30s", "offlineAfter": "60s"},
        )
        operator = start_operator(namespace)
        fleet = len(hosts) + 1  # and the operator's own row
        eventually(
            lambda: (
                get_exchange(kubectl, namespace, "many")["status"]["workers"]
                == {"total": fleet, "active": fleet, "inactive": 0, "offline": 0}
            ),
            timeout=60,
            what="the whole fleet in the status",
        )
        watch = subprocess.Popen(
            [str(kubectl.executable), "--kubeconfig", str(kubectl.kubeconfig), "get", "mx",
             "many", "-n", namespace, "--watch", "--output", f"jsonpath={TOTAL_AND_READY}"],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            operator.stop()
            start_operator(namespace, identity="overseer-e2e-2")
            wait_ready_again(kubectl, namespace, "many")
            time.sleep(3)  # whatever the new process writes next
        finally:
            watch.terminate()
        versions = [line.split() for line in watch.communicate(timeout=10)[0].splitlines()]
        assert len(versions) >= 2 and versions[-1][1] == "Monitoring", versions
        # Every worker, at least: the operators' own rows come and go (a replica handing its
        # exchanges over takes its row out; a new process adds its own).
        assert min(int(total) for total, _ in versions) >= len(hosts), versions
    finally:
        workers.close()


def wait_registered(manager, exchange_id: str, hosts: list[str]) -> None:
    eventually(
        lambda: all(manager_states(manager, exchange_id).get(host) == "active" for host in hosts),
        timeout=60,
        what="workers registered",
    )


def wait_ready_again(kubectl, namespace: str, name: str) -> None:
    eventually(
        lambda: condition(get_exchange(kubectl, namespace, name), "Ready")["status"] == "True",
        timeout=60,
        what="Ready after the restart",
    )


def writes_since(
    manager, exchange_id: str, hosts: list[str], since: float
) -> dict[str, set[tuple[str, str | None]]]:
    """Per worker, the kinds of Manager write it got from ``since`` on."""
    return {
        host: {
            (method, status)
            for at, method, status in manager_writes(manager, exchange_id, host)
            if at >= since
        }
        for host in hosts
    }


def test_a_restart_after_a_manager_outage_longer_than_the_thresholds_flips_nobody(
    kubectl, namespace, manager, exchange, start_operator, amqp_url
):
    """The Manager refuses every module write for longer than offlineAfter while the operator
    consumes (and acks) every heartbeat; the operator restarts before it could write them. The
    rows are then older than offlineAfter, but they prove no silence: the old status says the
    writes were failing since then (ManagerSynced=False), so the new process gives every worker
    not yet heard again a full threshold. Workers beat every 4 s, so some are not in the
    backlog of the 2-3 s restart; before the fix they were DELETEd as offline."""
    hosts = [f"live-{index}" for index in range(6)]
    workers = Workers(amqp_url, exchange, interval=4.0)
    try:
        workers.alive.update(dict.fromkeys(hosts, "builder"))
        apply_exchange(
            kubectl,
            namespace,
            "outage",
            exchange,
            thresholds={"inactiveAfter": "10s", "offlineAfter": "20s"},
            manager={"refreshInterval": "1s"},
        )
        operator = start_operator(namespace)
        wait_registered(manager, exchange.exchange_id, hosts)
        manager.fail_next(10**6, 503, "POST", f"/messaging/exchanges/{exchange.exchange_id}/")
        failing = time.monotonic()
        eventually(
            lambda: (
                condition(get_exchange(kubectl, namespace, "outage"), "ManagerSynced")["status"]
                == "False"
            ),
            timeout=30,
            what="ManagerSynced=False",
        )
        time.sleep(max(0.0, failing + 23 - time.monotonic()))  # rows older than offlineAfter
        operator.stop()
        manager.clear_faults()
        restarted_at = time.monotonic()
        restarted = start_operator(namespace, identity="overseer-e2e-2")
        wait_ready_again(kubectl, namespace, "outage")
        time.sleep(12)  # longer than inactiveAfter: a verdict from the stale rows would show
        # Per worker: the first process's own row is another matter (it is gone and was not
        # deregistered, so it rightly turns inactive after its full threshold).
        assert writes_since(manager, exchange.exchange_id, hosts, restarted_at) == {
            host: {("POST", "active")} for host in hosts
        }
        assert restarted.alive()
    finally:
        workers.close()


def test_a_crash_while_the_manager_lags_behind_the_refreshes_flips_nobody(
    kubectl, namespace, manager, exchange, start_operator, amqp_url
):
    """The Manager accepts every write, but slowly (9 s each): the writer cannot refresh 16
    workers' rows as often as they beat, so the rows age while every worker beats. The operator
    crashes; a new one reads the rows. Their age is no proof of silence: the old status says the
    writes were late since then (ManagerSynced=False, ManagerBehind), so the new process gives
    every worker not yet heard a full threshold. Workers beat every 8 s, so most are not in the
    backlog of the restart; before the fix they were written inactive, then DELETEd: at 100,000
    workers a writer that falls behind its refreshes is the normal case, not an outage."""
    hosts = [f"busy-{index}" for index in range(16)]
    workers = Workers(amqp_url, exchange, interval=8.0)
    try:
        workers.alive.update(dict.fromkeys(hosts, "builder"))
        apply_exchange(
            kubectl,
            namespace,
            "lagging",
            exchange,
            thresholds={"inactiveAfter": "20s", "offlineAfter": "40s"},
            manager={"refreshInterval": "1s"},
        )
        operator = start_operator(namespace, MANAGER_WRITE_LATENESS_ALLOWED="2s")
        wait_registered(manager, exchange.exchange_id, hosts)
        modules = f"/messaging/exchanges/{exchange.exchange_id}/"
        manager.delay_next(10**6, 9.0, "POST", modules)  # under the client's 10 s timeout
        time.sleep(45)  # every row refreshed about every 38 s instead of every 8 s
        lagging = condition(get_exchange(kubectl, namespace, "lagging"), "ManagerSynced")
        operator.kill()
        manager.clear_faults()
        restarted_at = time.monotonic()
        restarted = start_operator(
            namespace, identity="overseer-e2e-2", MANAGER_WRITE_LATENESS_ALLOWED="2s"
        )
        wait_ready_again(kubectl, namespace, "lagging")
        time.sleep(24)  # longer than inactiveAfter: a verdict from the stale rows would show
        assert writes_since(manager, exchange.exchange_id, hosts, restarted_at) == {
            host: {("POST", "active")} for host in hosts
        }
        assert (lagging["status"], lagging["reason"]) == ("False", "ManagerBehind")
        assert "rows in the Manager may be stale" in lagging["message"]
        assert restarted.alive()
    finally:
        workers.close()


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


def test_a_broker_record_rotated_in_the_manager_is_picked_up_without_a_restart(
    kubectl, namespace, manager, exchange, workers, start_operator, amqp_url
):
    """The Manager's broker record names a dead endpoint; once it is rotated to the live broker,
    the exchange consumes within BROKER_RELOOKUP_INTERVAL (scaled to 2 s), no restart needed."""
    broker = httpx.URL(amqp_url)
    manager.add_broker("7", "rotating")
    manager.add_broker_connection("7", "guest", "guest", "127.0.0.1", free_port(), "/")
    rotating = dataclasses.replace(exchange, broker_id="7")
    workers.alive.update({"live-1": "builder"})
    apply_exchange(kubectl, namespace, "rotated", rotating, manager={"refreshInterval": "1h"})
    start_operator(namespace, BROKER_RELOOKUP_INTERVAL="2s")
    eventually(
        lambda: (
            condition(get_exchange(kubectl, namespace, "rotated"), "BrokerConnected")["reason"]
            == "BrokerUnreachable"
        ),
        timeout=60,
        what="the dead endpoint reported",
    )
    assert "live-1" not in manager_states(manager, exchange.exchange_id)

    manager.remove_broker_connections("7")
    manager.add_broker_connection(
        "7", broker.username or "guest", broker.password or "guest", broker.host, broker.port, "/"
    )
    rotated = time.monotonic()
    eventually(
        lambda: manager_states(manager, exchange.exchange_id).get("live-1") == "active",
        timeout=30,
        what="the rotated record used",
    )
    print(f"\nBROKER RECORD ROTATED: consuming {time.monotonic() - rotated:.1f}s later")
    eventually(
        lambda: condition(get_exchange(kubectl, namespace, "rotated"), "Ready")["status"] == "True",
        timeout=30,
        what="Ready",
    )
