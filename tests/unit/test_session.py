"""A session against the Manager emulator (real HTTP) and a broker that cannot be reached: what
it reports to its owner, and in which order. No broker is needed: the consumer's failures are
part of what is reported."""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from overseer_operator import defaults
from overseer_operator import session as session_module
from overseer_operator.backoff import Backoff
from overseer_operator.broker import BrokerDirectory
from overseer_operator.config import Connections, ExchangeSpec
from overseer_operator.consumer import QueueReading
from overseer_operator.manager_client import ManagerClient, ManagerSettings, ModuleRecord
from overseer_operator.model import (
    MANAGER_SYNCED,
    BrokerState,
    BrokerStatus,
    Heartbeat,
    Reason,
    Thresholds,
    Verdict,
)
from overseer_operator.session import Session
from tests.fixtures.manager import BROKER_ID, EXCHANGE_ID
from tests.metering import sample

# Nothing listens here: the consumer's connection is refused at once.
DEAD_BROKER = "amqp://guest:guest@127.0.0.1:9/"


class RecordingOwner:
    """The ``SessionOwner`` protocol, recording every report in order."""

    def __init__(self) -> None:
        self.reports: list[tuple[str, Any]] = []
        self.on_rows: Callable[[list[ModuleRecord]], None] = lambda rows: None
        self.on_register: Callable[[Heartbeat], None] = lambda heartbeat: None

    def handle_message(self, body: bytes) -> None:
        self.reports.append(("message", body))

    def on_broker_status(self, status: BrokerStatus) -> None:
        self.reports.append(("broker", status))

    def on_queue_reading(self, reading: QueueReading) -> None:
        self.reports.append(("queue", reading))

    def on_manager_read(self, verdict: Verdict) -> None:
        self.reports.append(("manager", verdict))

    def on_manager_rows(self, rows: list[ModuleRecord]) -> None:
        self.reports.append(("rows", [row.hostname for row in rows]))
        self.on_rows(rows)

    def on_manager_rows_unavailable(self) -> None:
        self.reports.append(("rows-unavailable", None))

    def register(self, heartbeat: Heartbeat) -> None:
        self.reports.append(("register", heartbeat.hostname))
        self.on_register(heartbeat)

    def kinds(self) -> list[str]:
        return [kind for kind, _ in self.reports]

    def of(self, kind: str) -> list[Any]:
        return [value for seen, value in self.reports if seen == kind]

    async def until(self, predicate: Callable[[], bool]) -> None:
        async with asyncio.timeout(10):
            while not predicate():  # noqa: ASYNC110 - the owner has no event to wait on
                await asyncio.sleep(0.01)


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """The session's Manager retries, and its supervisor's restarts, without the real pauses."""
    monkeypatch.setattr(session_module, "Backoff", lambda base, *a, **k: Backoff(0.01, 0.02))


@pytest.fixture
async def client(manager_settings: ManagerSettings) -> AsyncIterator[ManagerClient]:
    settings = ManagerSettings(**{**manager_settings.__dict__, "max_attempts": 1})
    async with ManagerClient(settings) as client:
        yield client


@contextlib.asynccontextmanager
async def running(
    owner: RecordingOwner,
    client: ManagerClient,
    *,
    amqp_url: str | None = DEAD_BROKER,
    list_modules_first: bool = True,
    name: str = "sess",
    thresholds: Thresholds | None = None,
) -> AsyncIterator[Session]:
    spec = ExchangeSpec(
        exchange_id=EXCHANGE_ID, broker_id=BROKER_ID, thresholds=thresholds or Thresholds()
    )
    connections = Connections(manager=client.settings, amqp_url=amqp_url)
    session = Session(
        owner,
        spec,
        connections,
        client,
        identity="overseer-test-0",
        labels=("ns", name),
        broker_directory=BrokerDirectory(),
    )
    session.start(list_modules_first=list_modules_first)
    try:
        yield session
    finally:
        await session.close()


async def test_consuming_does_not_wait_for_the_modules_listing(client, manager_emulator):
    """100 exchanges listing 1,000 rows each took seconds before the last queue was consumed:
    the listing is read while consuming begins (the owner holds registrations until then)."""
    manager_emulator.put_module(EXCHANGE_ID, "w1", "builder", "active")
    manager_emulator.delay_next(1, 1.0, "GET", f"/messaging/exchanges/{EXCHANGE_ID}/modules")
    owner = RecordingOwner()
    async with running(owner, client):
        await owner.until(lambda: "rows" in owner.kinds() and "register" in owner.kinds())
    kinds = owner.kinds()
    assert owner.of("rows")[0] == ["w1"]
    assert kinds.index("broker") < kinds.index("rows")
    assert owner.of("broker")[0].state is BrokerState.CONNECTING
    assert owner.of("register") == ["overseer-test-0"]
    assert "rows-unavailable" not in kinds


async def test_the_broker_lookup_does_not_queue_behind_the_listings(client, manager_emulator):
    """Looking the broker up in the Manager took a start-up slot, as the listings of the
    fleets do: a restart of 100 exchanges under traffic consumed about 4 queues a second, each
    lookup behind 1,000-row listings. Every listing slot taken: the queue is still consumed."""
    listing_slots = session_module.startup_slots()
    for _ in range(defaults.STARTUP_CONCURRENCY):
        await listing_slots.acquire()  # as if 10 other exchanges' listings were in flight
    try:
        owner = RecordingOwner()
        async with running(owner, client, amqp_url=None):
            await owner.until(lambda: "register" in owner.kinds())  # its consumer was made
            assert "rows" not in owner.kinds()  # its own listing still waits for a slot
        requests = [(r.method, r.path) for r in manager_emulator.requests]
        assert ("GET", f"/messaging/brokers/{BROKER_ID}/connections") in requests
    finally:
        for _ in range(defaults.STARTUP_CONCURRENCY):
            listing_slots.release()


async def test_the_own_heartbeat_waits_for_the_consumer_s_connection(
    client, manager_emulator, caplog: pytest.LogCaptureFixture
):
    """A start consumes before its Manager reads are done, and the own heartbeat was published
    as soon as the exchange's routing was known: every exchange of a restart warned that it was
    not connected, and published only an interval later. It waits for the connection now."""
    owner = RecordingOwner()
    path = f"/messaging/exchanges/{EXCHANGE_ID}"
    async with running(owner, client):  # a broker that refuses every connection
        await owner.until(lambda: any(r.path == path for r in manager_emulator.requests))
        await owner.until(lambda: len(owner.of("broker")) >= 2)  # a connection was refused
        await asyncio.sleep(0.2)
    assert "Own heartbeat not published" not in caplog.text


async def test_a_listing_is_not_kept_while_the_session_waits_for_the_next(client, manager_emulator):
    """The reconciliation held its last listing (about 640 bytes a row) while it slept until
    the next one, five minutes later: at 10 x 1,000 workers, 6 MiB of the operator's RSS."""
    manager_emulator.put_module(EXCHANGE_ID, "w1", "builder", "active")
    owner = RecordingOwner()
    seen: list[weakref.ref[ModuleRecord]] = []
    owner.on_rows = lambda rows: seen.extend(weakref.ref(row) for row in rows)
    async with running(owner, client, list_modules_first=False):
        await owner.until(lambda: bool(seen))
        await asyncio.sleep(0.05)  # the reconciliation sleeps until the next listing now
        assert [ref() for ref in seen] == [None]


async def test_without_a_broker_url_the_broker_is_looked_up_in_the_manager(
    client, manager_emulator
):
    owner = RecordingOwner()
    async with running(owner, client, amqp_url=None):
        await owner.until(lambda: len(owner.of("broker")) >= 2 and "rows" in owner.kinds())
    assert owner.of("broker")[0] == BrokerStatus(
        BrokerState.CONNECTING, "looking up the broker in the Manager"
    )
    requests = [(r.method, r.path) for r in manager_emulator.requests]
    assert ("GET", f"/messaging/exchanges/{EXCHANGE_ID}/modules") in requests
    assert ("GET", f"/messaging/brokers/{BROKER_ID}/connections") in requests


async def test_a_manager_that_is_down_is_retried_and_each_outcome_reported(
    client, manager_emulator
):
    manager_emulator.set_unavailable(True)
    owner = RecordingOwner()
    async with running(owner, client):
        await owner.until(lambda: len(owner.of("manager")) >= 3)
        failures = owner.of("manager")
        assert all(v.status is False for v in failures)
        assert {v.reason for v in failures} == {Reason.MANAGER_UNREACHABLE}
        # the reconciliation's listing and the exchange's routing are both retried
        await owner.until(
            lambda: any(
                v.message.startswith("cannot list the exchange's modules")
                for v in owner.of("manager")
            )
        )
        assert "broker" in owner.kinds()  # consuming did not wait for the Manager
        assert owner.of("rows-unavailable") == [None]  # once: the owner registers what it held
        manager_emulator.set_unavailable(False)
        await owner.until(lambda: owner.of("rows"))
        await owner.until(lambda: owner.of("manager")[-1].status is True)
    assert owner.of("manager")[-1] == MANAGER_SYNCED


async def test_refused_credentials_are_reported_as_unauthorized(client, manager_emulator):
    manager_emulator.set_client_secret("overseer-tests", "rotated")
    owner = RecordingOwner()
    async with running(owner, client):
        await owner.until(lambda: owner.of("manager"))
    assert owner.of("manager")[0].reason is Reason.MANAGER_UNAUTHORIZED


async def test_a_crash_of_the_session_task_reports_the_broker_not_consuming(
    client, manager_emulator
):
    labels = {"namespace": "ns", "name": "crashy", "task": "session"}
    crashes = sample("overseer_task_crashes_total", **labels)
    owner = RecordingOwner()

    def broken(heartbeat: Heartbeat) -> None:
        raise RuntimeError("the owner had a bug")

    owner.on_register = broken
    async with running(owner, client, name="crashy"):
        await owner.until(lambda: sample("overseer_task_crashes_total", **labels) > crashes)
        await owner.until(lambda: "session failed: RuntimeError" in owner_messages(owner))
    failed = [s for s in owner.of("broker") if s.message == "session failed: RuntimeError"]
    assert failed[0].state is BrokerState.UNREACHABLE


def owner_messages(owner: RecordingOwner) -> list[str]:
    return [status.message for status in owner.of("broker")]


async def test_the_consumers_failures_reach_the_owner(client, manager_emulator):
    owner = RecordingOwner()
    async with running(owner, client):
        await owner.until(
            lambda: any(s.state is BrokerState.UNREACHABLE for s in owner.of("broker"))
        )
    unreachable = [s for s in owner.of("broker") if s.state is BrokerState.UNREACHABLE]
    assert "guest:guest" not in unreachable[0].message  # never the credentials


async def test_deregister_removes_the_operators_own_row(client, manager_emulator):
    manager_emulator.put_module(EXCHANGE_ID, "overseer-test-0", "overseer", "active")
    owner = RecordingOwner()
    async with running(owner, client) as session:
        await owner.until(lambda: owner.of("rows"))
        await session.deregister()
    assert [m["hostname"] for m in manager_emulator.modules(EXCHANGE_ID)] == []


async def test_the_operator_vouches_for_itself_while_its_heartbeat_cannot_be_published(
    client, manager_emulator
):
    """A reconfiguration while the Manager was down: the new session consumed (its broker URL
    known) but could not read the exchange's routing, so the operator's own heartbeat went
    unpublished and it turned inactive, then offline, in its own fleet. A running process
    registers itself every heartbeat interval until it can publish again."""
    owner = RecordingOwner()
    manager_emulator.set_unavailable(True)
    async with running(
        owner,
        client,
        list_modules_first=False,
        name="vouch",
        thresholds=Thresholds(1.5, 3.0, 60.0),  # a heartbeat every 0.5 s
    ) as session:
        await owner.until(lambda: len(owner.of("register")) >= 4)
        session.stop_own_heartbeat()  # handed over on purpose: it stops vouching too
        vouched = len(owner.of("register"))
        await asyncio.sleep(1.2)
        assert len(owner.of("register")) == vouched
