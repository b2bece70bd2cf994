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
from overseer_operator.consumer import ACK_FLUSH_DELAY, HeartbeatConsumer
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
        await exactly_one_consumer(rabbitmq_api, topology.queue)


async def exactly_one_consumer(api: RabbitMQManagement, queue: str) -> None:
    """The broker lists one consumer on ``queue``, and still one a few checks later (its
    statistics lag by up to a second, so the first reading is awaited, not asserted)."""

    def consumers() -> int:
        return int(api.queue(queue).get("consumers") or 0)

    async with asyncio.timeout(30):
        while await asyncio.to_thread(consumers) != 1:  # noqa: ASYNC110 - polled over HTTP
            await asyncio.sleep(0.2)
    await asyncio.sleep(3)  # several verification rounds of the consumer under test
    assert await asyncio.to_thread(consumers) == 1


async def test_a_deleted_queue_is_reported_and_consumed_once_when_it_returns(
    amqp_url: str, amqp_topology: Callable[..., AmqpTopology], rabbitmq_api: RabbitMQManagement
) -> None:
    """The broker cancels the consumer of a deleted queue: the consumer must say so (the caller
    holds verdicts on it) and come back, once, when the queue is provisioned again."""
    topology = amqp_topology()
    recorder = Recorder()
    consumer = recorder.consumer(
        [amqp_url], topology.queue, retry_interval=0.2, verify_interval=0.5
    )
    async with consuming(consumer):
        await recorder.reached(BrokerState.CONSUMING)
        await asyncio.to_thread(rabbitmq_api.delete_queue, topology.queue)
        await recorder.reached(BrokerState.QUEUE_NOT_FOUND)
        await asyncio.to_thread(rabbitmq_api.declare_queue, topology.queue)
        await asyncio.to_thread(
            rabbitmq_api.bind, topology.exchange, topology.queue, topology.routing_key
        )
        await recorder.reached(BrokerState.CONSUMING)
        await publish(amqp_url, topology, b"after the queue returned")
        await until(lambda: b"after the queue returned" in recorder.bodies)
        await exactly_one_consumer(rabbitmq_api, topology.queue)


async def test_the_start_up_backlog_is_reported_before_the_first_delivery(
    amqp_url: str, amqp_topology: Callable[..., AmqpTopology]
) -> None:
    topology = amqp_topology()
    for index in range(25):
        await publish(amqp_url, topology, f"queued {index}".encode())
    readings: list[tuple[int, int]] = []  # (messages reported, bodies delivered so far)
    recorder = Recorder()
    consumer = HeartbeatConsumer(
        [amqp_url],
        topology.queue,
        10,
        recorder.handle,
        recorder.on_state,
        lambda reading: (
            readings.append((reading.messages, len(recorder.bodies))) if reading.started else None
        ),
    )
    async with consuming(consumer):
        await until(lambda: len(recorder.bodies) == 25)
    assert readings == [(25, 0)]


async def test_a_halted_consumer_leaves_every_unacked_heartbeat_for_the_next_owner(
    amqp_url: str, amqp_topology: Callable[..., AmqpTopology]
) -> None:
    """A replica that loses an exchange halts its consumer from inside a delivery's handling
    (the renew deadline passed): the heartbeats it handled but had not acked yet, and those
    delivered after, are read again by the next consumer, so none is lost to a replica that
    can no longer write what it read."""
    topology = amqp_topology()
    for index in range(6):
        await publish(amqp_url, topology, f"beat {index}".encode())
    first = Recorder()
    consumer = HeartbeatConsumer([amqp_url], topology.queue, 40, first.handle, first.on_state)

    def handle(body: bytes) -> None:
        first.handle(body)
        if len(first.bodies) == 3:
            consumer.halt()

    consumer._handle = handle  # the halt comes from inside the delivery, as in the operator
    async with consuming(consumer):
        await until(lambda: len(first.bodies) == 3)
        await asyncio.sleep(2 * ACK_FLUSH_DELAY)  # nothing may be acked meanwhile
    assert first.bodies == [f"beat {index}".encode() for index in range(3)]
    successor = Recorder()
    async with consuming(successor.consumer([amqp_url], topology.queue)):
        await until(lambda: len(successor.bodies) == 6)
    assert sorted(successor.bodies) == [f"beat {index}".encode() for index in range(6)]


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


async def test_the_consuming_channel_asks_for_no_publisher_confirms(
    testbed: Testbed,
    amqp_topology: Callable[..., AmqpTopology],
    rabbitmq_api: RabbitMQManagement,
) -> None:
    """Confirm.Select was one of a connect's round trips, for a channel nothing is published on:
    a restart's 100 connects each wait their round trips behind the drain of the queues already
    consumed."""
    topology = amqp_topology()
    recorder = Recorder()
    async with consuming(recorder.consumer([testbed.amqp_url], topology.queue)):
        await recorder.reached(BrokerState.CONSUMING)
        async with asyncio.timeout(30):
            while not (  # noqa: ASYNC110 - the management API is polled
                consumers := (await asyncio.to_thread(rabbitmq_api.queue, topology.queue)).get(
                    "consumer_details"
                )
            ):
                await asyncio.sleep(0.2)
            name = consumers[0]["channel_details"]["name"]
            # Statistics that count the consumer were taken after everything the connect sent.
            while (  # noqa: ASYNC110 - the management API is polled
                channel := await asyncio.to_thread(rabbitmq_api.channel, name)
            ).get("consumer_count") != 1:
                await asyncio.sleep(0.2)
    assert channel["confirm"] is False
    assert consumers[0]["prefetch_count"] == 10


async def test_own_heartbeats_share_one_channel_that_outlives_a_failed_publish(
    testbed: Testbed,
    amqp_topology: Callable[..., AmqpTopology],
    rabbitmq_api: RabbitMQManagement,
) -> None:
    """A channel per publish cost three round trips more each, and its objects lived long enough
    to be frozen garbage (see ``collector``). A publish the broker refuses closes the channel:
    the next one opens another, which the publishes after it share."""
    topology = amqp_topology()
    recorder = Recorder()
    consumer = recorder.consumer([testbed.amqp_url], topology.queue, connection_name="own-beats")

    def publishing_channels() -> list[dict[str, Any]]:
        return [
            channel
            for channel in rabbitmq_api.channels()
            if channel["name"].startswith(connection_name) and channel.get("confirm")
        ]

    async with consuming(consumer):
        await recorder.reached(BrokerState.CONSUMING)
        with pytest.raises(aio_pika.exceptions.ChannelNotFoundEntity):
            await consumer.publish("no-such-exchange", topology.routing_key, b"refused")
        for index in range(3):
            await consumer.publish(topology.exchange, topology.routing_key, b"beat %d" % index)
        await until(lambda: len(recorder.bodies) == 3)
        async with asyncio.timeout(30):
            while not (  # noqa: ASYNC110 - the management API is polled
                connections := [
                    listed
                    for listed in await asyncio.to_thread(rabbitmq_api.connections)
                    if (listed.get("client_properties") or {}).get("connection_name") == "own-beats"
                ]
            ):
                await asyncio.sleep(0.2)
            connection_name = connections[0]["name"]
            # Statistics are emitted every few seconds: until they count the three publishes.
            while [  # noqa: ASYNC110 - the management API is polled
                (channel.get("message_stats") or {}).get("publish")
                for channel in await asyncio.to_thread(publishing_channels)
            ] != [3]:
                await asyncio.sleep(0.2)
    assert recorder.bodies == [b"beat 0", b"beat 1", b"beat 2"]
