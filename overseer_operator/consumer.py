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

Cost per delivery (the profile is in ``benchmarks/README.md``): deliveries are taken from the
channel's protocol layer (aiormq, which aio-pika is built on) as they arrive, without building
aio-pika's ``IncomingMessage`` for each, and handled synchronously; acks are batched
(``AckBatcher``): one ``basic.ack`` with ``multiple`` for up to a quarter of the prefetch window,
or after ``ACK_FLUSH_DELAY`` at the latest, instead of one frame, one task and one ``send`` per
message. A lost connection redelivers what was not acked yet; a heartbeat read twice is harmless.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import cast

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractConnection
from aiormq.abc import AbstractChannel as ProtocolChannel
from aiormq.abc import DeliveredMessage
from pamqp.commands import Basic

from overseer_operator import collector, defaults
from overseer_operator.aiotools import wait_event
from overseer_operator.backoff import Backoff
from overseer_operator.heartbeat import MessageRejected
from overseer_operator.model import BrokerState, BrokerStatus

logger = logging.getLogger(__name__)

AMQP_HEARTBEAT_SECONDS = 30
# Longest an ack waits for its batch to fill: far below any threshold, and it bounds what a lost
# connection redelivers. A queue of 1,000 workers at 30 s gets 33 deliveries a second: at 50 ms
# that was an ack frame (and a task) for every one or two of them, 2,000 a second over 100 queues.
ACK_FLUSH_DELAY = 1.0


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
        connect_slots: asyncio.Semaphore | None = None,
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
        self._connect_slots = connect_slots or contextlib.nullcontext()
        self._state: BrokerStatus | None = None
        self.connection: AbstractConnection | None = None
        self._channel: AbstractChannel | None = None
        self._publishing: AbstractChannel | None = None  # opened by the first publish
        self._acks: AckBatcher | None = None
        self._halted = False
        self._consuming = asyncio.Event()

    async def wait_consuming(self) -> None:
        """Until the queue is consumed on a connection (at once if it is now)."""
        await self._consuming.wait()

    def halt(self) -> None:
        """Handle and settle no delivery from now on, at once (synchronously): this replica lost
        the exchange. What was handled but not acked yet, and whatever is delivered until the
        connection closes, goes back to the queue for the next owner to read, so no heartbeat
        is consumed without being written by someone."""
        self._halted = True
        acks, self._acks = self._acks, None
        if acks is not None:
            acks.discard()

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
                async with self._connect_slots:  # many exchanges reconnect after an outage
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
        # Nothing is published on this channel (own heartbeats have their own): no Confirm.Select,
        # one round trip less for each of a restart's connects, which wait behind the drain.
        self._channel = await self.connection.channel(publisher_confirms=False)
        await self._channel.set_qos(prefetch_count=self._prefetch)

    async def _consume(self) -> None:
        assert self._channel is not None
        queue = await self._channel.declare_queue(self._queue_name, passive=True)
        waiting = queue.declaration_result.message_count or 0
        # Before the first delivery can arrive: the backlog is counted from here.
        self._on_queue(QueueReading(waiting, 0, started=True))
        underlay = await self._channel.get_underlay_channel()
        if not self._halted:
            self._acks = AckBatcher(underlay, max(1, self._prefetch // 4))
        # A plain callable: aiormq wraps it with ``awaitable()``, so no task is made per message.
        await underlay.basic_consume(self._queue_name, self._on_message)  # type: ignore[arg-type]
        self._consuming.set()
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
            await wait_event(lost, self._verify_interval)
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

    def _on_message(self, message: DeliveredMessage) -> None:
        """One delivery, handled synchronously (nothing here awaits)."""
        acks = self._acks
        if acks is None or message.channel is not acks.channel:
            return  # a delivery from a channel already replaced: the broker redelivers it
        delivery = cast(Basic.Deliver, message.delivery)  # a consumer is only given Deliver
        tag = cast(int, delivery.delivery_tag)
        try:
            self._handle(message.body)
        except MessageRejected:
            acks.reject(tag, requeue=False)
        except Exception:
            redelivered = delivery.redelivered
            logger.exception("Heartbeat handling failed (redelivered=%s)", redelivered)
            acks.reject(tag, requeue=not redelivered)
        else:
            acks.ack(tag)

    async def publish(self, exchange: str, routing_key: str, body: bytes) -> None:
        """Publish a persistent message on the consumer's connection (its own heartbeat), on a
        channel of its own that stays open. A channel per publish was three round trips more,
        and its objects, alive across a timed collection, were frozen garbage by the next one
        (see ``collector``); the broker closes it on a failed publish (no such exchange), and
        the next publish opens another."""
        connection = self.connection
        if connection is None or connection.is_closed:
            raise ConnectionError("not connected to the broker")
        if self._publishing is None or self._publishing.is_closed:
            self._publishing = await connection.channel(publisher_confirms=True)
        target = await self._publishing.get_exchange(exchange, ensure=False)
        await target.publish(
            aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
            routing_key=routing_key,
        )

    async def _close(self) -> None:
        self._consuming.clear()
        connection, self.connection, self._channel = self.connection, None, None
        self._publishing = None  # closed with its connection
        acks, self._acks = self._acks, None
        if acks is not None:
            await acks.aclose()  # what was handled is acked before the connection goes
        if connection is not None:
            collector.request_thaw()  # the connection's objects may be frozen garbage now
            try:
                await asyncio.wait_for(connection.close(), timeout=defaults.SHUTDOWN_TIMEOUT)
            except (TimeoutError, aiormq.exceptions.AMQPError, ConnectionError, OSError) as error:
                logger.debug("Broker connection closed uncleanly: %s", error)

    async def aclose(self) -> None:
        await self._close()


class AckBatcher:
    """Settles the deliveries of one channel in batches, in delivery order.

    ``ack`` only remembers the highest handled delivery tag; one ``basic.ack`` with ``multiple``
    then settles everything up to it, once ``batch`` acks are pending or ``ACK_FLUSH_DELAY`` after
    the first of them. A reject is sent at once, after flushing the acks before it: a multiple ack
    never covers a tag that is rejected later (the broker would close the channel for it).
    Frames are written in the order they are issued (one task each, started in order).
    """

    def __init__(
        self, channel: ProtocolChannel, batch: int, delay: float = ACK_FLUSH_DELAY
    ) -> None:
        self.channel = channel
        self._batch = batch
        self._delay = delay
        self._acked_up_to = 0  # highest tag handled and not yet acked; 0: none pending
        self._pending = 0
        self._timer: asyncio.TimerHandle | None = None
        self._sending: set[asyncio.Task[None]] = set()
        self._discarded = False

    def ack(self, tag: int) -> None:
        if self._discarded:
            return
        self._acked_up_to = tag
        self._pending += 1
        if self._pending >= self._batch:
            self.flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._delay, self.flush)

    def reject(self, tag: int, *, requeue: bool) -> None:
        if self._discarded:
            return
        self.flush()
        self._send(self.channel.basic_reject(tag, requeue=requeue))

    def discard(self) -> None:
        """Forget the acks not sent yet, and settle nothing from now on: the broker redelivers
        those messages once the channel closes."""
        self._discarded = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._acked_up_to, self._pending = 0, 0

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._pending:
            tag, self._acked_up_to, self._pending = self._acked_up_to, 0, 0
            self._send(self.channel.basic_ack(tag, multiple=True))

    def _send(self, outcome: Awaitable[object]) -> None:
        task = asyncio.ensure_future(_settle(outcome))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def aclose(self) -> None:
        """Send what is pending and wait for every frame issued (the channel may be gone)."""
        self.flush()
        if self._sending:
            await asyncio.wait(self._sending, timeout=defaults.SHUTDOWN_TIMEOUT)


async def _settle(outcome: Awaitable[object]) -> None:
    """Ack or reject; on a channel already gone the broker redelivers, so that is not an error."""
    try:
        await outcome
    except (aiormq.exceptions.AMQPError, ConnectionError, RuntimeError) as error:
        logger.debug("Delivery not settled (the channel is gone): %s", error)
