"""The heartbeat consumer: one robust AMQP connection per exchange, consuming one queue by name.

aio-pika's robust connection reconnects and restores channels and consumers, but has had bugs
where a reconnect came back with zero consumers, and it never recovers a consumer the broker
cancelled. So this module keeps strong references to the channel, queue and consumer, watches the
connection every second, and checks every ``verify_interval`` that the queue still has a consumer,
consuming again when it has none. The queue is never declared: the estate provisions it.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum

import aio_pika
import aiormq
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustChannel, AbstractRobustConnection

from overseer_operator.heartbeat import MessageRejected

logger = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 30
CONNECT_TIMEOUT = 10.0
RESTORE_GRACE = 3.0
# A primary broker lost this long gives way to the failover broker, if the exchange has one.
FAILOVER_AFTER = 60.0


class BrokerState(StrEnum):
    CONNECTING = "connecting"
    CONSUMING = "consuming"
    UNREACHABLE = "unreachable"
    QUEUE_NOT_FOUND = "queue-not-found"
    INVALID_URL = "invalid-url"


@dataclass(frozen=True, slots=True)
class BrokerStatus:
    state: BrokerState
    message: str


MessageHandler = Callable[[bytes], None]
StateCallback = Callable[[BrokerStatus], None]


def describe_url(url: str) -> str:
    """The URL without its credentials, for logs and conditions."""
    try:
        parsed = aio_pika.connection.make_url(url)
    except (ValueError, TypeError):
        return "<unparseable URL>"
    return str(parsed.with_user(None).with_password(None).with_query(None))


class HeartbeatConsumer:
    """Consumes ``queue`` from the first reachable URL of ``urls`` (a primary, then failovers)."""

    def __init__(
        self,
        urls: Sequence[str],
        queue: str,
        prefetch: int,
        handle: MessageHandler,
        on_state: StateCallback,
        *,
        ssl_context: ssl.SSLContext | None = None,
        connection_name: str = "overseer-operator",
        retry_interval: float = 5.0,
        verify_interval: float = 30.0,
    ) -> None:
        self._urls = list(urls)
        self._queue_name = queue
        self._prefetch = prefetch
        self._handle = handle
        self._on_state = on_state
        self._ssl_context = ssl_context
        self._connection_name = connection_name
        self._retry_interval = retry_interval
        self._verify_interval = verify_interval
        self._state: BrokerStatus | None = None
        # Strong references: aio-pika restores only what is still referenced.
        self.connection: AbstractRobustConnection | None = None
        self._channel: AbstractRobustChannel | None = None
        self._queue: aio_pika.abc.AbstractRobustQueue | None = None
        self._consumer_tag: str | None = None

    @property
    def consuming(self) -> bool:
        return self._state is not None and self._state.state is BrokerState.CONSUMING

    def _report(self, state: BrokerState, message: str) -> None:
        status = BrokerStatus(state, message)
        if status != self._state:
            self._state = status
            log = logger.info if state is BrokerState.CONSUMING else logger.warning
            log("Broker %s: %s", state.value, message)
            self._on_state(status)

    async def run(self) -> None:
        """Connect, consume and keep consuming until cancelled."""
        self._report(BrokerState.CONNECTING, f"connecting to consume queue {self._queue_name!r}")
        attempt = 0
        while True:
            url = self._urls[attempt % len(self._urls)]
            attempt += 1
            try:
                await self._connect(url)
                await self._consume()
            except aiormq.exceptions.ChannelNotFoundEntity:
                self._report(
                    BrokerState.QUEUE_NOT_FOUND,
                    f"queue {self._queue_name!r} does not exist on {describe_url(url)}; "
                    "it must be provisioned (the operator never declares it)",
                )
                await self._close()
                await asyncio.sleep(self._retry_interval)
                continue
            except ValueError as error:
                self._report(BrokerState.INVALID_URL, f"invalid broker URL: {error}")
                await self._close()
                await asyncio.sleep(self._retry_interval * 6)
                continue
            except (aiormq.exceptions.AMQPError, ConnectionError, OSError, TimeoutError) as error:
                self._report(
                    BrokerState.UNREACHABLE,
                    f"cannot consume from {describe_url(url)}: {type(error).__name__}: {error}",
                )
                await self._close()
                await asyncio.sleep(self._retry_interval)
                continue
            await self._supervise(url)

    async def _connect(self, url: str) -> None:
        self.connection = await asyncio.wait_for(
            aio_pika.connect_robust(
                url,
                ssl_context=self._ssl_context,
                heartbeat=HEARTBEAT_SECONDS,
                client_properties={"connection_name": self._connection_name},
            ),
            timeout=CONNECT_TIMEOUT,
        )
        self._channel = await self.connection.channel()
        await self._channel.set_qos(prefetch_count=self._prefetch)
        self._queue = await self._channel.get_queue(self._queue_name, ensure=True)

    async def _consume(self) -> None:
        assert self._queue is not None
        self._consumer_tag = await self._queue.consume(self._on_message)
        self._report(BrokerState.CONSUMING, f"consuming queue {self._queue_name!r}")

    async def _supervise(self, url: str) -> None:
        """Watch the connection; return (to reconnect from scratch) if it cannot be recovered."""
        loop = asyncio.get_running_loop()
        next_verify = loop.time() + self._verify_interval
        lost_since: float | None = None
        while True:
            await asyncio.sleep(1.0)
            assert self.connection is not None and self._channel is not None
            if self.connection.is_closed:
                await self._close()
                return
            if not self.connection.connected.is_set() or self._channel.is_closed:
                self._report(
                    BrokerState.UNREACHABLE, f"connection to {describe_url(url)} lost; reconnecting"
                )
                lost_since = lost_since or loop.time()
                if len(self._urls) > 1 and loop.time() - lost_since >= FAILOVER_AFTER:
                    await self._close()  # run() moves on to the failover broker
                    return
                # Once it is back, give aio-pika's own restore a moment, then check its work.
                next_verify = loop.time() + RESTORE_GRACE
                continue
            lost_since = None
            if loop.time() >= next_verify:
                next_verify = loop.time() + self._verify_interval
                try:
                    await self._verify_consumer()
                except aiormq.exceptions.ChannelNotFoundEntity:
                    await self._close()
                    raise
                except (aiormq.exceptions.AMQPError, ConnectionError, OSError) as error:
                    logger.debug("Consumer check failed, will retry: %s", error)

    async def _verify_consumer(self) -> None:
        assert self._channel is not None and self._queue is not None
        declared = await self._channel.declare_queue(self._queue_name, passive=True)
        if declared.declaration_result.consumer_count == 0:
            logger.warning(
                "Queue %r has no consumer after a reconnect; consuming again", self._queue_name
            )
            self._queue = declared
            await self._consume()
        else:
            self._report(BrokerState.CONSUMING, f"consuming queue {self._queue_name!r}")

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        try:
            self._handle(message.body)
        except MessageRejected:
            await message.reject(requeue=False)
        except Exception:
            logger.exception("Heartbeat handling failed (redelivered=%s)", message.redelivered)
            await message.reject(requeue=not message.redelivered)
        else:
            await message.ack()

    async def publish(self, exchange: str, routing_key: str, body: bytes) -> None:
        """Publish a persistent message on the consumer's connection (its own heartbeat)."""
        if self.connection is None or self.connection.is_closed:
            raise ConnectionError("not connected to the broker")
        async with self.connection.channel(publisher_confirms=True) as channel:
            target = await channel.get_exchange(exchange, ensure=False)
            await target.publish(
                aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                routing_key=routing_key,
            )

    async def _close(self) -> None:
        connection, self.connection = self.connection, None
        self._channel = self._queue = self._consumer_tag = None
        if connection is not None:
            try:
                await asyncio.wait_for(connection.close(), timeout=5.0)
            except (TimeoutError, aiormq.exceptions.AMQPError, ConnectionError, OSError) as error:
                logger.debug("Broker connection closed uncleanly: %s", error)

    async def aclose(self) -> None:
        await self._close()
