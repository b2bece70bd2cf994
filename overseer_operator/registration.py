"""The operator as a module of the exchange it monitors, as the legacy overseer_api made it.

It registers under ``spec.moduleType`` with its pod name as hostname, then publishes its own status
heartbeat every 30 s to ``root_exchange_name`` with routing key ``<routing_key>.system_modules``,
so it is watched like any other worker and the publishing path is proven end to end. The routing
key carries the *logical* queue name, as overseer_api's publisher does; the queue consumed is the
physical one (often ``aws:us-east-1.system_modules``), bound to that key by the estate.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from overseer_operator.heartbeat import encode_etf
from overseer_operator.manager_client import ExchangeRecord
from overseer_operator.model import Heartbeat

logger = logging.getLogger(__name__)

HEARTBEAT_INTERVAL = 30.0
SYSTEM_MODULES = "system_modules"  # the logical queue name in publishers' routing keys

Publisher = Callable[[str, str, bytes], Awaitable[None]]


def own_heartbeat(identity: str, module_type: str) -> Heartbeat:
    return Heartbeat(hostname=identity, module_type=module_type, status="active", workload=[])


def routing_for(exchange: ExchangeRecord) -> tuple[str, str]:
    """The AMQP exchange and routing key of ``exchange``'s status heartbeats."""
    routing_key = (
        f"{exchange.routing_key}.{SYSTEM_MODULES}" if exchange.routing_key else SYSTEM_MODULES
    )
    return exchange.root_exchange_name, routing_key


def heartbeat_interval(inactive_after: float) -> float:
    """The legacy 30 s, or shorter where a short threshold would otherwise flag the operator."""
    return min(HEARTBEAT_INTERVAL, inactive_after / 3)


async def publish_own_heartbeats(
    publish: Publisher,
    exchange: ExchangeRecord,
    heartbeat: Heartbeat,
    interval: Callable[[], float],
    unpublished: Callable[[], None],
) -> None:
    """Publish ``heartbeat`` every ``interval()`` seconds until cancelled; failures are retried,
    and each one calls ``unpublished`` (the operator vouches for itself: see ``vouch``)."""
    target, routing_key = routing_for(exchange)
    body = encode_etf(heartbeat)
    while True:
        try:
            await publish(target, routing_key, body)
        except Exception as error:
            if not _cancelling():  # a failure the cancellation caused is no failure to publish
                detail = (
                    error
                    if isinstance(error, ConnectionError | OSError | RuntimeError)
                    else repr(error)
                )
                logger.warning(
                    "Own heartbeat not published to %s/%s: %s", target, routing_key, detail
                )
                unpublished()
        if _cancelling():
            raise asyncio.CancelledError  # aiormq can turn a cancel into a connection error
        await asyncio.sleep(interval())


def _cancelling() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


async def vouch(register: Callable[[], None], interval: Callable[[], float]) -> None:
    """Call ``register`` every ``interval()`` seconds until cancelled: while the operator cannot
    publish its own heartbeat (the exchange's routing unread, the Manager down), it is running
    all the same, and its silence must not make it inactive, then offline, in its own fleet."""
    while True:
        await asyncio.sleep(interval())
        register()
