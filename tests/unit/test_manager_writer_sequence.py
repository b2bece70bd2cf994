"""The Manager writer while a call is in flight: a newer transition is never dropped when the
older call completes (sequence numbers), and the pending count stays exact."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from devtools.manager_emulator import ManagerEmulator
from overseer_operator.backoff import Backoff
from overseer_operator.manager_client import ManagerClient, ManagerSettings
from overseer_operator.manager_writer import ManagerWriter
from overseer_operator.model import Transition, Verdict, WorkerState
from tests.fakes import FakeClock
from tests.fixtures.manager import EXCHANGE_ID
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
async def writer(manager_settings: ManagerSettings) -> AsyncIterator[ManagerWriter]:
    settings = ManagerSettings(**{**manager_settings.__dict__, "max_attempts": 1})
    health: list[Verdict] = []
    async with ManagerClient(settings) as client:
        writer = ManagerWriter(
            EXCHANGE_ID,
            300.0,
            FakeClock(1000.0),
            health.append,
            ("ns", "seq"),
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
