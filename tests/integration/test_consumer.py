"""The heartbeat consumer against the real broker: failover, a missing queue, a lost connection,
TLS verified with a CA bundle."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import aio_pika
import pytest

from overseer_operator.broker import amqp_ssl_context
from overseer_operator.consumer import HeartbeatConsumer
from overseer_operator.model import BrokerState, BrokerStatus
from tests.fixtures.testbed import AmqpTopology, RabbitMQManagement, Testbed

pytestmark = pytest.mark.testbed

CLOSED_PORT_URL = "amqp://guest:guest@127.0.0.1:1/"


class Recorder:
    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.states: list[BrokerStatus] = []

    def handle(self, body: bytes) -> None:
        self.bodies.append(body)

    def on_state(self, status: BrokerStatus) -> None:
        self.states.append(status)

    def consumer(self, urls: list[str], queue: str, **options: Any) -> HeartbeatConsumer:
        """A consumer (prefetch 10) that reports to this recorder."""
        return HeartbeatConsumer(urls, queue, 10, self.handle, self.on_state, **options)

    async def reached(self, state: BrokerState) -> None:
        await until(lambda: bool(self.states) and self.states[-1].state is state)


@contextlib.asynccontextmanager
async def consuming(consumer: HeartbeatConsumer) -> AsyncIterator[None]:
    task = asyncio.create_task(consumer.run())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await consumer.aclose()


async def publish(amqp_url: str, topology: AmqpTopology, body: bytes) -> None:
    async with await aio_pika.connect(amqp_url) as connection:
        channel = await connection.channel()
        exchange = await channel.get_exchange(topology.exchange, ensure=False)
        await exchange.publish(aio_pika.Message(body), topology.routing_key)


async def until(predicate: Callable[[], bool]) -> None:
    """Poll: the consumer reports through plain callbacks, there is no event to wait on."""
    async with asyncio.timeout(30):
        while not predicate():  # noqa: ASYNC110
            await asyncio.sleep(0.05)


async def test_an_unreachable_primary_gives_way_to_the_failover_broker(
    amqp_url: str, amqp_topology: Callable[..., AmqpTopology]
) -> None:
    topology = amqp_topology()
    recorder = Recorder()
    consumer = recorder.consumer([CLOSED_PORT_URL, amqp_url], topology.queue, retry_interval=0.2)
    async with consuming(consumer):
        await recorder.reached(BrokerState.CONSUMING)
        await publish(amqp_url, topology, b"via the failover")
        await until(lambda: recorder.bodies == [b"via the failover"])
    assert recorder.states[1].state is BrokerState.UNREACHABLE
    assert "guest" not in recorder.states[1].message  # credentials stay out of conditions


async def test_a_missing_queue_is_reported_and_consumed_once_provisioned(
    amqp_url: str, amqp_topology: Callable[..., AmqpTopology], rabbitmq_api: RabbitMQManagement
) -> None:
    topology = amqp_topology()
    rabbitmq_api.delete_queue(topology.queue)
    recorder = Recorder()
    consumer = recorder.consumer([amqp_url], topology.queue, retry_interval=0.2)
    async with consuming(consumer):
        await recorder.reached(BrokerState.QUEUE_NOT_FOUND)
        rabbitmq_api.declare_queue(topology.queue)  # never declared by the operator itself
        rabbitmq_api.bind(topology.exchange, topology.queue, topology.routing_key)
        await recorder.reached(BrokerState.CONSUMING)
        await publish(amqp_url, topology, b"after provisioning")
        await until(lambda: recorder.bodies == [b"after provisioning"])


async def test_the_consumer_is_back_after_the_broker_drops_the_connection(
    amqp_url: str, amqp_topology: Callable[..., AmqpTopology], rabbitmq_api: RabbitMQManagement
) -> None:
    topology = amqp_topology()
    recorder = Recorder()
    consumer = recorder.consumer([amqp_url], topology.queue, connection_name="consumer-under-test")
    async with consuming(consumer):
        await recorder.reached(BrokerState.CONSUMING)
        await until_connection_listed(rabbitmq_api, "consumer-under-test")
        rabbitmq_api.close_connection("consumer-under-test")
        await recorder.reached(BrokerState.UNREACHABLE)
        await recorder.reached(BrokerState.CONSUMING)
        await publish(amqp_url, topology, b"after the reconnect")
        await until(lambda: b"after the reconnect" in recorder.bodies)
        # The management API's count is sampled (every 0.5 s on the test bed), and a delivery can
        # arrive before the next sample: wait for the count, then check it stays at one.
        async with asyncio.timeout(10):
            while (await asyncio.to_thread(rabbitmq_api.queue, topology.queue))["consumers"] != 1:  # noqa: ASYNC110 - the management API is polled
                await asyncio.sleep(0.2)
        await asyncio.sleep(1.5)  # three more samples
        queue = await asyncio.to_thread(rabbitmq_api.queue, topology.queue)
        assert queue["consumers"] == 1  # restored once, not twice


async def until_connection_listed(api: RabbitMQManagement, name: str) -> None:
    async with asyncio.timeout(30):
        while not any(  # noqa: ASYNC110 - the management API is polled
            (c.get("client_properties") or {}).get("connection_name") == name
            for c in await asyncio.to_thread(api.connections)
        ):
            await asyncio.sleep(0.2)


async def test_amqps_is_verified_with_the_ca_bundle(
    testbed: Testbed, amqp_topology: Callable[..., AmqpTopology]
) -> None:
    topology = amqp_topology()
    recorder = Recorder()
    consumer = recorder.consumer(
        [testbed.amqps_url],
        topology.queue,
        ssl_context=amqp_ssl_context(testbed.ca_file.read_text()),
    )
    async with consuming(consumer):
        await recorder.reached(BrokerState.CONSUMING)
        await publish(testbed.amqp_url, topology, b"over TLS")
        await until(lambda: recorder.bodies == [b"over TLS"])


async def test_amqps_without_the_ca_bundle_is_refused(
    testbed: Testbed, amqp_topology: Callable[..., AmqpTopology]
) -> None:
    topology = amqp_topology()
    recorder = Recorder()
    consumer = recorder.consumer([testbed.amqps_url], topology.queue, retry_interval=0.2)
    async with consuming(consumer):
        await recorder.reached(BrokerState.UNREACHABLE)
    assert "CERTIFICATE_VERIFY_FAILED" in recorder.states[-1].message
