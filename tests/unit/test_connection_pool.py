"""The pool's bookkeeping, without a broker: one opening shared by everyone who asks at once,
its failure seen by all of them and not remembered, the connection closed by the last to leave."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from overseer_operator import connection_pool
from overseer_operator.connection_pool import ConnectionPool


class FakeConnection:
    def __init__(self) -> None:
        self.is_closed = False
        self.closes = 0

    async def close(self) -> None:
        self.closes += 1
        self.is_closed = True


class Broker:
    """Stands in for ``aio_pika.connect``: counts the connections opened, fails on request."""

    def __init__(self) -> None:
        self.opened: list[FakeConnection] = []
        self.failure: Exception | None = None
        self.gate = asyncio.Event()
        self.gate.set()

    async def connect(self, url: str, **options: Any) -> FakeConnection:
        await self.gate.wait()
        if self.failure is not None:
            raise self.failure
        self.opened.append(FakeConnection())
        return self.opened[-1]


@pytest.fixture
def broker(monkeypatch: pytest.MonkeyPatch) -> Broker:
    fake = Broker()
    monkeypatch.setattr(connection_pool.aio_pika, "connect", fake.connect)
    return fake


async def test_who_asks_at_once_shares_one_opening_and_the_last_to_leave_closes_it(
    broker: Broker,
) -> None:
    pool = ConnectionPool()
    broker.gate.clear()
    asking = [asyncio.create_task(pool.acquire("amqp://b/", None, "ns")) for _ in range(10)]
    await asyncio.sleep(0)
    broker.gate.set()
    leases = await asyncio.gather(*asking)
    assert len(broker.opened) == 1
    assert {id(lease.connection) for lease in leases} == {id(broker.opened[0])}
    for lease in leases[:-1]:
        await lease.release()
        await lease.release()  # a second release of the same lease counts once
    assert broker.opened[0].closes == 0
    await leases[-1].release()
    assert broker.opened[0].closes == 1
    assert pool.connections() == 0


async def test_a_failed_opening_reaches_every_waiter_and_the_next_ask_opens_again(
    broker: Broker,
) -> None:
    pool = ConnectionPool()
    broker.failure = ConnectionRefusedError("refused")
    broker.gate.clear()
    asking = [asyncio.create_task(pool.acquire("amqp://b/", None, "ns")) for _ in range(3)]
    await asyncio.sleep(0)
    broker.gate.set()
    outcomes = await asyncio.gather(*asking, return_exceptions=True)
    assert all(isinstance(outcome, ConnectionRefusedError) for outcome in outcomes)
    assert pool.connections() == 0
    broker.failure = None
    lease = await pool.acquire("amqp://b/", None, "ns")
    assert lease.connection is broker.opened[0]


async def test_a_lost_connection_is_not_handed_out_again(broker: Broker) -> None:
    pool = ConnectionPool()
    holding = await pool.acquire("amqp://b/", None, "ns")
    holding.connection.is_closed = True  # type: ignore[misc] - the broker dropped it
    fresh = await pool.acquire("amqp://b/", None, "ns")
    assert fresh.connection is not holding.connection
    await holding.release()
    assert pool.connections() == 1


async def test_an_opening_nobody_waits_for_any_more_is_cancelled(broker: Broker) -> None:
    pool = ConnectionPool()
    broker.gate.clear()
    asking = asyncio.create_task(pool.acquire("amqp://b/", None, "ns"))
    await asyncio.sleep(0)
    asking.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asking
    broker.gate.set()
    await asyncio.sleep(0)
    assert broker.opened == []
    assert pool.connections() == 0
