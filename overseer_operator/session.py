"""A session: the connections of one configuration of a monitored exchange.

It owns the Manager client's reads, the broker consumer and the operator's own heartbeat, and it
reports everything it learns to a ``SessionOwner`` (the monitor) through plain callbacks; it does
not know the monitor. A spec change that touches connections closes the session and opens a new
one; the fleet and the Manager writer, which belong to the monitor, outlive it.
"""

from __future__ import annotations

import asyncio
import logging
import random
import weakref
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

from overseer_operator import collector, defaults
from overseer_operator.aiotools import LoopSemaphores, loop_semaphore
from overseer_operator.backoff import Backoff
from overseer_operator.broker import BrokerDirectory, amqp_ssl_context, resolve_broker_urls
from overseer_operator.config import Connections, ExchangeSpec
from overseer_operator.consumer import HeartbeatConsumer, QueueReading, describe_url
from overseer_operator.manager_client import (
    ManagerClient,
    ManagerError,
    ManagerUnauthorized,
    ModuleRecord,
)
from overseer_operator.model import (
    MANAGER_SYNCED,
    BrokerState,
    BrokerStatus,
    Heartbeat,
    Reason,
    Verdict,
)
from overseer_operator.registration import (
    heartbeat_interval,
    own_heartbeat,
    publish_own_heartbeats,
    vouch,
)
from overseer_operator.supervisor import Supervisor

logger = logging.getLogger(__name__)

# The Manager's module list is read again this often, or every half ``inactiveAfter`` if that is
# shorter (jittered by up to a fifth), so rows the fleet never heard of (a worker that died before
# its first heartbeat, a row someone else wrote) expire by the same rules as everything else, as
# the legacy sweeper made them.
MANAGER_RECONCILE_INTERVAL = 300.0

_startup_slots: LoopSemaphores = weakref.WeakKeyDictionary()
_broker_slots: LoopSemaphores = weakref.WeakKeyDictionary()
_broker_lookup_slots: LoopSemaphores = weakref.WeakKeyDictionary()


def startup_slots() -> asyncio.Semaphore:
    """The operator-wide bound on Manager reads in flight at start-up (one per event loop).

    Many exchanges start, or resume after an outage, together: each Manager read takes a slot for
    one attempt (never across a backoff wait), so the Manager does not see them all at once, and
    each is quick, so the last waits seconds.
    """
    return loop_semaphore(_startup_slots, defaults.STARTUP_CONCURRENCY)


def broker_slots() -> asyncio.Semaphore:
    """The bound on broker connection attempts in flight (one per event loop), apart from the
    Manager's: consuming never waits behind the Manager's reads (the listing of 100 exchanges'
    fleets takes seconds). Wider than theirs (``BROKER_CONNECT_CONCURRENCY``): a connect costs
    little work but 8 round trips, so connects queued for slots wait for nothing the loop lacks."""
    return loop_semaphore(_broker_slots, defaults.BROKER_CONNECT_CONCURRENCY)


def broker_lookup_slots() -> asyncio.Semaphore:
    """The same bound for the Manager reads of broker connections, apart from both: a lookup
    never waits behind the listings (with a slow Manager, a queue waited for other exchanges'
    listings), nor a connect behind other exchanges' lookups."""
    return loop_semaphore(_broker_lookup_slots, defaults.STARTUP_CONCURRENCY)


class SessionOwner(Protocol):
    """What a session reports to."""

    def handle_message(self, body: bytes) -> None: ...
    def on_broker_status(self, status: BrokerStatus) -> None: ...
    def on_queue_reading(self, reading: QueueReading) -> None: ...
    def on_manager_read(self, verdict: Verdict) -> None: ...
    def on_manager_rows(self, rows: list[ModuleRecord]) -> None: ...
    def on_manager_rows_unavailable(self) -> None: ...
    def register(self, heartbeat: Heartbeat) -> None: ...


class Session:
    """The connections of one configuration: Manager reads, broker consumer, own heartbeat."""

    def __init__(
        self,
        owner: SessionOwner,
        spec: ExchangeSpec,
        connections: Connections,
        client: ManagerClient,
        *,
        identity: str,
        labels: tuple[str, str],
        broker_directory: BrokerDirectory,
    ) -> None:
        self._owner = owner
        self.spec = spec
        self.connections = connections
        self.client = client
        self._identity = identity
        self._labels = labels
        self._broker_directory = broker_directory
        self._tasks = Supervisor(labels, self._crashed)
        self._consumer: HeartbeatConsumer | None = None
        self._reconciling = False
        self._publishing = False
        self._own_heartbeat_stopped = False
        self._own_heartbeat_sent_at: float | None = None  # loop time of the last one confirmed
        self._halted = False

    def start(self, *, list_modules_first: bool) -> None:
        """Connect in the background. With ``list_modules_first`` the Manager's list is read at
        once, while the queue is consumed (the owner holds registrations until then, so rows it
        already lists are not written again); a failed read is reported, then retried."""
        self._tasks.spawn("session", lambda: self._connect(list_modules_first))

    def _crashed(self, name: str, error: BaseException) -> None:
        if name in ("session", "consumer"):
            # Whatever consumed, or was about to, is gone: nobody may be judged meanwhile.
            self._owner.on_broker_status(
                BrokerStatus(BrokerState.UNREACHABLE, f"{name} failed: {type(error).__name__}")
            )

    async def _connect(self, list_modules_first: bool) -> None:
        """Each stage once, so that a restart after a crash resumes where it failed."""
        if not self._reconciling:
            self._tasks.spawn("manager-reconcile", lambda: self._reconcile(list_modules_first))
            self._reconciling = True
        if self._consumer is None:
            self._consumer = await self._consumer_for_spec()
            if self._halted:
                self._consumer.halt()
            self._tasks.spawn("consumer", self._consumer.run)
        if not self._publishing:
            await self._publish_own_heartbeat(self._consumer)
            self._publishing = True

    async def _consumer_for_spec(self) -> HeartbeatConsumer:
        spec = self.spec
        if self.connections.amqp_url is not None:
            urls = [self.connections.amqp_url]
        else:
            self._owner.on_broker_status(
                BrokerStatus(BrokerState.CONNECTING, "looking up the broker in the Manager")
            )
            urls = await self._from_manager(
                lambda: resolve_broker_urls(self._broker_directory, self.client, spec.broker_id),
                "resolve the broker connection",
                slots=broker_lookup_slots,
            )
        logger.info(
            "%s/%s: consuming %r from %s",
            *self._labels,
            spec.queue,
            ", ".join(describe_url(url) for url in urls),
        )
        return HeartbeatConsumer(
            urls,
            spec.queue,
            spec.prefetch,
            self._owner.handle_message,
            self._owner.on_broker_status,
            self._owner.on_queue_reading,
            ssl_context=amqp_ssl_context(self.connections.amqp_ca_data),
            connection_name=f"overseer-operator {self._labels[0]}/{self._labels[1]}",
            connect_slots=broker_slots(),
        )

    async def _publish_own_heartbeat(self, consumer: HeartbeatConsumer) -> None:
        spec = self.spec
        identity = own_heartbeat(self._identity, spec.module_type)
        self._owner.register(identity)
        vouching = asyncio.create_task(vouch(lambda: self._vouch(identity), self._own_interval))
        try:
            exchange = await self._from_manager(
                lambda: self.client.get_exchange(spec.exchange_id),
                "look up the exchange's routing",
            )
        finally:
            vouching.cancel()

        async def publish(target: str, routing_key: str, body: bytes) -> None:
            # Not before the consumer has its connection: the exchange's routing is often read
            # first, and each exchange of a restart warned that it could not publish (then
            # waited a whole interval); while the broker is away, its condition already says so.
            await consumer.wait_consuming()
            if not self._own_heartbeat_stopped:
                started = asyncio.get_running_loop().time()
                await consumer.publish(target, routing_key, body)
                self._own_heartbeat_sent_at = started  # confirmed by the broker: it is queued

        self._tasks.spawn(
            "own-heartbeat",
            lambda: publish_own_heartbeats(
                publish,
                exchange,
                identity,
                self._own_interval,
                lambda: self._vouch(identity),
            ),
        )

    def _own_interval(self) -> float:
        return heartbeat_interval(self.spec.thresholds.inactive_after)

    def _vouch(self, identity: Heartbeat) -> None:
        """The operator's own heartbeat could not be published: it registers itself locally (the
        silence of a process that is running is no evidence), unless it stopped on purpose."""
        if not self._own_heartbeat_stopped:
            self._owner.register(identity)

    async def _list_modules_once(self) -> bool:
        try:
            async with startup_slots():
                rows = await self.client.list_modules(self.spec.exchange_id)
        except ManagerError:
            self._owner.on_manager_rows_unavailable()
            return False  # reported by the reconciliation, which retries
        self._owner.on_manager_rows(rows)
        return True

    def reconcile_interval(self) -> float:
        return min(MANAGER_RECONCILE_INTERVAL, self.spec.thresholds.inactive_after / 2)

    async def _reconcile(self, list_first: bool) -> None:
        """List the Manager's rows every ``reconcile_interval()``: with ``list_first`` once at
        once, and at once again (retried) if that failed; otherwise at once, retried."""
        now = not list_first or not await self._list_modules_once()
        while True:
            if not now:
                await asyncio.sleep(self.reconcile_interval() * random.uniform(0.8, 1.0))
            now = False
            # Not kept in a local: this frame sleeps until the next listing, and a listing is
            # about 640 bytes a row (6 MiB at 10 x 1,000 workers, held for nothing).
            self._owner.on_manager_rows(
                await self._from_manager(
                    lambda: self.client.list_modules(self.spec.exchange_id),
                    "list the exchange's modules",
                )
            )

    async def _from_manager(
        self,
        call: Callable[[], Coroutine[Any, Any, Any]],
        what: str,
        slots: Callable[[], asyncio.Semaphore] = startup_slots,
    ) -> Any:
        """Retry a Manager read until it succeeds, reporting each outcome to the owner; each
        attempt takes one of ``slots``."""
        backoff = Backoff(2.0)
        while True:
            try:
                async with slots():
                    result = await call()
            except ManagerUnauthorized as error:
                self._owner.on_manager_read(
                    Verdict(False, Reason.MANAGER_UNAUTHORIZED, f"cannot {what}: {error}")
                )
            except (ManagerError, LookupError) as error:
                self._owner.on_manager_read(
                    Verdict(False, Reason.MANAGER_UNREACHABLE, f"cannot {what}: {error}")
                )
            else:
                self._owner.on_manager_read(MANAGER_SYNCED)
                return result
            await backoff.wait()

    def halt(self) -> None:
        """Consume and publish nothing more, at once: another replica may own the exchange."""
        self._halted = True
        self.stop_own_heartbeat()
        if self._consumer is not None:
            self._consumer.halt()

    def stop_own_heartbeat(self) -> float | None:
        """Publish no more own heartbeats; the loop time the last one was sent (None: none was)."""
        self._own_heartbeat_stopped = True
        return self._own_heartbeat_sent_at

    async def deregister(self) -> None:
        """Take the operator's own row out of the exchange (best effort): the resource is gone, or
        another replica monitors the exchange from now on."""
        try:
            await asyncio.wait_for(
                self.client.delete_module(self.spec.exchange_id, self._identity),
                defaults.SHUTDOWN_TIMEOUT,
            )
        except (ManagerError, TimeoutError) as error:
            logger.warning("Own module %s not removed from the Manager: %s", self._identity, error)

    async def close(self) -> None:
        collector.request_thaw()  # the session's objects may be frozen garbage now
        await self._tasks.aclose()
        if self._consumer is not None:
            await self._consumer.aclose()
