"""Consumers sharing broker connections, against the real broker: a channel each on one
connection per name, failures of one channel kept to it, a lost connection recovered by all."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from overseer_operator.connection_pool import ConnectionPool
from overseer_operator.model import BrokerState
from tests.fixtures.testbed import AmqpTopology, RabbitMQManagement
from tests.integration.test_consumer import (
    Recorder,
    consuming,
    exactly_one_consumer,
    publish,
    until,
)

pytestmark = pytest.mark.testbed


def connections_named(api: RabbitMQManagement, name: str) -> list[dict[str, Any]]:
    return [
        connection
        for connection in api.connections()
        if (connection.get("client_properties") or {}).get("connection_name") == name
    ]


async def until_listed(
    api: RabbitMQManagement, name: str, predicate: Callable[[list[dict[str, Any]]], bool]
) -> list[dict[str, Any]]:
    """The broker's list of connections named ``name``, once ``predicate`` holds for it (its
    statistics lag by up to a second)."""
    async with asyncio.timeout(30):
        while not predicate(  # noqa: ASYNC110 - polled over HTTP
            listed := await asyncio.to_thread(connections_named, api, name)
        ):
            await asyncio.sleep(0.2)
    return listed


@contextlib.asynccontextmanager
async def all_consuming(*pairs: tuple[Recorder, Any]) -> AsyncIterator[None]:
    async with contextlib.AsyncExitStack() as stack:
        for recorder, consumer in pairs:
            await stack.enter_async_context(consuming(consumer))
            await recorder.reached(BrokerState.CONSUMING)
        yield


async def test_consumers_of_one_name_share_a_connection_with_a_channel_each(
    amqp_url: str, amqp_topology: Callable[..., AmqpTopology], rabbitmq_api: RabbitMQManagement
) -> None:
    name, pool = f"shared-{secrets.token_hex(4)}", ConnectionPool()
    first, second = amqp_topology(), amqp_topology()
    one, two = Recorder(), Recorder()
    async with all_consuming(
        (one, one.consumer([amqp_url], first.queue, connection_name=name, pool=pool)),
        (two, two.consumer([amqp_url], second.queue, connection_name=name, pool=pool)),
    ):
        listed = await until_listed(
            rabbitmq_api, name, lambda found: len(found) == 1 and found[0].get("channels") == 2
        )
        assert len(listed) == 1
        await publish(amqp_url, first, b"to the first")
        await publish(amqp_url, second, b"to the second")
        await until(lambda: one.bodies == [b"to the first"] and two.bodies == [b"to the second"])
        assert pool.connections() == 1
    await until_listed(rabbitmq_api, name, lambda found: not found)  # the last one closed it
    assert pool.connections() == 0


async def test_a_missing_queue_closes_its_own_channel_and_nothing_else(
    amqp_url: str, amqp_topology: Callable[..., AmqpTopology], rabbitmq_api: RabbitMQManagement
) -> None:
    name, pool = f"shared-{secrets.token_hex(4)}", ConnectionPool()
    present = amqp_topology()
    healthy, failing = Recorder(), Recorder()
    missing = f"missing-{secrets.token_hex(4)}"
    async with all_consuming(
        (healthy, healthy.consumer([amqp_url], present.queue, connection_name=name, pool=pool))
    ):
        failing_consumer = failing.consumer(
            [amqp_url], missing, connection_name=name, pool=pool, retry_interval=0.2
        )
        async with consuming(failing_consumer):
            await failing.reached(BrokerState.QUEUE_NOT_FOUND)
            await asyncio.sleep(2)  # several attempts on the shared connection (0.2 s apart)
            await publish(amqp_url, present, b"still here")
            await until(lambda: healthy.bodies == [b"still here"])
        assert [status.state for status in healthy.states] == [
            BrokerState.CONNECTING,
            BrokerState.CONSUMING,
        ]
        assert len(await until_listed(rabbitmq_api, name, bool)) == 1
        await exactly_one_consumer(rabbitmq_api, present.queue)


async def test_a_dropped_connection_brings_every_consumer_back_on_one_connection(
    amqp_url: str, amqp_topology: Callable[..., AmqpTopology], rabbitmq_api: RabbitMQManagement
) -> None:
    name, pool = f"shared-{secrets.token_hex(4)}", ConnectionPool()
    topologies = [amqp_topology() for _ in range(3)]
    recorders = [Recorder() for _ in topologies]
    consumers = [
        recorder.consumer(
            [amqp_url], topology.queue, connection_name=name, pool=pool, retry_interval=0.2
        )
        for recorder, topology in zip(recorders, topologies, strict=True)
    ]
    async with all_consuming(*zip(recorders, consumers, strict=True)):
        await until_listed(rabbitmq_api, name, bool)
        await asyncio.to_thread(rabbitmq_api.close_connection, name)
        for recorder in recorders:
            await recorder.reached(BrokerState.UNREACHABLE)
        for recorder in recorders:
            await recorder.reached(BrokerState.CONSUMING)
        for index, topology in enumerate(topologies):
            await publish(amqp_url, topology, f"after {index}".encode())
        await until(
            lambda: all(
                f"after {index}".encode() in recorder.bodies
                for index, recorder in enumerate(recorders)
            )
        )
        for topology in topologies:
            await exactly_one_consumer(rabbitmq_api, topology.queue)
        listed = await until_listed(
            rabbitmq_api, name, lambda found: len(found) == 1 and found[0].get("channels") == 3
        )
        assert len(listed) == 1
        assert pool.connections() == 1


async def test_other_names_and_full_connections_get_connections_of_their_own(
    amqp_url: str, amqp_topology: Callable[..., AmqpTopology], rabbitmq_api: RabbitMQManagement
) -> None:
    """A name is a namespace in the operator: no tenant rides on another's connection; and a
    connection carries at most ``channels_per_connection`` consumers."""
    tenant_a, tenant_b = f"tenant-a-{secrets.token_hex(4)}", f"tenant-b-{secrets.token_hex(4)}"
    pool = ConnectionPool(channels_per_connection=2)
    pairs = []
    for name in (tenant_a, tenant_a, tenant_a, tenant_b):
        recorder = Recorder()
        topology = amqp_topology()
        pairs.append(
            (
                recorder,
                recorder.consumer([amqp_url], topology.queue, connection_name=name, pool=pool),
            )
        )
    async with all_consuming(*pairs):
        assert len(await until_listed(rabbitmq_api, tenant_a, lambda found: len(found) == 2)) == 2
        assert len(await until_listed(rabbitmq_api, tenant_b, bool)) == 1
        assert pool.connections() == 3
    await until_listed(rabbitmq_api, tenant_a, lambda found: not found)
    await until_listed(rabbitmq_api, tenant_b, lambda found: not found)
