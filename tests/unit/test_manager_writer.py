"""The Manager writer against the Manager emulator (a real HTTP server): order, coalescing,
refresh, and no transition lost to a Manager outage."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator

import pytest

from devtools.manager_emulator import ManagerEmulator
from overseer_operator.backoff import Backoff
from overseer_operator.defaults import MANAGER_WRITE_LATENESS_ALLOWED
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
from tests.fixtures.manager import EXCHANGE_ID, PARENT_EXCHANGE_ID
from tests.fleet_feed import heard
from tests.metering import sample

MODULES = f"/messaging/exchanges/{EXCHANGE_ID}/modules"  # not the token endpoint


def transition(hostname: str, previous: WorkerState | None, current: WorkerState) -> Transition:
    return Transition(hostname, "builder", previous, current, [{"description": "job"}], 0.0, 0.0)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1000.0)


@pytest.fixture
def fleet(clock: FakeClock) -> Fleet:
    return Fleet(Thresholds(), clock)


@pytest.fixture
def health() -> list[Verdict]:
    return []


@pytest.fixture
async def writer(
    manager_settings: ManagerSettings, clock: FakeClock, fleet: Fleet, health: list
) -> AsyncIterator[ManagerWriter]:
    settings = ManagerSettings(**{**manager_settings.__dict__, "max_attempts": 1})
    async with ManagerClient(settings) as client:
        writer = ManagerWriter(
            EXCHANGE_ID,
            300.0,
            clock,
            health.append,
            ("ns", "mx"),
            active_record=fleet.active_record,
            backoff=Backoff(0.01, 0.05),
        )
        writer.attach(client)
        task = asyncio.create_task(writer.run())
        yield writer
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def settled(writer: ManagerWriter) -> None:
    """Poll (the writer has no "idle" event to wait on) until nothing is owed any more."""
    async with asyncio.timeout(10):
        while writer.pending:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)


def writes(emulator: ManagerEmulator) -> list[tuple[str, str, str | None]]:
    result = []
    for request in emulator.module_writes(EXCHANGE_ID):
        if request.method == "DELETE":
            result.append(("DELETE", request.path.rsplit("/", 1)[1], None))
        else:
            result.append(("POST", request.body["hostname"], request.body["status"]))
    return result


async def test_transitions_become_the_legacy_calls_in_order(writer, manager_emulator):
    writer.apply(transition("w1", None, WorkerState.ACTIVE))
    await settled(writer)
    writer.apply(transition("w1", WorkerState.ACTIVE, WorkerState.INACTIVE))
    writer.apply(transition("w1", WorkerState.INACTIVE, WorkerState.OFFLINE))
    await settled(writer)
    assert writes(manager_emulator) == [
        ("POST", "w1", "active"),
        ("POST", "w1", "inactive"),
        ("DELETE", "w1", None),
    ]
    assert manager_emulator.modules(EXCHANGE_ID) == []
    posted = manager_emulator.module_writes(EXCHANGE_ID)[0].body
    assert posted == {
        "hostname": "w1",
        "type": "builder",
        "status": "active",
        "workload": [{"description": "job"}],
    }


async def test_a_returning_worker_replaces_what_was_still_owed(writer, manager_emulator):
    manager_emulator.set_unavailable(True)
    writer.apply(transition("w1", WorkerState.ACTIVE, WorkerState.INACTIVE))
    writer.apply(transition("w1", WorkerState.INACTIVE, WorkerState.OFFLINE))
    writer.apply(transition("w1", WorkerState.OFFLINE, WorkerState.ACTIVE))
    assert writer.pending == 1
    manager_emulator.set_unavailable(False)
    await settled(writer)
    assert writes(manager_emulator)[-1:] == [("POST", "w1", "active")]
    assert [row["status"] for row in manager_emulator.modules(EXCHANGE_ID)] == ["active"]


async def test_a_retired_row_is_deleted_without_inactive_and_survives_an_outage(
    writer, manager_emulator
):
    """Another replica's own row: whatever was owed for it, only a DELETE goes out, retried
    through an outage."""
    manager_emulator.put_module(EXCHANGE_ID, "replica-b", "overseer", "active")
    manager_emulator.set_unavailable(True)
    writer.apply(transition("replica-b", WorkerState.ACTIVE, WorkerState.INACTIVE))
    writer.retire("replica-b")
    assert writer.pending == 1
    await asyncio.sleep(0.2)
    manager_emulator.set_unavailable(False)
    await settled(writer)
    assert writes(manager_emulator) == [("DELETE", "replica-b", None)]
    assert manager_emulator.modules(EXCHANGE_ID) == []


async def test_a_manager_outage_loses_nothing_and_is_reported(writer, manager_emulator, health):
    manager_emulator.set_unavailable(True)
    for index in range(5):
        writer.apply(transition(f"w{index}", None, WorkerState.ACTIVE))
    writer.apply(transition("w0", WorkerState.ACTIVE, WorkerState.INACTIVE))
    await asyncio.sleep(0.3)
    assert writer.pending == 6
    assert health and health[-1].status is False
    assert health[-1].reason is Reason.MANAGER_UNREACHABLE
    manager_emulator.set_unavailable(False)
    await settled(writer)
    states = {row["hostname"]: row["status"] for row in manager_emulator.modules(EXCHANGE_ID)}
    assert states == {
        "w0": "inactive",
        "w1": "active",
        "w2": "active",
        "w3": "active",
        "w4": "active",
    }
    assert (health[-1].status, health[-1].reason) == (True, Reason.SYNCED)


async def test_a_write_owed_too_long_says_the_writer_is_behind_until_it_caught_up(
    writer, manager_emulator, clock, health
):
    """A restarted operator reads an active row's age as its worker's silence: true only while
    writes go out in time. A write owed longer than the allowance makes ManagerSynced False
    (ManagerBehind, which the next process reads from the status); catching up makes it True."""
    manager_emulator.delay_next(1, 0.5, method="POST", path_prefix=MODULES)
    writer.apply(transition("w1", None, WorkerState.ACTIVE))
    await asyncio.sleep(0.1)  # w1's POST is held by the Manager
    clock.advance(MANAGER_WRITE_LATENESS_ALLOWED + 1)
    assert health == []  # nothing noticed it yet
    writer.apply(transition("w2", None, WorkerState.ACTIVE))  # the line is checked
    assert writer.lateness() == pytest.approx(MANAGER_WRITE_LATENESS_ALLOWED + 1)
    assert [(verdict.status, verdict.reason) for verdict in health] == [
        (False, Reason.MANAGER_BEHIND)
    ]
    assert "the oldest for 61 s" in health[0].message
    await settled(writer)
    assert (health[-1].status, health[-1].reason) == (True, Reason.SYNCED)
    assert writer.lateness() == 0.0


async def test_a_writer_behind_is_current_again_once_nothing_owed_is_old(
    writer, manager_emulator, clock, health
):
    manager_emulator.delay_next(1, 0.5, method="POST", path_prefix=MODULES)
    writer.apply(transition("w1", None, WorkerState.ACTIVE))
    await asyncio.sleep(0.1)
    clock.advance(MANAGER_WRITE_LATENESS_ALLOWED + 1)
    writer.apply(transition("w2", None, WorkerState.ACTIVE))
    await asyncio.sleep(0.1)  # w2 written; w1 still held: behind
    assert (health[-1].status, health[-1].reason) == (False, Reason.MANAGER_BEHIND)
    manager_emulator.delay_next(1, 1.5, method="POST", path_prefix=MODULES)
    writer.apply(transition("w3", None, WorkerState.ACTIVE))  # owed from now
    await asyncio.sleep(0.6)  # w1 written; w3, just owed, still held
    assert writer.pending == 1
    assert health[-1] == MANAGER_SYNCED  # while w3 is still owed: the words do not count it
    await settled(writer)
    assert health[-1] == MANAGER_SYNCED


async def test_the_lateness_metric_keeps_growing_while_the_manager_takes_nothing(
    writer, manager_emulator, clock
):
    """The alert reads the age of the oldest write owed (a large fleet always owes a few
    refreshes, so a count says nothing); the status render updates it while nothing is
    written, and a write brings it back down."""
    lateness = "overseer_manager_write_lateness_seconds"
    manager_emulator.delay_next(1, 0.5, method="POST", path_prefix=MODULES)
    writer.apply(transition("w1", None, WorkerState.ACTIVE))
    await asyncio.sleep(0.1)  # held by the Manager
    clock.advance(700)
    writer.observe_lateness()  # what every status render does
    assert sample(lateness, namespace="ns", name="mx") == pytest.approx(700)
    await settled(writer)
    assert sample(lateness, namespace="ns", name="mx") == 0.0


async def test_refresh_only_after_the_interval(writer, manager_emulator, clock, fleet):
    beat = Heartbeat("w1", "builder", "active", [])
    writer.apply(transition("w1", None, WorkerState.ACTIVE))
    await settled(writer)
    for _ in range(10):  # a steady worker: no write per heartbeat
        clock.now += 30
        heard(fleet, writer, beat)
    await settled(writer)
    assert len(writes(manager_emulator)) == 2  # registration + one refresh at 300 s
    writer.refresh_interval = 0.0  # the legacy behaviour: every heartbeat
    for _ in range(3):
        heard(fleet, writer, beat)
        await settled(writer)
    assert len(writes(manager_emulator)) == 5


async def test_a_record_the_manager_refuses_is_dropped_not_retried_forever(
    writer, manager_emulator
):
    manager_emulator.fail_next(1, status=400, method="POST", path_prefix="/messaging")
    writer.apply(transition("w1", None, WorkerState.ACTIVE))
    writer.apply(transition("w2", None, WorkerState.ACTIVE))
    await settled(writer)
    assert [row["hostname"] for row in manager_emulator.modules(EXCHANGE_ID)] in (["w1"], ["w2"])


async def test_refreshes_after_a_mass_registration_are_spread_evenly(
    writer, manager_emulator, clock, fleet
):
    """No thundering herd: 200 workers registered at once are refreshed over one interval, about
    as many in each tenth of it, and no worker more than once per interval after its first."""
    hostnames = [f"w{index}" for index in range(200)]
    for hostname in hostnames:
        writer.apply(transition(hostname, None, WorkerState.ACTIVE))
    await settled(writer)
    manager_emulator.clear_requests()
    refreshed_at: dict[str, list[float]] = {hostname: [] for hostname in hostnames}
    start = clock.now
    for _ in range(60):  # two intervals of heartbeats every 10 s
        clock.now += 10
        before = len(writes(manager_emulator))
        for hostname in hostnames:
            heard(fleet, writer, Heartbeat(hostname, "builder", "active", []))
        await settled(writer)
        for _, hostname, _ in writes(manager_emulator)[before:]:
            refreshed_at[hostname].append(clock.now - start)
    first = [times[0] for times in refreshed_at.values()]
    per_tenth = [sum(1 for at in first if 30 * k < at <= 30 * (k + 1)) for k in range(10)]
    assert min(per_tenth) >= 5 and max(per_tenth) <= 35, per_tenth  # 20 each if perfectly even
    for times in refreshed_at.values():
        assert all(later - earlier >= 300 for earlier, later in itertools.pairwise(times))
        assert len(times) == 2  # the first, then one interval later


async def test_a_halted_writer_starts_no_call_even_for_what_it_still_owes(writer, manager_emulator):
    """The replica lost the exchange: from the halt on, nothing more goes to the Manager, not
    even what was already owed (the next owner derives its writes from the evidence again)."""
    writer.apply(transition("w1", None, WorkerState.ACTIVE))
    await settled(writer)
    writer.halt()
    writer.apply(transition("w1", WorkerState.ACTIVE, WorkerState.INACTIVE))
    writer.apply(transition("w2", None, WorkerState.ACTIVE))
    await asyncio.sleep(0.3)
    assert writes(manager_emulator) == [("POST", "w1", "active")]
    assert writer.pending == 2


async def test_transitions_are_written_before_the_refreshes_waiting_ahead_of_them(
    manager_settings, manager_emulator, clock, fleet
):
    """A refresh only renews the date of a row that is already right; a verdict changes it. A
    writer behind on its refreshes writes a worker's verdict first, and a worker waiting for
    a refresh that makes a transition moves up with it."""
    settings = ManagerSettings(**{**manager_settings.__dict__, "max_attempts": 1})
    async with ManagerClient(settings) as client:
        writer = ManagerWriter(
            EXCHANGE_ID,
            300.0,
            clock,
            lambda _: None,
            ("ns", "mx"),
            active_record=fleet.active_record,
            concurrency=1,
        )
        for index in range(6):
            writer.apply(transition(f"w{index}", None, WorkerState.ACTIVE))
        writer.attach(client)
        task = asyncio.create_task(writer.run())
        try:
            await settled(writer)
            manager_emulator.clear_requests()
            clock.advance(301)  # every row is due for a refresh
            for index in range(6):
                heard(fleet, writer, Heartbeat(f"w{index}", "builder", "active", []))
            writer.apply(transition("w5", WorkerState.ACTIVE, WorkerState.INACTIVE))
            writer.apply(transition("w9", None, WorkerState.ACTIVE))
            await settled(writer)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    calls = writes(manager_emulator)
    # w5 owed its refresh, then its verdict: both go ahead of the other refreshes, in order.
    assert calls[:3] == [
        ("POST", "w5", "active"),
        ("POST", "w5", "inactive"),
        ("POST", "w9", "active"),
    ]
    assert sorted(calls[3:]) == [("POST", f"w{index}", "active") for index in range(5)]


def writers(clock: FakeClock, fleet: Fleet, *exchanges: tuple[str, int]) -> list[ManagerWriter]:
    """A writer per (exchange id, concurrency): several exchanges of one operator."""
    return [
        ManagerWriter(
            exchange_id,
            300.0,
            clock,
            lambda _: None,
            ("ns", exchange_id),
            active_record=fleet.active_record,
            concurrency=concurrency,
        )
        for exchange_id, concurrency in exchanges
    ]


async def test_refreshes_behind_leave_write_slots_for_another_exchanges_verdict(
    manager_settings, manager_emulator, clock, fleet
):
    """One exchange owes 40 refreshes to a Manager that holds each for 0.5 s; another exchange's
    verdict still finds a write slot while every one of them is held, instead of queueing
    behind them."""
    settings = ManagerSettings(**{**manager_settings.__dict__, "max_attempts": 1})
    busy_id, quiet_id = EXCHANGE_ID, PARENT_EXCHANGE_ID
    async with ManagerClient(settings) as client:
        busy, quiet = writers(clock, fleet, (busy_id, 40), (quiet_id, 4))
        hostnames = [f"w{index}" for index in range(40)]
        for hostname in hostnames:
            busy.mark_written(hostname)
        for writer in (busy, quiet):
            writer.attach(client)
        tasks = [asyncio.create_task(writer.run()) for writer in (busy, quiet)]
        try:
            await client.list_modules(busy_id)  # the token, fetched once before the clock starts
            manager_emulator.delay_next(
                40, 0.5, method="POST", path_prefix=f"/messaging/exchanges/{busy_id}/"
            )
            clock.advance(301)
            for hostname in hostnames:
                heard(fleet, busy, Heartbeat(hostname, "builder", "active", []))
            await asyncio.sleep(0.1)  # every refresh slot taken, each write held
            quiet.apply(transition("q1", WorkerState.ACTIVE, WorkerState.INACTIVE))
            await settled(quiet)
            assert busy.pending == 40  # written while not one refresh had come back
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    assert ("POST", "q1", "inactive") in [
        ("POST", r.body["hostname"], r.body["status"])
        for r in manager_emulator.module_writes(quiet_id)
    ]


async def test_a_write_slot_coming_free_goes_to_a_verdict_before_waiting_refreshes(
    manager_settings, manager_emulator, clock, fleet
):
    """Every write slot is held (a slow Manager); one exchange's refreshes queue for a slot, then
    another exchange's verdicts do. Each slot that comes free goes to a verdict first: with one
    first-come line, 10,000 workers falling silent at once waited behind the refreshes of a
    hundred exchanges (Manager detection lag p99 2.0 s at 100,000 workers)."""
    settings = ManagerSettings(**{**manager_settings.__dict__, "max_attempts": 1})
    manager_emulator.add_exchange("3", "aws:eu-west-1", "eu-west-1")
    holding_id, refreshing_id, judging_id = EXCHANGE_ID, PARENT_EXCHANGE_ID, "3"
    async with ManagerClient(settings) as client:
        holding, refreshing, judging = writers(
            clock, fleet, (holding_id, 16), (refreshing_id, 12), (judging_id, 8)
        )
        for index in range(12):
            refreshing.mark_written(f"r{index}")
        for writer in (holding, refreshing, judging):
            writer.attach(client)
        tasks = [asyncio.create_task(w.run()) for w in (holding, refreshing, judging)]
        try:
            await client.list_modules(holding_id)  # the token, fetched once before the clock starts
            for index in range(16):  # the slots come free one at a time, 50 ms apart
                manager_emulator.delay_next(
                    1, 0.4 + index * 0.05, "POST", f"/messaging/exchanges/{holding_id}/"
                )
            for index in range(16):
                holding.apply(transition(f"h{index}", None, WorkerState.ACTIVE))
            await asyncio.sleep(0.1)  # every write slot held
            clock.advance(301)
            for index in range(12):
                heard(fleet, refreshing, Heartbeat(f"r{index}", "builder", "active", []))
            await asyncio.sleep(0.05)  # the refreshes wait for a slot
            for index in range(8):
                judging.apply(transition(f"j{index}", WorkerState.ACTIVE, WorkerState.INACTIVE))
            for writer in (holding, judging, refreshing):
                await settled(writer)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    order = [
        r.body["hostname"][0]
        for r in manager_emulator.requests_to("POST", "/messaging/exchanges/")
        if r.path.split("/")[3] in (refreshing_id, judging_id)
    ]
    assert order == ["j"] * 8 + ["r"] * 12
