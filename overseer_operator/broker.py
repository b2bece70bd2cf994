"""Where the heartbeats are: the broker URLs for an exchange, and the TLS context to reach them.

With ``spec.amqp.urlSecretRef`` the URL is explicit. Otherwise it is resolved from the Manager as
the legacy messaging library did: one connection of the exchange's broker, picked at random, then
one of its failover broker if it has one (the legacy code looked the failover up but never used it).
"""

from __future__ import annotations

import random
import ssl

from overseer_operator.manager_client import ManagerClient


async def resolve_broker_urls(client: ManagerClient, broker_id: str) -> list[str]:
    """The primary broker URL, then a failover URL if the broker has a failover broker."""
    urls = [await _pick_url(client, broker_id)]
    broker = await client.get_broker(broker_id)
    if broker.failover_broker_id:
        urls.append(await _pick_url(client, str(broker.failover_broker_id)))
    return urls


async def _pick_url(client: ManagerClient, broker_id: str) -> str:
    connections = await client.list_broker_connections(broker_id)
    if not connections:
        raise LookupError(f"the Manager lists no connection for broker {broker_id}")
    return random.choice(connections).url()


def amqp_ssl_context(ca_data: str | None) -> ssl.SSLContext | None:
    """A verifying context with the given CA bundle; None means aio-pika's defaults for amqps."""
    if ca_data is None:
        return None
    return ssl.create_default_context(cadata=ca_data)
