"""End to end: no failure path wipes a healthy fleet.

Each test puts a fleet of beating workers behind the operator (a real process against the real
apiserver, RabbitMQ and the Manager emulator), breaks something that is not the workers, and
checks that no live worker was written inactive or deleted: a lost queue, reconnects, a
reconfiguration that cannot connect, a restart behind a long backlog. Thresholds are seconds long,
so anything that lets the fleet clock run without consuming shows up within the test.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

import aio_pika
import pytest

from devtools.manager_emulator import ManagerEmulator
from tests.fixtures.manager import CLIENT_SECRET
from tests.fixtures.operator import (
    Exchange,
    apply_exchange,
    condition,
    create_secret,
    eventually,
    get_exchange,
    manager_calls,
    manager_states,
    monitored_by,
    patch_spec,
    provision,
)

pytestmark = [pytest.mark.testbed, pytest.mark.usefixtures("crd_installed")]

LIVE = {"live-1": "builder", "live-2": "deployer", "live-3": "builder"}
SHORT = {"inactiveAfter": "3s", "offlineAfter": "6s"}


def ready(kubectl, namespace: str, name: str) -> dict:
    return condition(get_exchange(kubectl, namespace, name), "Ready") or {}


def start_fleet(kubectl, namespace, manager, exchange, workers, start_operator, name: str):
    workers.alive.update(LIVE)
    apply_exchange(
        kubectl, namespace, name, exchange, thresholds=SHORT, manager={"refreshInterval": "1h"}
    )
    operator = start_operator(namespace)
    eventually(
        lambda: all(
            manager_states(manager, exchange.exchange_id).get(host) == "active" for host in LIVE
        ),
        timeout=60,
        what="the live workers registered",
    )
    eventually(
        lambda: ready(kubectl, namespace, name).get("status") == "True",
        timeout=30,
        what="Ready",
    )
    return operator


def assert_fleet_untouched(
    manager: ManagerEmulator, exchange: Exchange, operator, *, others_expire: bool = False
) -> None:
    """Every live worker was registered, and never written inactive or deleted; unless
    ``others_expire``, nobody at all turned inactive or offline."""
    for hostname in LIVE:
        calls = manager_calls(manager, exchange.exchange_id, hostname)
        assert ("DELETE", None) not in calls, (hostname, calls)
        assert ("POST", "inactive") not in calls, (hostname, calls)
        assert manager_states(manager, exchange.exchange_id).get(hostname) == "active", hostname
    if others_expire:
        return
    assert operator.metric("overseer_worker_transitions_total", state="inactive") == 0
    assert operator.metric("overseer_worker_transitions_total", state="offline") == 0


def test_a_deleted_queue_holds_every_verdict_and_is_consumed_again_once_back(
    kubectl, namespace, manager, exchange, workers, start_operator, rabbitmq_api
):
    """The queue deleted under a beating fleet: not consuming is said (QueueNotFound), nobody is
    flipped, and once the queue is provisioned again exactly one consumer returns."""
    operator = start_fleet(kubectl, namespace, manager, exchange, workers, start_operator, "gone")

    rabbitmq_api.delete_queue(exchange.queue)
    eventually(
        lambda: ready(kubectl, namespace, "gone").get("reason") == "QueueNotFound",
        timeout=30,
        what="Ready=False QueueNotFound",
    )
    assert ready(kubectl, namespace, "gone")["status"] == "False"
    time.sleep(8)  # longer than offlineAfter: a running fleet clock would have flipped everyone
    assert_fleet_untouched(manager, exchange, operator)

    provision(rabbitmq_api, exchange)
    eventually(
        lambda: ready(kubectl, namespace, "gone").get("status") == "True",
        timeout=60,
        what="Ready again",
    )
    eventually(
        lambda: rabbitmq_api.queue(exchange.queue).get("consumers") == 1,
        timeout=30,
        what="the consumer back",
    )
    time.sleep(8)
    assert rabbitmq_api.queue(exchange.queue).get("consumers") == 1
    assert_fleet_untouched(manager, exchange, operator)
    assert operator.metric("overseer_verdicts_held") == 0


def test_reconnects_leave_exactly_one_consumer(
    kubectl, namespace, manager, exchange, workers, start_operator, rabbitmq_api
):
    operator = start_fleet(kubectl, namespace, manager, exchange, workers, start_operator, "flaky")
    connection_name = f"overseer-operator {namespace}/flaky"
    for _ in range(4):
        rabbitmq_api.close_connection(connection_name)
        time.sleep(1.5)
    eventually(
        lambda: rabbitmq_api.queue(exchange.queue).get("consumers") == 1,
        timeout=60,
        what="one consumer after the reconnects",
    )
    time.sleep(12)  # several verification rounds: no second consumer appears
    assert rabbitmq_api.queue(exchange.queue).get("consumers") == 1
    assert_fleet_untouched(manager, exchange, operator)


def test_a_reconfiguration_that_cannot_connect_flips_nobody(
    kubectl, namespace, manager, exchange, workers, start_operator
):
    """A spec edit replaces the connections while the Manager (which names the broker) is down:
    the new session cannot consume (or, with the broker's answer from the last 10 s, consumes
    but cannot read the routing of the operator's own heartbeat): nobody flips, the operator
    itself included."""
    operator = start_fleet(kubectl, namespace, manager, exchange, workers, start_operator, "edit")
    manager.set_unavailable(True)
    try:
        patch_spec(kubectl, namespace, "edit", amqp={"prefetch": 50})
        eventually(
            lambda: ready(kubectl, namespace, "edit").get("status") != "True",
            timeout=30,
            what="not Ready while the new connections cannot be made",
        )
        time.sleep(8)  # longer than offlineAfter
    finally:
        manager.set_unavailable(False)
    eventually(
        lambda: ready(kubectl, namespace, "edit").get("status") == "True",
        timeout=90,
        what="Ready with the new configuration",
    )
    time.sleep(4)  # writes owed during the outage, if any, have been sent by now
    assert_fleet_untouched(manager, exchange, operator)


def test_a_restart_behind_a_long_backlog_reads_it_before_any_verdict(
    kubectl, namespace, manager, exchange, workers, start_operator, amqp_url
):
    """Downtime longer than offlineAfter, with a backlog in front of the workers' fresh
    heartbeats: the status from before the restart proves everybody offline, yet nobody may be
    deleted before the backlog is read, and reading it proves them alive."""
    first = start_fleet(kubectl, namespace, manager, exchange, workers, start_operator, "backlog")
    eventually(
        lambda: len((get_exchange(kubectl, namespace, "backlog").get("status") or {}).get(
            "modules") or ()) >= len(LIVE),
        timeout=30,
        what="the workers in the status",
    )  # fmt: skip
    first.stop()
    workers.alive.clear()  # quiet while the operator is down...
    time.sleep(8)  # ...for longer than offlineAfter, so the status proves them offline
    # 20,000 messages the operator must read first, then the fleet's fresh heartbeats.
    asyncio.run(publish_filler(amqp_url, exchange, 20_000))
    workers.alive.update(LIVE)
    time.sleep(2)
    manager.delay_next(1000, 0.05)  # a slow Manager: DELETEs, if any were owed, go out slowly

    second = start_operator(namespace, identity="overseer-e2e-2")
    eventually(
        lambda: (
            condition(get_exchange(kubectl, namespace, "backlog"), "CaughtUp") is not None
            and condition(get_exchange(kubectl, namespace, "backlog"), "CaughtUp")["status"]
            == "True"
        ),
        timeout=120,
        what="the backlog read",
    )
    time.sleep(4)
    for hostname in LIVE:
        calls = manager_calls(manager, exchange.exchange_id, hostname)
        assert ("DELETE", None) not in calls, (hostname, calls)
        assert ("POST", "inactive") not in calls, (hostname, calls)
    assert second.metric("overseer_worker_transitions_total", state="offline") == 0


def test_a_restart_consumes_while_the_listing_is_slow_and_rewrites_no_listed_row(
    kubectl, namespace, manager, exchange, workers, start_operator, rabbitmq_api
):
    """The restarted operator consumes at once, while the Manager takes 9 s to list the rows
    (under the client's timeout); the workers it hears meanwhile are active in its fleet, and
    once the rows are read, those the Manager lists as active are not registered again
    (refreshInterval 1h: nothing else is due)."""
    first = start_fleet(kubectl, namespace, manager, exchange, workers, start_operator, "slow")
    first.stop()
    eventually(
        lambda: rabbitmq_api.queue(exchange.queue).get("consumers") == 0,
        timeout=30,
        what="the first operator gone from the queue",
    )
    manager.clear_requests()  # from here on, only the second operator's
    listing = f"/messaging/exchanges/{exchange.exchange_id}/modules"
    held = 9.0
    manager.delay_next(1, held, "GET", listing)

    second = start_operator(namespace, identity="overseer-e2e-2")
    eventually(
        lambda: rabbitmq_api.queue(exchange.queue).get("consumers") == 1,
        timeout=60,
        what="the queue consumed",
    )
    consumed_at = time.monotonic()
    first_listing = next(r for r in manager.requests if r.method == "GET" and r.path == listing)
    assert consumed_at < first_listing.time + held  # before the listing was answered
    eventually(
        lambda: (
            first_listing.status == 200 and second.metric("overseer_manager_pending_writes") == 0
        ),
        timeout=60,
        what="the listing answered and nothing owed",
    )
    time.sleep(3)
    for host in LIVE:
        assert manager_calls(manager, exchange.exchange_id, host) == [], host
    # The first operator's own row goes quiet for real: only it may turn inactive.
    assert_fleet_untouched(manager, exchange, second, others_expire=True)


async def publish_filler(amqp_url: str, exchange: Exchange, count: int) -> None:
    """Messages that are not heartbeats (they are acked and ignored), published in bulk."""
    body = b'{"event_type":"filler","hostname":"nobody"}'
    async with await aio_pika.connect(amqp_url) as connection:
        channel = await connection.channel(publisher_confirms=False)
        topic = await channel.get_exchange(exchange.root_exchange_name, ensure=False)
        for start in range(0, count, 500):
            await asyncio.gather(
                *(
                    topic.publish(aio_pika.Message(body), exchange.binding_key)
                    for _ in range(start, min(count, start + 500))
                )
            )


def test_a_row_the_operator_never_heard_of_expires(
    kubectl, namespace, manager, exchange, workers, start_operator
):
    """A row written after start-up by someone else (or left by a lost DELETE) is found by the
    periodic reconciliation and expires by the same rules."""
    operator = start_fleet(kubectl, namespace, manager, exchange, workers, start_operator, "rows")
    manager.put_module(
        exchange.exchange_id,
        "ghost-1",
        "builder",
        "active",
        updated_at=datetime.now(UTC) - timedelta(hours=2),
    )
    eventually(
        lambda: "ghost-1" not in manager_states(manager, exchange.exchange_id),
        timeout=30,  # reconciliation every inactiveAfter/2 here
        what="the ghost row deleted",
    )
    assert manager_calls(manager, exchange.exchange_id, "ghost-1")[-1] == ("DELETE", None)
    assert_fleet_untouched(manager, exchange, operator, others_expire=True)


def test_the_operators_own_row_stays_active_with_a_physical_queue_name(
    kubectl, namespace, manager, exchange, workers, start_operator
):
    """The queue is named as the estate names them (``<ns>:us-east-1.system_modules``); the
    operator's own heartbeat uses the logical name in its routing key, so it arrives."""
    assert ":" in exchange.queue
    operator = start_fleet(kubectl, namespace, manager, exchange, workers, start_operator, "self")
    time.sleep(8)  # longer than offlineAfter
    # With several replicas (pytest --replicas) the owner's identity; one that handed the
    # exchange over deleted its row, never let it age.
    owner = monitored_by(kubectl, namespace, "self")
    assert manager_states(manager, exchange.exchange_id).get(owner) == "active"
    for identity in operator.identities:
        assert ("POST", "inactive") not in manager_calls(manager, exchange.exchange_id, identity)
    assert operator.metric("overseer_heartbeats_received_total") > 0


def test_a_spec_edit_that_cannot_be_applied_stops_consuming_the_old_queue(
    kubectl, namespace, manager, exchange, workers, start_operator, rabbitmq_api
):
    """A new queue and a Secret that does not exist yet: the old session must not go on
    consuming the queue the spec no longer names (while the status names the new one)."""
    operator = start_fleet(kubectl, namespace, manager, exchange, workers, start_operator, "moved")
    moved = Exchange(
        exchange.exchange_id,
        exchange.broker_id,
        exchange.root_exchange_name,
        exchange.routing_key,
        f"{exchange.queue}.v2",
    )
    provision(rabbitmq_api, moved)
    try:
        patch_spec(
            kubectl,
            namespace,
            "moved",
            queues={"systemModules": moved.queue},
            manager={"oauth": {"clientSecretRef": {"name": "later", "key": "clientSecret"}}},
        )
        eventually(
            lambda: ready(kubectl, namespace, "moved").get("reason") == "SecretNotFound",
            timeout=30,
            what="Ready=False SecretNotFound",
        )
        eventually(
            lambda: rabbitmq_api.queue(exchange.queue).get("consumers") == 0,
            timeout=30,
            what="the old queue no longer consumed",
        )
        time.sleep(8)  # longer than offlineAfter: nothing is consumed, nobody may be judged
        assert_fleet_untouched(manager, exchange, operator)

        create_secret(kubectl, namespace, "later", clientSecret=CLIENT_SECRET)
        eventually(
            lambda: rabbitmq_api.queue(moved.queue).get("consumers") == 1,
            timeout=60,
            what="the new queue consumed once the Secret exists",
        )
        eventually(
            lambda: ready(kubectl, namespace, "moved").get("status") == "True",
            timeout=30,
            what="Ready",
        )
    finally:
        rabbitmq_api.delete_queue(moved.queue)
