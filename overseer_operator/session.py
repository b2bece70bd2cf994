"""A session: the connections of one configuration of a monitored exchange.

It owns the Manager client, the broker consumer and the operator's own heartbeat, and everything
it does on behalf of its ``ExchangeMonitor`` goes back through the monitor's methods (messages,
broker state, Manager health, restart seeding). A spec change that touches connections closes
the session and opens a new one; the monitor's fleet and Manager writer outlive it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from overseer_operator.broker import amqp_ssl_context, resolve_broker_urls
from overseer_operator.conditions import Reason
from overseer_operator.config import Connections, ExchangeSpec
from overseer_operator.consumer import HeartbeatConsumer, describe_url
from overseer_operator.manager_client import ManagerClient, ManagerError, ManagerUnauthorized
from overseer_operator.registration import (
    heartbeat_interval,
    own_heartbeat,
    publish_own_heartbeats,
)

if TYPE_CHECKING:
    from overseer_operator.monitor import ExchangeMonitor

logger = logging.getLogger(__name__)

SHUTDOWN_TIMEOUT = 5.0


class Session:
    """The connections of one configuration: Manager client, broker consumer, own heartbeat."""

    def __init__(
        self,
        monitor: ExchangeMonitor,
        spec: ExchangeSpec,
        connections: Connections,
        client: ManagerClient,
    ) -> None:
        self.monitor = monitor
        self.spec = spec
        self.connections = connections
        self._client = client
        self._tasks: list[asyncio.Task[None]] = []
        self._consumer: HeartbeatConsumer | None = None

    def start(self) -> None:
        self._spawn(self.monitor.writer.run(), "manager-writer")
        self._spawn(self._connect(), "session")

    def _spawn(self, coroutine: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(
            coroutine, name=f"{self.monitor.namespace}/{self.monitor.name}:{name}"
        )
        task.add_done_callback(self._crashed)
        self._tasks.append(task)

    def _crashed(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            logger.error("Task %s crashed", task.get_name(), exc_info=task.exception())

    async def _connect(self) -> None:
        monitor, spec = self.monitor, self.spec
        # Seed before consuming, so that workers the Manager already lists as active are not
        # written again on their first heartbeat; a Manager that is down must not hold up
        # consumption, so seeding then goes on in the background.
        if not monitor.seeded_from_manager and not await self._seed_once():
            self._spawn(self._seed_until_done(), "seed")
        if self.connections.amqp_url is not None:
            urls = [self.connections.amqp_url]
        else:
            urls = await self._from_manager(
                lambda: resolve_broker_urls(self._client, spec.broker_id),
                "resolve the broker connection",
            )
        self._consumer = HeartbeatConsumer(
            urls,
            spec.queue,
            spec.prefetch,
            monitor.handle_message,
            monitor.set_broker_status,
            ssl_context=amqp_ssl_context(self.connections.amqp_ca_data),
            connection_name=f"overseer-operator {monitor.namespace}/{monitor.name}",
        )
        logger.info(
            "%s/%s: consuming %r from %s",
            monitor.namespace,
            monitor.name,
            spec.queue,
            ", ".join(describe_url(url) for url in urls),
        )
        self._spawn(self._consumer.run(), "consumer")
        identity = own_heartbeat(monitor.environment.identity, spec.module_type)
        monitor.handle_registration(identity)
        exchange = await self._from_manager(
            lambda: self._client.get_exchange(spec.exchange_id), "look up the exchange's routing"
        )
        await publish_own_heartbeats(
            self._consumer.publish,
            exchange,
            spec.queue,
            identity,
            lambda: heartbeat_interval(self.spec.thresholds.inactive_after),
        )

    async def _seed_once(self) -> bool:
        try:
            modules = await self._client.list_modules(self.spec.exchange_id)
        except ManagerError:
            return False  # reported by _seed_until_done, which retries
        self.monitor.seed_from_manager(modules, self.spec)
        return True

    async def _seed_until_done(self) -> None:
        modules = await self._from_manager(
            lambda: self._client.list_modules(self.spec.exchange_id), "list the exchange's modules"
        )
        self.monitor.seed_from_manager(modules, self.spec)

    async def _from_manager(self, call: Callable[[], Coroutine[Any, Any, Any]], what: str) -> Any:
        """Retry a Manager read until it succeeds, reporting failures through ManagerSynced."""
        delay = 2.0
        while True:
            try:
                result = await call()
            except ManagerUnauthorized as error:
                self.monitor.set_manager_health(
                    False, Reason.MANAGER_UNAUTHORIZED, f"cannot {what}: {error}"
                )
            except (ManagerError, LookupError) as error:
                self.monitor.set_manager_health(
                    False, Reason.MANAGER_UNREACHABLE, f"cannot {what}: {error}"
                )
            else:
                if not self.monitor.writer.pending:
                    self.monitor.set_manager_health(True, Reason.SYNCED, "the Manager is reachable")
                return result
            await asyncio.sleep(delay)
            delay = min(delay * 2, 60.0)

    async def deregister(self) -> None:
        """The resource is gone: take the operator's own row out of the exchange (best effort)."""
        identity = self.monitor.environment.identity
        try:
            await asyncio.wait_for(
                self._client.delete_module(self.spec.exchange_id, identity), SHUTDOWN_TIMEOUT
            )
        except (ManagerError, TimeoutError) as error:
            logger.warning("Own module %s not removed from the Manager: %s", identity, error)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._consumer is not None:
            await self._consumer.aclose()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._client.aclose(), SHUTDOWN_TIMEOUT)
