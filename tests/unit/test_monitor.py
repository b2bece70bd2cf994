"""The monitor's heartbeat path and outage rule, in process (no I/O happens before ``run``)."""

from __future__ import annotations

import asyncio
import contextlib
import gc

import httpx
import pytest
from kopf._cogs.aiokits import aioenums

from overseer_operator import metrics
from overseer_operator.config import OperatorEnvironment
from overseer_operator.consumer import QueueReading
from overseer_operator.heartbeat import MessageRejected, encode_etf, encode_json
from overseer_operator.kube import KubeApi
from overseer_operator.manager_client import ManagerClient
from overseer_operator.model import (
    MANAGER_SYNCED,
    BrokerState,
    BrokerStatus,
    Heartbeat,
    WorkerState,
)
from overseer_operator.monitor import ExchangeMonitor

SPEC = {
    "exchangeId": "1",
    "brokerId": "1",
    "thresholds": {"inactiveAfter": "10m", "offlineAfter": "20m"},
}


@pytest.fixture
async def monitor() -> ExchangeMonitor:
    metrics.forget_exchange("ns", "mx")  # the registry is global: count from zero
    body = {
        "metadata": {"namespace": "ns", "name": "mx", "generation": 1, "uid": "u"},
        "spec": SPEC,
        "status": {
            "modules": [
                {
                    "hostname": "old-1",
                    "type": "builder",
                    "state": "active",
                    "lastHeartbeatTime": "2020-01-01T00:00:00Z",
                }
            ]
        },
    }
    unused = KubeApi(httpx.AsyncClient(base_url="http://127.0.0.1:9"))  # never called here
    exchange = ExchangeMonitor(body, OperatorEnvironment(), unused)
    exchange._apply_spec(1)
    return exchange


def consuming(monitor: ExchangeMonitor) -> None:
    monitor.on_queue_reading(QueueReading(0, 0, started=True))
    monitor.on_broker_status(BrokerStatus(BrokerState.CONSUMING, "consuming"))


@pytest.mark.looptime
async def test_nothing_flips_before_the_queue_is_consumed_and_during_an_outage(monitor):
    monitor.tracker.seed_from_status(
        {
            "modules": [
                {
                    "hostname": "w1",
                    "type": "builder",
                    "state": "active",
                    "lastHeartbeatTime": "2099-01-01T00:00:00Z",
                }
            ]
        }
    )
    assert monitor.tracker.fleet.next_deadline() is None  # not consuming yet: time stands still
    await asyncio.sleep(3600)
    assert monitor.tracker.fleet.sweep() == []

    consuming(monitor)
    assert monitor.tracker.fleet.next_deadline() is not None
    await asyncio.sleep(300)
    monitor.on_broker_status(BrokerStatus(BrokerState.UNREACHABLE, "lost"))
    await asyncio.sleep(3600)  # an hour-long outage
    assert monitor.tracker.fleet.sweep() == []
    consuming(monitor)
    await asyncio.sleep(299)  # the 5 minutes of margin it had left
    assert monitor.tracker.fleet.sweep() == []
    await asyncio.sleep(2)
    assert [t.current for t in monitor.tracker.fleet.sweep()] == [WorkerState.INACTIVE]


async def test_both_wire_formats_count_and_garbage_is_rejected(monitor):
    consuming(monitor)
    monitor.handle_message(encode_etf(Heartbeat("w-etf", "builder", "active", [])))
    monitor.handle_message(encode_json(Heartbeat("w-json", "deployer", "active", [])))
    monitor.handle_message(
        encode_etf(Heartbeat("w-x", "builder", "active", []), event_type="upgrade_request")
    )
    with pytest.raises(MessageRejected):
        monitor.handle_message(b"\x83not a term")
    assert {monitor.tracker.fleet.get(h).state for h in ("w-etf", "w-json")} == {WorkerState.ACTIVE}
    assert monitor.tracker.fleet.get("w-x") is None
    assert monitor.writer.pending == 0  # held until the Manager's rows are read
    monitor.on_manager_rows([])  # it lists neither
    assert monitor.writer.pending == 2  # two registrations owed to the Manager
    rejected = [
        sample
        for family in metrics.REGISTRY.collect()
        if family.name == "overseer_messages_rejected"
        for sample in family.samples
        if sample.name.endswith("_total") and sample.labels["name"] == "mx"
    ]
    assert sum(sample.value for sample in rejected) == 1


async def test_the_first_manager_write_after_a_listing_changes_no_word_of_the_status(
    monitor, manager_settings
):
    """ManagerSynced=True says the same whichever call proved it: a listing said "reachable"
    and the next write "written", two status patches more for an unchanged fleet."""
    consuming(monitor)
    monitor.on_manager_rows([])
    monitor.on_manager_read(MANAGER_SYNCED)  # what a successful listing reports (test_session)
    before = monitor._render_status()["conditions"]
    async with ManagerClient(manager_settings) as client:
        monitor.writer.attach(client)
        writing = asyncio.create_task(monitor.writer.run())
        try:
            monitor.handle_message(encode_json(Heartbeat("w1", "builder", "active", [])))
            async with asyncio.timeout(10):
                while monitor.writer.pending or monitor._manager_write is None:  # noqa: ASYNC110
                    await asyncio.sleep(0.01)
        finally:
            writing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writing
    synced = [c for c in monitor._render_status()["conditions"] if c["type"] == "ManagerSynced"]
    assert synced == [c for c in before if c["type"] == "ManagerSynced"]
    assert synced[0]["status"] == "True"


@pytest.mark.looptime
async def test_a_lost_exchange_is_halted_at_once_and_judges_nobody_after(monitor):
    """The claim's loss calls ``halt`` synchronously (sharding.Coordinator.lose): verdicts are
    held from that moment, whatever the consumer reports until its connection is closed, and
    neither writer sends anything more."""
    consuming(monitor)
    monitor.handle_message(encode_etf(Heartbeat("w1", "builder", "active", [])))
    monitor.halt()
    assert not monitor.tracker.verdicts_allowed
    monitor.on_broker_status(BrokerStatus(BrokerState.CONSUMING, "a late report"))
    await asyncio.sleep(3600)
    assert monitor.tracker.fleet.sweep() == []
    assert monitor.tracker.fleet.get("w1").state is WorkerState.ACTIVE
    assert await monitor.status_writer.write_if_due(fresh=True) is False


@pytest.mark.looptime
async def test_waiting_for_a_spec_change_leaves_no_garbage_and_ends_at_the_stop(monitor):
    """Each of kopf's ``stopped.wait(timeout)`` that times out leaves a cycle of about 26
    objects (its cancelled wait) for the cyclic collector; the monitor waited so once a second,
    and at 100 exchanges that was most of what each timed full collection had to free."""
    setter: aioenums.FlagSetter[object] = aioenums.FlagSetter()
    stopped = aioenums.AsyncFlagWaiter(setter)
    stop_requested = asyncio.ensure_future(stopped.wait())
    gc.collect()
    gc.disable()
    try:
        await monitor._wait_for_change(stopped, stop_requested, 1)  # returns at the deadline
        freed = gc.collect()
    finally:
        gc.enable()
    assert freed < 26
    waiting = asyncio.create_task(monitor._wait_for_change(stopped, stop_requested, 1))
    await asyncio.sleep(0.5)
    assert not waiting.done()
    setter.set()
    await asyncio.sleep(0.001)
    assert waiting.done()


def test_the_status_waits_for_the_manager_s_list_and_the_broker_s_answer(monitor):
    assert not monitor._start_settled()  # the fleet is the one worker the old status listed
    consuming(monitor)
    assert not monitor._start_settled()
    monitor.on_manager_rows([])
    assert monitor._start_settled()


def test_the_status_is_written_at_once_when_something_is_wrong(monitor):
    monitor.on_broker_status(BrokerStatus(BrokerState.CONNECTING, "connecting"))
    monitor.on_manager_rows_unavailable()  # the Manager cannot be read
    assert not monitor._start_settled()  # the broker has not answered yet
    monitor.on_broker_status(BrokerStatus(BrokerState.UNREACHABLE, "connection refused"))
    assert monitor._start_settled()


def test_a_configuration_error_is_written_at_once(monitor):
    monitor._body["spec"] = {**SPEC, "thresholds": {"inactiveAfter": "soon"}}
    assert monitor._apply_spec(2) is None
    assert monitor._start_settled()
