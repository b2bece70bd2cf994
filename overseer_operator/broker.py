"""Where the heartbeats are: the broker URLs for an exchange, and the TLS context to reach them.

With ``spec.amqp.urlSecretRef`` the URL is explicit. Otherwise it is resolved from the Manager as
the legacy messaging library did: one connection of the exchange's broker, picked at random, then
one of its failover broker if it has one (the legacy code looked the failover up but never used it).

The Manager's answer is shared (:class:`BrokerDirectory`): a restart, or the end of a broker
outage, starts every exchange at once, and most name the same broker. Each lookup was two or three
Manager reads, 10 at a time: 100 exchanges waited seconds for the same answer before connecting.
"""

from __future__ import annotations

import asyncio
import random
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass

from overseer_operator import defaults
from overseer_operator.manager_client import BrokerConnection, ManagerClient, ManagerSettings

# The connections of a broker, then those of its failover broker if it has one.
Candidates = tuple[tuple[BrokerConnection, ...], ...]
_Key = tuple[ManagerSettings, str]


class _Abandoned(Exception):
    """The caller reading for the others was cancelled: a waiter reads for itself."""


@dataclass
class _Lookup:
    answer: asyncio.Future[Candidates]
    expires_at: float = float("inf")  # while in flight


class BrokerDirectory:
    """The Manager's broker connections, read once for every exchange that asks at about the
    same time (one per operator).

    An answer is shared only between callers with the same Manager settings (URL, credentials,
    trust): no exchange is ever answered on another's credentials. It is reused for ``ttl``
    seconds, which the operator keeps under half its ``BROKER_RELOOKUP_INTERVAL``, so a broker
    rotated in the Manager is still picked up by the next relookup. A failure is shared by the
    callers waiting for that read, never kept: each retries on its own backoff, and the retries
    share a read again.
    """

    def __init__(
        self,
        *,
        ttl: float = defaults.BROKER_LOOKUP_TTL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ttl = ttl
        self._clock = clock
        self._lookups: dict[_Key, _Lookup] = {}

    @property
    def ttl(self) -> float:
        return self._ttl

    async def candidates(self, client: ManagerClient, broker_id: str) -> Candidates:
        key = (client.settings, broker_id)
        while True:
            lookup = self._lookups.get(key)
            if lookup is None or lookup.expires_at <= self._clock():
                return await self._read(key, client, broker_id)
            try:
                # Shielded: a waiter cancelled must not cancel the read the others wait for.
                return await asyncio.shield(lookup.answer)
            except _Abandoned:
                continue

    async def _read(self, key: _Key, client: ManagerClient, broker_id: str) -> Candidates:
        self._forget_expired()
        lookup = _Lookup(asyncio.get_running_loop().create_future())
        self._lookups[key] = lookup
        try:
            answer = await _read_candidates(client, broker_id)
        except BaseException as error:
            del self._lookups[key]
            shared = _Abandoned() if isinstance(error, asyncio.CancelledError) else error
            lookup.answer.set_exception(shared)
            lookup.answer.exception()  # retrieved: nobody may be waiting
            raise
        lookup.expires_at = self._clock() + self._ttl
        lookup.answer.set_result(answer)
        return answer

    def _forget_expired(self) -> None:
        now = self._clock()
        for key in [key for key, lookup in self._lookups.items() if lookup.expires_at <= now]:
            del self._lookups[key]


async def _read_candidates(client: ManagerClient, broker_id: str) -> Candidates:
    primary = await _connections(client, broker_id)
    broker = await client.get_broker(broker_id)
    if not broker.failover_broker_id:
        return (primary,)
    return (primary, await _connections(client, str(broker.failover_broker_id)))


async def _connections(client: ManagerClient, broker_id: str) -> tuple[BrokerConnection, ...]:
    connections = await client.list_broker_connections(broker_id)
    if not connections:
        raise LookupError(f"the Manager lists no connection for broker {broker_id}")
    return tuple(connections)


async def resolve_broker_urls(
    directory: BrokerDirectory, client: ManagerClient, broker_id: str
) -> list[str]:
    """The primary broker URL, then a failover URL if the broker has a failover broker; each
    caller picks its own connection at random, so exchanges spread over a broker's connections."""
    return [
        random.choice(connections).url()
        for connections in await directory.candidates(client, broker_id)
    ]


def amqp_ssl_context(ca_data: str | None) -> ssl.SSLContext | None:
    """A verifying context with the given CA bundle; None means aio-pika's defaults for amqps."""
    if ca_data is None:
        return None
    return ssl.create_default_context(cadata=ca_data)
