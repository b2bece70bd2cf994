"""The heartbeat consumer: one AMQP connection per exchange, consuming one queue by name, once.

The connection is a plain one, not aio-pika's robust connection: a robust reconnect restores
consumers behind the caller's back (it has come back with none, and together with a re-consume
it has left several on one queue), and it never recovers a consumer the broker cancelled. Here a
lost connection, a closed channel or a cancelled consumer all end the same way: the connection is
closed and opened afresh, and the queue is consumed exactly once on it. So there is never more
than one consumer per queue per monitor, whatever the reconnects.

Every ``verify_interval`` the queue is declared passively on the consuming channel: the broker
itself says that the queue exists, that it has a consumer and how many messages wait. Those
readings go to ``on_queue``; what they mean for verdicts (caught
up, falling behind) is decided by the caller. The queue is never declared: the estate provisions
it. Nothing raised here ends ``run``: every failure is reported and retried with backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage

from overseer_operator import defaults
from overseer_operator.backoff import Backoff
from overseer_operator.heartbeat import MessageRejected
from overseer_operator.model import BrokerState, BrokerStatus

logger = logging.getLogger(__name__)

AMQP_HEARTBEAT_SECONDS = 30


@dataclass(frozen=True, slots=True)
class QueueReading:
    """What the broker said of the queue.

    ``started`` marks the reading taken just before consuming began: its ``messages`` are the
    backlog that was waiting when the monitor (re)started.
    """

    messages: int
    consumers: int
    started: bool = False


MessageHandler = Callable[[bytes], None]
StateCallback = Callable[[BrokerStatus], None]
QueueCallback = Callable[[QueueReading], None]


class ConsumerLost(Exception):
    """The broker no longer lists a consumer on the queue: it was cancelled."""


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
        on_queue: QueueCallback = lambda reading: None,
        *,
        ssl_context: ssl.SSLContext | None = None,
        connection_name: str = "overseer-operator",
        retry_interval: float = defaults.BROKER_RETRY_INTERVAL,
        verify_interval: float = defaults.BROKER_VERIFY_INTERVAL,
    ) -> None:
        if not urls:
            raise ValueError("a consumer needs at least one broker URL")
        self._urls = list(urls)
        self._queue_name = queue
        self._prefetch = prefetch
        self._handle = handle
        self._on_state = on_state
        self._on_queue = on_queue
        self._ssl_context = ssl_context
        self._connection_name = connection_name
        self._retry_interval = retry_interval
        self._verify_interval = verify_interval
        self._state: BrokerStatus | None = None
        self.connection: AbstractConnection | None = None
        self._channel: AbstractChannel | None = None

    def _report(self, state: BrokerState, message: str) -> None:
        status = BrokerStatus(state, message)
        if status != self._state:
            self._state = status
            log = logger.info if state is BrokerState.CONSUMING else logger.warning
            log("Broker %s: %s", state.value, message)
            self._on_state(status)

    async def run(self) -> None:
        """Connect, consume and keep consuming until cancelled; never returns otherwise."""
        self._report(BrokerState.CONNECTING, f"connecting to consume queue {self._queue_name!r}")
        backoff = Backoff(self._retry_interval)
        attempt = 0
        while True:
            url = self._urls[attempt % len(self._urls)]
            where = describe_url(url)
            try:
                await self._connect(url)
                await self._consume()
                backoff.reset()
                await self._supervise()
                self._report(BrokerState.UNREACHABLE, f"connection to {where} lost; reconnecting")
            except aiormq.exceptions.ChannelNotFoundEntity:
                self._report(
                    BrokerState.QUEUE_NOT_FOUND,
                    f"queue {self._queue_name!r} does not exist on {where}; "
                    "it must be provisioned (the operator never declares it)",
                )
            except ValueError as error:
                self._report(BrokerState.INVALID_URL, f"invalid broker URL: {error}")
            except ConsumerLost:
                self._report(
                    BrokerState.UNREACHABLE,
                    f"the broker cancelled the consumer of {self._queue_name!r}; consuming again",
                )
            except (aiormq.exceptions.AMQPError, ConnectionError, OSError, TimeoutError) as error:
                self._report(
                    BrokerState.UNREACHABLE,
                    f"cannot consume from {where}: {type(error).__name__}: {error}",
                )
                attempt += 1  # a failed connection moves on to the failover broker, if any
            except Exception as error:  # never let the consumer die with the clock still running
                logger.exception("Heartbeat consumer failed; reconnecting")
                self._report(
                    BrokerState.UNREACHABLE, f"consumer failed: {type(error).__name__}: {error}"
                )
            await self._close()
            if (task := asyncio.current_task()) is not None and task.cancelling():
                raise asyncio.CancelledError  # aiormq can turn a cancel into a connection error
            await backoff.wait()

    async def _connect(self, url: str) -> None:
        self.connection = await aio_pika.connect(
            url,
            ssl_context=self._ssl_context,
            heartbeat=AMQP_HEARTBEAT_SECONDS,
            client_properties={"connection_name": self._connection_name},
            timeout=defaults.BROKER_CONNECT_TIMEOUT,
        )
        self._channel = await self.connection.channel()
        await self._channel.set_qos(prefetch_count=self._prefetch)

    async def _consume(self) -> None:
        assert self._channel is not None
        queue = await self._channel.declare_queue(self._queue_name, passive=True)
        waiting = queue.declaration_result.message_count or 0
        # Before the first delivery can arrive: the backlog is counted from here.
        self._on_queue(QueueReading(waiting, 0, started=True))
        await queue.consume(self._on_message)
        self._report(BrokerState.CONSUMING, f"consuming queue {self._queue_name!r}")

    async def _supervise(self) -> None:
        """Return when the connection is lost; raise when the queue or the consumer is gone."""
        assert self.connection is not None and self._channel is not None
        lost = asyncio.Event()
        cancelled = False

        def on_cancel(frame: object) -> None:
            nonlocal cancelled
            cancelled = True
            lost.set()

        self.connection.close_callbacks.add(lambda *_: lost.set())
        self._channel.close_callbacks.add(lambda *_: lost.set())
        # The broker cancels a consumer whose queue is deleted: known at once, not at the next
        # verification, so that not a second of silence is read into the fleet.
        underlay = await self._channel.get_underlay_channel()
        underlay.on_consumer_cancel_callbacks.add(on_cancel)
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(lost.wait(), self._verify_interval)
            if cancelled:
                raise ConsumerLost(self._queue_name)
            if lost.is_set() or self.connection.is_closed or self._channel.is_closed:
                return
            await self._verify()

    async def _verify(self) -> None:
        assert self._channel is not None
        declared = await self._channel.declare_queue(self._queue_name, passive=True)
        result = declared.declaration_result
        consumers = result.consumer_count or 0
        if consumers == 0:
            raise ConsumerLost(self._queue_name)
        self._on_queue(QueueReading(result.message_count or 0, consumers))

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        try:
            self._handle(message.body)
        except MessageRejected:
            await _settle(message.reject(requeue=False))
        except Exception:
            logger.exception("Heartbeat handling failed (redelivered=%s)", message.redelivered)
            await _settle(message.reject(requeue=not message.redelivered))
        else:
            await _settle(message.ack())

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
        connection, self.connection, self._channel = self.connection, None, None
        if connection is not None:
            try:
                await asyncio.wait_for(connection.close(), timeout=defaults.SHUTDOWN_TIMEOUT)
            except (TimeoutError, aiormq.exceptions.AMQPError, ConnectionError, OSError) as error:
                logger.debug("Broker connection closed uncleanly: %s", error)

    async def aclose(self) -> None:
        await self._close()


async def _settle(outcome: Awaitable[object]) -> None:
    """Ack or reject; on a channel already gone the broker redelivers, so that is not an error."""
    try:
        await outcome
    except (aiormq.exceptions.AMQPError, ConnectionError, RuntimeError) as error:
        logger.debug("Delivery not settled (the channel is gone): %s", error)
