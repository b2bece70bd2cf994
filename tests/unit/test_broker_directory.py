"""The broker lookup against the Manager emulator (real HTTP): one read for every exchange that
asks at about the same time, never shared across credentials, failures never kept."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Callable

import pytest

from devtools.manager_emulator import ManagerEmulator
from overseer_operator.broker import BrokerDirectory, resolve_broker_urls
from overseer_operator.manager_client import (
    ManagerClient,
    ManagerSettings,
    ManagerUnauthorized,
    ManagerUnavailable,
)
from tests.fixtures.manager import BROKER_ID

BROKER_PATHS = "/messaging/brokers/"
CONNECTIONS = f"/messaging/brokers/{BROKER_ID}/connections"


@pytest.fixture
def settings(manager_settings: ManagerSettings) -> ManagerSettings:
    return dataclasses.replace(manager_settings, max_attempts=1)


@pytest.fixture
async def clients(
    settings: ManagerSettings,
) -> AsyncIterator[Callable[[ManagerSettings], ManagerClient]]:
    """A client per call, as each exchange has its own; all closed at the end."""
    opened: list[ManagerClient] = []

    def new(of: ManagerSettings = settings) -> ManagerClient:
        opened.append(ManagerClient(of))
        return opened[-1]

    yield new
    for client in opened:
        await client.aclose()


def broker_reads(emulator: ManagerEmulator) -> int:
    return len(emulator.requests_to("GET", BROKER_PATHS))


async def test_exchanges_starting_together_read_their_broker_once(clients, manager_emulator):
    """A restart of 100 exchanges naming one broker made 200 reads, 10 at a time: the lookups
    were 6.6 s (median) of the time before a queue had its consumer again."""
    manager_emulator.delay_next(1, 0.2, "GET", CONNECTIONS)  # they all ask while it is read
    directory = BrokerDirectory()
    urls = await asyncio.gather(
        *(resolve_broker_urls(directory, clients(), BROKER_ID) for _ in range(20))
    )
    assert urls == [["amqp://guest:guest@127.0.0.1:5672/%2F"]] * 20
    assert broker_reads(manager_emulator) == 2  # the connections, then the broker's record


async def test_an_answer_is_never_shared_with_other_credentials(
    clients, settings, manager_emulator
):
    """A tenant whose Secret holds a wrong client secret is refused, even while the right
    credentials' answer is fresh; another client of the Manager reads for itself."""
    directory = BrokerDirectory()
    await resolve_broker_urls(directory, clients(), BROKER_ID)
    wrong = dataclasses.replace(settings, client_secret="not-the-secret")
    with pytest.raises(ManagerUnauthorized):
        await resolve_broker_urls(directory, clients(wrong), BROKER_ID)
    manager_emulator.set_client_secret("another-client", "its-secret")
    other = dataclasses.replace(settings, client_id="another-client", client_secret="its-secret")
    await resolve_broker_urls(directory, clients(other), BROKER_ID)
    assert broker_reads(manager_emulator) == 4


async def test_a_failure_is_shared_by_its_waiters_but_never_kept(clients, manager_emulator):
    """With the Manager down, the exchanges waiting for one read share its failure (100 would
    otherwise queue for a timeout apiece); the next attempt reads again."""
    directory = BrokerDirectory()
    manager_emulator.set_unavailable(True)
    failures = await asyncio.gather(
        *(resolve_broker_urls(directory, clients(), BROKER_ID) for _ in range(5)),
        return_exceptions=True,
    )
    assert all(isinstance(failure, ManagerUnavailable) for failure in failures)
    assert len(manager_emulator.token_requests()) == 1  # one attempt, for all five
    manager_emulator.set_unavailable(False)
    assert await resolve_broker_urls(directory, clients(), BROKER_ID)
    assert broker_reads(manager_emulator) == 2


async def test_an_answer_serves_for_its_ttl_only(clients, manager_emulator):
    """A broker rotated in the Manager reaches the next relookup (BROKER_RELOOKUP_INTERVAL)."""
    now = [100.0]
    directory = BrokerDirectory(ttl=10.0, clock=lambda: now[0])
    await resolve_broker_urls(directory, clients(), BROKER_ID)
    manager_emulator.remove_broker_connections(BROKER_ID)
    manager_emulator.add_broker_connection(BROKER_ID, "guest", "guest", "10.0.0.9", 5672, "/")
    now[0] = 109.9
    assert await resolve_broker_urls(directory, clients(), BROKER_ID) == [
        "amqp://guest:guest@127.0.0.1:5672/%2F"
    ]
    now[0] = 110.0
    assert await resolve_broker_urls(directory, clients(), BROKER_ID) == [
        "amqp://guest:guest@10.0.0.9:5672/%2F"
    ]
    assert broker_reads(manager_emulator) == 4


async def reader_and_waiter(
    clients: Callable[[], ManagerClient], emulator: ManagerEmulator
) -> tuple[asyncio.Task[list[str]], asyncio.Task[list[str]]]:
    """Two exchanges asking for one broker: the first reads (slowly), the second waits."""
    emulator.delay_next(1, 0.5, "GET", CONNECTIONS)
    directory = BrokerDirectory()
    reader = asyncio.create_task(resolve_broker_urls(directory, clients(), BROKER_ID))
    await asyncio.sleep(0.1)
    waiter = asyncio.create_task(resolve_broker_urls(directory, clients(), BROKER_ID))
    await asyncio.sleep(0.1)
    return reader, waiter


async def test_a_waiter_reads_for_itself_when_the_reader_is_cancelled(clients, manager_emulator):
    """The exchange reading for the others may be deleted mid-read: they neither fail nor see
    its cancellation."""
    reader, waiter = await reader_and_waiter(clients, manager_emulator)
    reader.cancel()
    assert await asyncio.wait_for(waiter, 5) == ["amqp://guest:guest@127.0.0.1:5672/%2F"]
    assert reader.cancelled()


async def test_a_waiter_cancelled_leaves_the_read_to_the_others(clients, manager_emulator):
    reader, waiter = await reader_and_waiter(clients, manager_emulator)
    waiter.cancel()
    assert await asyncio.wait_for(reader, 5) == ["amqp://guest:guest@127.0.0.1:5672/%2F"]
    assert broker_reads(manager_emulator) == 2


async def test_each_exchange_picks_its_own_connection_of_the_shared_answer(
    clients, manager_emulator
):
    """As the legacy library did, at random: exchanges spread over a broker's connections."""
    manager_emulator.add_broker_connection(BROKER_ID, "guest", "guest", "127.0.0.2", 5672, "/")
    directory = BrokerDirectory()
    client = clients()
    hosts = {
        (await resolve_broker_urls(directory, client, BROKER_ID))[0].split("@")[1]
        for _ in range(60)
    }
    assert hosts == {"127.0.0.1:5672/%2F", "127.0.0.2:5672/%2F"}
    assert broker_reads(manager_emulator) == 2


async def test_the_failover_broker_comes_second(clients, manager_emulator):
    manager_emulator.add_broker("7", "failover")
    manager_emulator.add_broker_connection("7", "fo", "pw", "10.0.0.7", 5671, "/")
    manager_emulator.add_broker("8", "primary", failover_broker_id="7")
    manager_emulator.add_broker_connection("8", "pr", "pw", "10.0.0.8", 5671, "/")
    assert await resolve_broker_urls(BrokerDirectory(), clients(), "8") == [
        "amqp://pr:pw@10.0.0.8:5671/%2F",
        "amqp://fo:pw@10.0.0.7:5671/%2F",
    ]


async def test_a_broker_without_connections_is_a_lookup_error(clients, manager_emulator):
    manager_emulator.remove_broker_connections(BROKER_ID)
    with pytest.raises(LookupError, match=f"no connection for broker {BROKER_ID}"):
        await resolve_broker_urls(BrokerDirectory(), clients(), BROKER_ID)
