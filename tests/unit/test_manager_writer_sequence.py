"""The Manager writer while a call is in flight: a newer transition is never dropped when the
older call completes (sequence numbers), and the pending count stays exact."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import tracemalloc
from collections.abc import AsyncIterator

import pytest

from devtools.manager_emulator import ManagerEmulator
from overseer_operator.backoff import Backoff
from overseer_operator.fleet import Fleet
from overseer_operator.manager_client import ManagerClient, ManagerSettings
from overseer_operator.manager_writer import ManagerWriter
from overseer_operator.model import (
    MANAGER_SYNCED,
    Heartbeat,
    Reason,
    Thresholds,
    Transition,
    Verdict,
    WorkerState,
)
from tests.fakes import FakeClock
from tests.fixtures.manager import EXCHANGE_ID
from tests.fleet_feed import heard
from tests.metering import sample

ACTIVE, INACTIVE, OFFLINE = WorkerState.ACTIVE, WorkerState.INACTIVE, WorkerState.OFFLINE
HELD = 0.4  # seconds the emulator holds the first write


def transition(
    hostname: str,
    previous: WorkerState | None,
    current: WorkerState,
    module_type: str = "builder",
) -> Transition:
    return Transition(hostname, module_type, previous, current, [], 0.0, 0.0)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1000.0)


@pytest.fixture
def fleet(clock: FakeClock) -> Fleet:
    return Fleet(Thresholds(), clock)


@pytest.fixture
async def writer(
    manager_settings: ManagerSettings, clock: FakeClock, fleet: Fleet
) -> AsyncIterator[ManagerWriter]:
    settings = ManagerSettings(**{**manager_settings.__dict__, "max_attempts": 1})
    health: list[Verdict] = []
    async with ManagerClient(settings) as client:
        writer = ManagerWriter(
            EXCHANGE_ID,
            300.0,
            clock,
            health.append,
            ("ns", "seq"),
            active_record=fleet.active_record,
            concurrency=2,
            backoff=Backoff(0.01, 0.05),
        )
        writer.attach(client)
        task = asyncio.create_task(writer.run())
        yield writer
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def in_flight(emulator: ManagerEmulator, count: int = 1) -> None:
    """Until ``count`` module writes have reached the emulator (held ones included)."""
    async with asyncio.timeout(5):
        while len(emulator.module_writes(EXCHANGE_ID)) < count:  # noqa: ASYNC110
            await asyncio.sleep(0.005)


async def settled(writer: ManagerWriter) -> None:
    async with asyncio.timeout(10):
        while writer.pending:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)


def writes(emulator: ManagerEmulator) -> list[tuple[str, str, str | None, str | None]]:
    return [
        (r.method, r.path.rsplit("/", 1)[1], None, None)
        if r.method == "DELETE"
        else (r.method, r.body["hostname"], r.body["status"], r.body["type"])
        for r in emulator.module_writes(EXCHANGE_ID)
    ]


def pending_gauge() -> float:
    return sample("overseer_manager_pending_writes", namespace="ns", name="seq")


async def test_a_newer_active_write_survives_the_older_one_completing(writer, manager_emulator):
    manager_emulator.delay_next(1, HELD, method="POST", path_prefix="/messaging")
    writer.apply(transition("w1", None, ACTIVE))
    await in_flight(manager_emulator)
    # While the first POST is held, the worker reports another module type: rewrite its record.
    writer.apply(transition("w1", ACTIVE, ACTIVE, module_type="deployer"))
    assert writer.pending == 1
    await settled(writer)
    assert writes(manager_emulator) == [
        ("POST", "w1", "active", "builder"),
        ("POST", "w1", "active", "deployer"),
    ]
    assert [row["type"] for row in manager_emulator.modules(EXCHANGE_ID)] == ["deployer"]
    assert writer.pending == 0
    assert pending_gauge() == 0


async def test_an_inactive_verdict_during_the_registration_follows_it(writer, manager_emulator):
    manager_emulator.delay_next(1, HELD, method="POST", path_prefix="/messaging")
    writer.apply(transition("w1", None, ACTIVE))
    await in_flight(manager_emulator)
    writer.apply(transition("w1", ACTIVE, INACTIVE))
    writer.apply(transition("w1", INACTIVE, OFFLINE))
    assert writer.pending == 3
    assert pending_gauge() == 3
    await settled(writer)
    assert [(m, h, s) for m, h, s, _ in writes(manager_emulator)] == [
        ("POST", "w1", "active"),
        ("POST", "w1", "inactive"),
        ("DELETE", "w1", None),
    ]
    assert manager_emulator.modules(EXCHANGE_ID) == []
    assert writer.pending == 0


async def test_a_worker_returning_while_its_delete_is_in_flight_is_registered_again(
    writer, manager_emulator
):
    writer.apply(transition("w1", None, ACTIVE))
    await settled(writer)
    manager_emulator.delay_next(1, HELD, method="DELETE")
    writer.apply(transition("w1", INACTIVE, OFFLINE))
    await in_flight(manager_emulator, 2)
    writer.apply(transition("w1", OFFLINE, ACTIVE))
    assert writer.pending == 1  # the DELETE in flight was replaced by the registration
    await settled(writer)
    assert [(m, s) for m, _, s, _ in writes(manager_emulator)] == [
        ("POST", "active"),
        ("DELETE", None),
        ("POST", "active"),
    ]
    assert [row["status"] for row in manager_emulator.modules(EXCHANGE_ID)] == ["active"]


async def test_a_failed_write_in_flight_is_retried_and_the_count_stays_exact(
    writer, manager_emulator
):
    manager_emulator.fail_next(2, status=503, method="POST", path_prefix="/messaging")
    for index in range(3):
        writer.apply(transition(f"w{index}", None, ACTIVE))
    writer.apply(transition("w0", ACTIVE, INACTIVE))
    writer.apply(transition("w0", ACTIVE, INACTIVE))  # the same verdict twice is owed once
    assert writer.pending == 4
    await settled(writer)
    assert writer.pending == 0
    assert pending_gauge() == 0
    assert {row["hostname"]: row["status"] for row in manager_emulator.modules(EXCHANGE_ID)} == {
        "w0": "inactive",
        "w1": "active",
        "w2": "active",
    }


# Refreshes, health and outcomes


@pytest.fixture
async def health_writer(
    manager_settings: ManagerSettings, clock: FakeClock, fleet: Fleet
) -> AsyncIterator[tuple[ManagerWriter, FakeClock, list[Verdict]]]:
    settings = ManagerSettings(**{**manager_settings.__dict__, "max_attempts": 1})
    health: list[Verdict] = []
    async with ManagerClient(settings) as client:
        writer = ManagerWriter(
            EXCHANGE_ID, 300.0, clock, health.append, ("ns", "seq-health"),
            active_record=fleet.active_record, backoff=Backoff(0.01, 0.05),
        )  # fmt: skip
        writer.attach(client)
        task = asyncio.create_task(writer.run())
        yield writer, clock, health
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def beat(hostname: str, workload: list | None = None) -> Heartbeat:
    return Heartbeat(hostname, "builder", "active", workload or [])


async def test_heartbeats_within_the_refresh_interval_write_nothing(
    health_writer, manager_emulator, fleet
):
    writer, clock, _ = health_writer
    writer.apply(transition("w1", None, ACTIVE))
    await settled(writer)
    for _ in range(9):  # 270 s of heartbeats, each settled
        clock.advance(30)
        heard(fleet, writer, beat("w1"))
        await settled(writer)
    assert len(manager_emulator.module_writes(EXCHANGE_ID)) == 1
    clock.advance(30)
    heard(fleet, writer, beat("w1", [{"job": "latest"}]))
    await settled(writer)
    assert len(manager_emulator.module_writes(EXCHANGE_ID)) == 2
    assert manager_emulator.module_writes(EXCHANGE_ID)[-1].body["workload"] == [{"job": "latest"}]


async def test_a_heartbeat_while_a_write_is_owed_updates_it_and_owes_nothing_more(
    health_writer, manager_emulator, fleet
):
    writer, _clock, _ = health_writer
    manager_emulator.set_unavailable(True)
    writer.apply(transition("w1", None, ACTIVE))
    heard(fleet, writer, beat("w1", [{"job": "newer"}]))
    heard(fleet, writer, beat("w2"))  # known to nobody: a first write is owed
    heard(fleet, writer, beat("w3"))
    assert writer.pending == 3
    manager_emulator.set_unavailable(False)
    await settled(writer)
    bodies = {r.body["hostname"]: r.body for r in manager_emulator.module_writes(EXCHANGE_ID)}
    assert sorted(bodies) == ["w1", "w2", "w3"]
    assert bodies["w1"]["workload"] == [{"job": "newer"}]
    assert len(manager_emulator.module_writes(EXCHANGE_ID)) == 3


async def test_a_404_on_a_post_is_retried_and_on_a_delete_is_done(health_writer, manager_emulator):
    writer, _clock, health = health_writer
    manager_emulator.fail_next(1, status=404, method="POST", path_prefix="/messaging")
    writer.apply(transition("w1", None, ACTIVE))
    await settled(writer)
    assert health[0].status is False and health[0].reason is Reason.MANAGER_UNREACHABLE
    assert health[0].message.startswith("1 Manager writes pending: ")
    assert [row["hostname"] for row in manager_emulator.modules(EXCHANGE_ID)] == ["w1"]
    manager_emulator.fail_next(1, status=404, method="DELETE")
    writer.apply(transition("w1", INACTIVE, OFFLINE))
    await settled(writer)
    assert len(manager_emulator.module_writes(EXCHANGE_ID)) == 3  # the DELETE was not retried
    assert health[-1] == MANAGER_SYNCED


async def test_refused_credentials_are_reported_as_unauthorized(health_writer, manager_emulator):
    writer, _clock, health = health_writer
    manager_emulator.set_client_secret("overseer-tests", "rotated")
    writer.apply(transition("w1", None, ACTIVE))
    async with asyncio.timeout(5):
        while not health:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    assert (health[0].status, health[0].reason) == (False, Reason.MANAGER_UNAUTHORIZED)
    assert writer.pending == 1


async def test_synced_is_reported_only_when_nothing_is_owed(health_writer, manager_emulator):
    writer, _clock, health = health_writer
    manager_emulator.delay_next(1, HELD, method="POST", path_prefix="/messaging")
    writer.apply(transition("w1", None, ACTIVE))
    writer.apply(transition("w2", None, ACTIVE))
    await settled(writer)
    assert [v.status for v in health] == [True]  # once, after the second write


async def test_writes_are_counted_by_operation_and_outcome(health_writer, manager_emulator):
    writer, _clock, _ = health_writer

    def count(operation: str, outcome: str) -> float:
        return sample(
            "overseer_manager_writes_total",
            namespace="ns",
            name="seq-health",
            operation=operation,
            outcome=outcome,
        )

    before = {
        key: count(*key)
        for key in (("active", "success"), ("active", "rejected"), ("delete", "failure"))
    }
    manager_emulator.fail_next(1, status=400, method="POST", path_prefix="/messaging")
    writer.apply(transition("w1", None, ACTIVE))
    writer.apply(transition("w2", None, ACTIVE))
    await settled(writer)
    manager_emulator.fail_next(1, status=503, method="DELETE")
    writer.apply(transition("w2", INACTIVE, OFFLINE))
    await settled(writer)
    assert count("active", "success") == before["active", "success"] + 1
    assert count("active", "rejected") == before["active", "rejected"] + 1
    assert count("delete", "failure") == before["delete", "failure"] + 1


def unattached(clock: FakeClock, fleet: Fleet, name: str) -> ManagerWriter:
    """A writer with no Manager client yet: what it owes accumulates."""
    return ManagerWriter(
        EXCHANGE_ID, 300.0, clock, lambda verdict: None, ("ns", name),
        active_record=fleet.active_record,
    )  # fmt: skip


def test_what_is_owed_to_the_manager_is_not_tracked_by_the_garbage_collector(clock, fleet):
    """A mass transition owes a write per worker; tracked records would be scanned by every
    full collection it triggers (see the fleet's test of the same)."""
    writer = unattached(clock, fleet, "seq-gc")
    gc.collect()
    before = len(gc.get_objects())
    for index in range(5_000):
        writer.apply(transition(f"worker-{index}", ACTIVE, INACTIVE))
    for _ in range(3):  # tuples nested three deep are untracked one level per collection
        gc.collect()
    assert writer.pending == 5_000
    assert len(gc.get_objects()) - before < 50


def test_a_refresh_waiting_in_line_holds_no_record_of_its_own(clock, fleet):
    """100,000 workers owe 333 refreshes a second at the default interval, more than one core
    writes beside their heartbeats: what waits must cost little. A refresh reads its record from
    the fleet when its turn comes; it held a copy of its own before (331 bytes, 104 now)."""
    writer = unattached(clock, fleet, "seq-memory")
    beats = [beat(f"worker-{index}", [{"job": index}]) for index in range(20_000)]
    for heartbeat in beats:
        fleet.observe(heartbeat)
        writer.mark_written(heartbeat.hostname)
    clock.advance(301)  # every row is due for a refresh
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for heartbeat in beats:
            heard(fleet, writer, heartbeat)
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert writer.pending == 20_000
    assert all(writer.owes(heartbeat.hostname) for heartbeat in beats)
    assert grown / 20_000 < 160


async def test_a_refresh_writes_what_the_fleet_holds_when_its_turn_comes(
    manager_settings, manager_emulator, clock, fleet
):
    """The newest workload, and nothing for a worker the fleet no longer counts active."""
    settings = ManagerSettings(**{**manager_settings.__dict__, "max_attempts": 1})
    writer = unattached(clock, fleet, "seq-refresh")
    for hostname in ("w1", "w2"):
        heard(fleet, writer, beat(hostname))  # never written: a refresh is owed at once
    heard(fleet, writer, beat("w1", [{"job": "newest"}]))  # while its refresh waits
    fleet.forget("w2")
    assert writer.pending == 2
    async with ManagerClient(settings) as client:
        writer.attach(client)
        task = asyncio.create_task(writer.run())
        try:
            await settled(writer)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    assert [
        (r.body["hostname"], r.body["workload"])
        for r in manager_emulator.module_writes(EXCHANGE_ID)
    ] == [("w1", [{"job": "newest"}])]
