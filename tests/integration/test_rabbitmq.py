"""Publish and consume through the test bed's real RabbitMQ, as the operator will: the topology is
pre-provisioned and only looked up (never declared), the consumer acknowledges by hand."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable
from typing import Any

import aio_pika
import aio_pika.abc
import pytest

from tests.fixtures.testbed import AmqpTopology, RabbitMQManagement

pytestmark = pytest.mark.testbed


async def eventually_in_api(read: Callable[[], Any], wanted: Callable[[Any], bool]) -> Any:
    """Polls the management API (blocking httpx, so off the event loop) for up to 10 s until
    ``wanted`` holds; RabbitMQ refreshes its statistics every 0.5 s in the test bed."""
    value = None
    for _ in range(50):
        value = await asyncio.to_thread(read)
        if wanted(value):
            return value
        await asyncio.sleep(0.2)
    raise AssertionError(f"the management API still shows {value!r}")


async def test_topic_exchange_delivers_to_a_bound_queue_with_manual_ack(
    amqp_url: str,
    amqp_topology: Callable[..., AmqpTopology],
    rabbitmq_api: RabbitMQManagement,
) -> None:
    topology = amqp_topology()
    connection_name = f"test-{secrets.token_hex(4)}"
    connection = await aio_pika.connect_robust(
        amqp_url, client_properties={"connection_name": connection_name}
    )
    async with connection:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=10)
        exchange = await channel.get_exchange(topology.exchange)  # passive: must exist already
        queue = await channel.get_queue(topology.queue)
        deliveries: asyncio.Queue[aio_pika.abc.AbstractIncomingMessage] = asyncio.Queue()
        consumer_tag = await queue.consume(deliveries.put)

        details = await eventually_in_api(
            lambda: rabbitmq_api.queue(topology.queue), lambda queue: queue["consumers"] == 1
        )
        (consumer,) = details["consumer_details"]
        assert consumer["consumer_tag"] == consumer_tag
        assert consumer["ack_required"] is True
        assert consumer["prefetch_count"] == 10
        connections = await asyncio.to_thread(rabbitmq_api.connections)
        names = [item["client_properties"].get("connection_name") for item in connections]
        assert connection_name in names

        body = b'{"event_type": "status", "hostname": "worker-1"}'
        message = aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
        await exchange.publish(message, routing_key=topology.routing_key)
        received = await asyncio.wait_for(deliveries.get(), timeout=10)
        assert received.body == body
        assert received.routing_key == topology.routing_key

        # Unacknowledged, the message is still the broker's; acknowledged, it is gone.
        await eventually_in_api(
            lambda: rabbitmq_api.queue(topology.queue),
            lambda queue: queue.get("messages_unacknowledged") == 1,
        )
        await received.ack()
        await eventually_in_api(
            lambda: rabbitmq_api.queue(topology.queue),
            lambda queue: queue.get("messages") == 0 and queue.get("messages_unacknowledged") == 0,
        )


async def test_a_key_the_binding_does_not_match_reaches_no_queue(
    amqp_url: str, amqp_topology: Callable[..., AmqpTopology]
) -> None:
    topology = amqp_topology()
    async with await aio_pika.connect(amqp_url) as connection:
        channel = await connection.channel(on_return_raises=True)
        exchange = await channel.get_exchange(topology.exchange)
        unmatched = topology.routing_key.replace("system_modules", "other_queue")

        with pytest.raises(aio_pika.exceptions.DeliveryError):
            await exchange.publish(aio_pika.Message(b"{}"), routing_key=unmatched, mandatory=True)
        await exchange.publish(aio_pika.Message(b"{}"), routing_key=topology.routing_key)

        queue = await channel.get_queue(topology.queue)
        matched = await queue.get(timeout=5)
        assert matched.routing_key == topology.routing_key
        await matched.ack()
        assert await queue.get(fail=False) is None
