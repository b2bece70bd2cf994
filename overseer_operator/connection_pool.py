"""Broker connections shared by consumers: one AMQP connection per name, URL and CA bundle, and a
channel of its own for each consumer on it.

One connection per exchange cost a reader, a heartbeat timer and buffers each: at 100 exchanges on
one broker the bare aio-pika client spent a fifth more of its core per message on 100 connections
than on one connection with a channel per queue (``benchmarks/README.md``). Failures stay as
isolated as before where it matters: a missing queue, a consumer the broker cancels or a channel
error closes that consumer's channel only. A lost connection ends every channel on it; each
consumer reconnects on its own backoff, and those that come back share the next connection.

Consumers share a connection only when they give the same connection name, URL (credentials
included) and CA bundle; the operator names its connections by namespace, so no tenant's
exchanges ride on a connection opened with another namespace's Secret, even one with the same
credentials. A connection carries at most ``CHANNELS_PER_CONNECTION`` consumers (the broker's
own ``channel_max`` is 2,047; fewer also bound what one lost socket interrupts); the next consumer
opens a further connection under the same name. The last consumer to let go closes it.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from dataclasses import dataclass, field

import aio_pika
import aiormq
from aio_pika.abc import AbstractConnection

from overseer_operator import collector, defaults
from overseer_operator.broker import amqp_ssl_context

logger = logging.getLogger(__name__)

AMQP_HEARTBEAT_SECONDS = 30
CHANNELS_PER_CONNECTION = 100

_Key = tuple[str, str, str | None]  # connection name, URL, CA bundle


@dataclass(eq=False)
class _Shared:
    """One connection (being opened, or open) and how many consumers hold it."""

    opening: asyncio.Task[AbstractConnection]
    users: int = 0

    def usable(self) -> bool:
        if not self.opening.done():
            return True
        if self.opening.cancelled() or self.opening.exception() is not None:
            return False
        return not self.opening.result().is_closed


@dataclass(eq=False)
class Lease:
    """A consumer's hold on a shared connection; ``release`` (once) lets it go."""

    connection: AbstractConnection
    _pool: ConnectionPool
    _key: _Key
    _shared: _Shared
    _released: bool = field(default=False)

    async def release(self) -> None:
        if not self._released:
            self._released = True
            await self._pool._release(self._key, self._shared)


class ConnectionPool:
    """The shared connections of one event loop (``connection_pool()``), or a test's own."""

    def __init__(self, channels_per_connection: int = CHANNELS_PER_CONNECTION) -> None:
        self._channels_per_connection = channels_per_connection
        self._shared: dict[_Key, list[_Shared]] = {}

    def connections(self) -> int:
        """Connections open or being opened."""
        return sum(len(shared) for shared in self._shared.values())

    async def acquire(self, url: str, ca_data: str | None, name: str) -> Lease:
        """A connection to ``url`` named ``name``: one already open, or a new one. Raises what
        opening it raised (to every consumer waiting for it)."""
        key = (name, url, ca_data)
        shared = self._pick(key)
        if shared is None:
            opening = asyncio.ensure_future(_open(url, ca_data, name))
            opening.add_done_callback(_retrieve_failure)
            shared = _Shared(opening)
            self._shared.setdefault(key, []).append(shared)
        shared.users += 1
        try:
            connection = await asyncio.shield(shared.opening)
        except BaseException:
            await self._release(key, shared)
            raise
        return Lease(connection, self, key, shared)

    def _pick(self, key: _Key) -> _Shared | None:
        for shared in self._shared.get(key, ()):
            if shared.usable() and shared.users < self._channels_per_connection:
                return shared
        return None

    async def _release(self, key: _Key, shared: _Shared) -> None:
        shared.users -= 1
        if shared.users > 0:
            return
        siblings = self._shared.get(key, [])
        if shared in siblings:
            siblings.remove(shared)
        if not siblings:
            self._shared.pop(key, None)
        if not shared.opening.done():
            shared.opening.cancel()  # nobody waits for it any more
            return
        if shared.opening.cancelled() or shared.opening.exception() is not None:
            return
        collector.request_thaw()  # the connection's objects may be frozen garbage now
        try:
            await asyncio.wait_for(shared.opening.result().close(), defaults.SHUTDOWN_TIMEOUT)
        except (TimeoutError, aiormq.exceptions.AMQPError, ConnectionError, OSError) as error:
            logger.debug("Broker connection closed uncleanly: %s", error)


async def _open(url: str, ca_data: str | None, name: str) -> AbstractConnection:
    return await aio_pika.connect(
        url,
        ssl_context=amqp_ssl_context(ca_data),
        heartbeat=AMQP_HEARTBEAT_SECONDS,
        client_properties={"connection_name": name},
        timeout=defaults.BROKER_CONNECT_TIMEOUT,
    )


def _retrieve_failure(opening: asyncio.Task[AbstractConnection]) -> None:
    """Every waiter sees a failed opening's error; this keeps asyncio from also logging it as
    never retrieved when the last waiter was cancelled first."""
    if not opening.cancelled():
        opening.exception()


_pools: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, ConnectionPool] = (
    weakref.WeakKeyDictionary()
)


def connection_pool() -> ConnectionPool:
    """The operator-wide pool (one per event loop)."""
    loop = asyncio.get_running_loop()
    pool = _pools.get(loop)
    if pool is None:
        pool = _pools[loop] = ConnectionPool()
    return pool
