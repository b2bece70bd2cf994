"""One MessagingExchange, monitored: its lifecycle (spec, sessions, conditions, shutdown).

``ExchangeMonitor.run`` lives as long as the kopf daemon of its resource. It re-reads the spec
whenever ``metadata.generation`` moves (kopf daemons do not restart on a spec change): thresholds
and the refresh interval apply in place, anything about connections replaces the ``Session``.
The hot path (``FleetTracker``) and the Manager writer belong to the monitor and outlive sessions,
so nothing owed to the Manager is lost to a reconfiguration, a broker outage or a Manager outage.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Collection, Mapping
from datetime import UTC, datetime
from typing import Any, Protocol

from overseer_operator import defaults, metrics, seeding
from overseer_operator.broker import BrokerDirectory
from overseer_operator.conditions import ConditionSet
from overseer_operator.config import (
    ExchangeSpec,
    OperatorEnvironment,
    parse_spec,
    resolve_connections,
    secret_reader,
)
from overseer_operator.consumer import QueueReading
from overseer_operator.events import EventRecorder
from overseer_operator.kube import KubeApi
from overseer_operator.manager_client import ManagerClient, ModuleRecord
from overseer_operator.manager_writer import ManagerWriter
from overseer_operator.model import (
    BrokerState,
    BrokerStatus,
    ConditionType,
    ConfigError,
    Heartbeat,
    Reason,
    Verdict,
)
from overseer_operator.oauth import TokenCache
from overseer_operator.ratelimit import RateLimiter
from overseer_operator.readiness import MonitorView, derive_conditions
from overseer_operator.session import Session
from overseer_operator.status import MODULES_LIMIT, StatusWriter, render_status
from overseer_operator.supervisor import Supervisor
from overseer_operator.tracker import FleetTracker

logger = logging.getLogger(__name__)

# How long a replica handing an exchange over waits to read its own last heartbeat back.
OWN_HEARTBEAT_DRAIN_TIMEOUT = 2.0


class Stopped(Protocol):
    """The slice of ``kopf.DaemonStopped`` the monitor uses."""

    def __bool__(self) -> bool: ...
    def wait(self, timeout: float | None = None) -> Awaitable[object]: ...


class ExchangeMonitor:
    def __init__(
        self,
        body: Any,
        environment: OperatorEnvironment,
        kube: KubeApi,
        token_cache: TokenCache | None = None,
        event_budget: RateLimiter | None = None,
        *,
        seed_status: Mapping[str, Any] | None = None,
        epoch: str | None = None,
        on_fenced: Callable[[], None] | None = None,
        peers: Collection[str] = (),
        broker_directory: BrokerDirectory | None = None,
    ) -> None:
        self._body = body  # kopf's live view: spec and generation change under our feet
        self.namespace: str = body["metadata"]["namespace"]
        self.name: str = body["metadata"]["name"]
        self._labels = (self.namespace, self.name)
        metrics.start_exchange(*self._labels)
        self.environment = environment
        self._kube = kube
        self._token_cache = token_cache  # exchanges with the same credentials share one token
        # ...and one read of their broker's connections (a restart starts them all at once).
        self._broker_directory = broker_directory or BrokerDirectory()
        self._loop = asyncio.get_running_loop()
        self.conditions = ConditionSet()
        self.conditions.seed((body.get("status") or {}).get("conditions") or ())
        self.status_writer = StatusWriter(
            kube, self.namespace, self.name, self._render_status, settled=self._start_settled
        )
        # With several replicas (sharding.py): the status as this owner found it, and the epoch
        # every status patch is conditional on.
        self._seed_status = seed_status
        self.status_writer.epoch = epoch
        if on_fenced is not None:
            self.status_writer.on_fenced = on_fenced
        self.events = EventRecorder(
            kube,
            {"namespace": self.namespace, "name": self.name, "uid": body["metadata"].get("uid")},
            budget=event_budget,
        )
        self.writer = ManagerWriter(
            str((body.get("spec") or {}).get("exchangeId", "")),
            defaults.REFRESH_INTERVAL,
            self._loop.time,
            self._on_manager_write,
            self._labels,
            # A refresh writes the worker's newest record, read from the fleet when its turn comes.
            active_record=lambda hostname: self.tracker.fleet.active_record(hostname),
            lateness_allowed=environment.manager_write_lateness_allowed,
        )
        self.tracker = FleetTracker(
            self._labels, self.writer, self.events, self.status_writer.mark_dirty, self._loop.time
        )
        self.tracker.clock_skew = environment.clock_skew
        self.tracker.row_write_slack = seeding.row_write_slack(
            environment.manager_write_lateness_allowed
        )
        self.tracker.peers = peers
        # The first session consumes while it reads the Manager's rows: registrations wait for them.
        self.tracker.await_listing()
        self._tasks = Supervisor(self._labels)
        self.spec: ExchangeSpec | None = None
        self._observed_generation: int | None = None
        self._spec_error: ConfigError | None = None
        self._connection_error: ConfigError | None = None
        self._manager_read: Verdict | None = None
        self._manager_write: Verdict | None = None
        self._stopping = False
        self._halted = False
        self._session: Session | None = None
        self._session_started_at = 0.0
        self._listed_modules = False

    # --- lifecycle -------------------------------------------------------------------------

    async def run(self, stopped: Stopped) -> None:
        """Monitor until ``stopped``; the caller's daemon exits when this returns."""
        seed = self._seed_status
        self.tracker.seed_from_status((self._body.get("status") if seed is None else seed) or {})
        self._tasks.spawn("status-writer", self.status_writer.run)
        self._tasks.spawn("events", self.events.run)
        self._tasks.spawn("sweeper", self.tracker.sweep_forever)
        self._tasks.spawn("manager-writer", self.writer.run)
        # Awaited once for the whole run, never with a timeout: each ``stopped.wait(timeout)``
        # that times out leaves kopf's cancelled wait behind as a cycle of 26 objects, and at one
        # a second per exchange that was most of what the timed full collection had to free.
        stop_requested = asyncio.ensure_future(stopped.wait())
        try:
            while not stopped:
                generation = self._body["metadata"].get("generation")
                spec = self._apply_spec(generation)
                if spec is not None:
                    await self._reconcile_session(spec)
                # Re-read Secrets every so often while they are missing or refused: they may be
                # created or rotated, which changes no generation.
                await self._wait_for_change(stopped, stop_requested, generation)
        finally:
            stop_requested.cancel()
            await self._shut_down(stopped)

    async def _wait_for_change(
        self, stopped: Stopped, stop_requested: asyncio.Future[object], generation: Any
    ) -> None:
        """Until stopped, or the spec changes, or it is time to look at the Secrets again."""
        deadline = self._loop.time() + defaults.CONFIG_RETRY_INTERVAL
        while not stopped and self._body["metadata"].get("generation") == generation:
            if self._loop.time() >= deadline:
                return
            await asyncio.wait((stop_requested,), timeout=1.0)

    def _apply_spec(self, generation: int | None) -> ExchangeSpec | None:
        self._observed_generation = generation
        try:
            spec = parse_spec(self._body.get("spec") or {})
        except ConfigError as error:
            self._set_spec_error(error)
            return None
        self.tracker.set_thresholds(spec.thresholds)
        self.tracker.refresh_interval = spec.refresh_interval
        self.writer.refresh_interval = spec.refresh_interval
        self.spec = spec
        self._set_spec_error(None)
        return spec

    def _session_needs_renewal(self, spec: ExchangeSpec) -> bool:
        session = self._session
        if session is None or session.spec.connection_fields != spec.connection_fields:
            return True
        if self._connection_error is not None:
            return True  # Secrets missing or refused: read them again
        if (
            self._manager_read is not None
            and self._manager_read.reason is Reason.MANAGER_UNAUTHORIZED
        ):
            return True  # possibly a rotated secret
        broker = self.tracker.broker
        if broker is not None and broker.state in (
            BrokerState.INVALID_URL,
            BrokerState.UNREACHABLE,
        ):
            # A rotated password in urlSecretRef, or a broker record rotated in the Manager.
            relookup_after = self.environment.broker_relookup_interval
            return self._loop.time() - self._session_started_at >= relookup_after
        return False

    async def _reconcile_session(self, spec: ExchangeSpec) -> None:
        if self._halted:
            return
        if not self._session_needs_renewal(spec):
            if self._session is not None:
                self._session.spec = spec  # thresholds and the like apply in place
            return
        try:
            connections = await resolve_connections(
                spec, self.environment, secret_reader(self._kube.get_secret_data, self.namespace)
            )
        except ConfigError as error:
            if error.message != getattr(self._connection_error, "message", None):
                logger.error("%s/%s: %s", *self._labels, error.message)
            self._connection_error = error
            session = self._session
            if session is not None and session.spec.connection_fields != spec.connection_fields:
                # Never keep consuming what the spec no longer names.
                await self._close_session("the configuration changed and cannot be applied")
            self.status_writer.mark_dirty()
            return
        self._connection_error = None
        session = self._session
        broker = self.tracker.broker
        failing = broker is not None and broker.state is not BrokerState.CONSUMING
        if (
            session is not None
            and session.connections == connections
            and session.spec.connection_fields == spec.connection_fields
            and not (failing and connections.amqp_url is None)
        ):
            return
        await self._close_session("reconnecting with a new configuration")
        try:
            client = ManagerClient(connections.manager, token_cache=self._token_cache)
        except (ValueError, OSError) as error:  # e.g. a CA bundle that is not PEM
            self._connection_error = ConfigError(
                Reason.INVALID_SPEC, f"cannot use the Manager settings: {error}"
            )
            self.status_writer.mark_dirty()
            return
        self.writer.attach(client)
        self._manager_read = None  # the new credentials have not been judged yet
        self._session = Session(
            self,
            spec,
            connections,
            client,
            identity=self.environment.identity,
            labels=self._labels,
            broker_directory=self._broker_directory,
        )
        self._session_started_at = self._loop.time()
        self._session.start(list_modules_first=not self._listed_modules)
        self.status_writer.mark_dirty()

    def halt(self) -> None:
        """This replica lost the exchange (its renew deadline passed, or a status write was
        fenced): stop consuming, writing and judging at once, synchronously, not when the daemon
        next looks at its stop flag. Heartbeats handled but not acked yet go back to the queue,
        so the next owner reads every heartbeat this one did not write: a worker's silence is
        never inferred from rows this replica stopped refreshing while it still consumed."""
        self.on_broker_status(
            BrokerStatus(BrokerState.CONNECTING, "this replica no longer owns the exchange")
        )
        self._halted = True
        self.writer.halt()
        self.status_writer.halt()
        if self._session is not None:
            self._session.halt()

    async def _close_session(self, why: str) -> None:
        """Stop consuming first (verdicts are held from here), then close the connections."""
        session, self._session = self._session, None
        if session is None:
            return
        self.tracker.on_broker_status(BrokerStatus(BrokerState.CONNECTING, why))
        await session.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(session.client.aclose(), defaults.SHUTDOWN_TIMEOUT)

    async def _shut_down(self, stopped: Stopped) -> None:
        self.tracker.stop_judging()
        deleted = _stopped_because_deleted(stopped)
        # With several replicas: ``fenced``, another may own the exchange already (no write at
        # all); ``handover``, the next owner seeds from what is written here.
        fenced = bool(getattr(stopped, "fenced", False))
        handover = bool(getattr(stopped, "handover", False))
        if fenced:  # the Manager writer and the status writer first, the connections after
            await self._tasks.aclose()
        session = self._session
        # A replica that hands over lives on; a deleted exchange's monitor only cleans up.
        retiring = handover and not fenced and not deleted
        if retiring and session is not None:
            await self._drain_own_heartbeat(session)
        if session is not None and deleted and not fenced:
            await session.deregister()
        if session is not None:
            await session.close()
        if retiring:
            # This replica goes on living, only no longer for this exchange: its own row leaves
            # the status and the Manager rather than age out as a silent worker's would.
            self.tracker.forget(self.environment.identity)
            await self._flush_manager_writes()
            if session is not None:
                await session.deregister()
        if not deleted and not fenced:
            self._stopping = not handover  # a handover is not an outage of the exchange
            with contextlib.suppress(Exception):
                await asyncio.wait_for(
                    self.status_writer.write_if_due(fresh=handover), defaults.SHUTDOWN_TIMEOUT
                )
        await self._tasks.aclose()
        if session is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(session.client.aclose(), defaults.SHUTDOWN_TIMEOUT)
        metrics.forget_exchange(*self._labels)

    async def _drain_own_heartbeat(self, session: Session) -> None:
        """Stop the own heartbeat and read the last one sent back from the queue (bounded), so
        that the next owner does not find it there and register this replica as a worker."""
        sent_at = session.stop_own_heartbeat()
        deadline = self._loop.time() + OWN_HEARTBEAT_DRAIN_TIMEOUT
        while sent_at is not None and self._loop.time() < deadline:
            own = self.tracker.fleet.get(self.environment.identity)
            if own is not None and (own.last_heartbeat_at or 0.0) >= sent_at:
                return
            await asyncio.sleep(0.05)
        if sent_at is not None:
            logger.warning(
                "%s/%s: own last heartbeat not read back before the handover", *self._labels
            )

    async def _flush_manager_writes(self) -> None:
        """Give the Manager writer a moment to send what it owes before the next owner starts."""
        deadline = self._loop.time() + defaults.SHUTDOWN_TIMEOUT
        while self.writer.pending and self._loop.time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)

    # --- what a session reports (the SessionOwner protocol) ---------------------------------

    def handle_message(self, body: bytes) -> None:
        self.tracker.handle_message(body)

    def on_broker_status(self, status: BrokerStatus) -> None:
        if not self._halted:  # once halted, verdicts stay held whatever the consumer says
            self.tracker.on_broker_status(status)

    def on_queue_reading(self, reading: QueueReading) -> None:
        self.tracker.on_queue_reading(reading)

    def on_manager_read(self, verdict: Verdict) -> None:
        self._manager_read = verdict
        self.status_writer.mark_dirty()

    def on_manager_rows(self, rows: list[ModuleRecord]) -> None:
        self._listed_modules = True
        self.tracker.on_manager_rows(rows)

    def on_manager_rows_unavailable(self) -> None:
        self.tracker.listing_unavailable()

    def register(self, heartbeat: Heartbeat) -> None:
        """The operator registers itself: seen locally once, then through the queue like others."""
        self.tracker.observe(heartbeat)

    def _on_manager_write(self, verdict: Verdict) -> None:
        self._manager_write = verdict
        self.status_writer.mark_dirty()

    # --- conditions and status ---------------------------------------------------------------

    def _set_spec_error(self, error: ConfigError | None) -> None:
        if error is not None and (
            self._spec_error is None or error.message != self._spec_error.message
        ):
            logger.error("%s/%s: %s", *self._labels, error.message)
        self._spec_error = error
        self.status_writer.mark_dirty()

    def manager_verdict(self) -> Verdict | None:
        """A failing write outweighs a successful read, and the other way round."""
        write, read = self._manager_write, self._manager_read
        for verdict in (write, read):
            if verdict is not None and not verdict.status:
                return verdict
        return write or read

    def _start_settled(self) -> bool:
        """Whether the status may be written yet: the Manager's rows are read (or cannot be: the
        fleet is otherwise only what the old status listed) and the broker has answered, or
        there is something a reader must see now (a configuration error, a shutdown)."""
        if self._spec_error or self._connection_error or self._stopping or self._halted:
            return True
        broker = self.tracker.broker
        return (
            not self.tracker.awaiting_listing
            and broker is not None
            and broker.state is not BrokerState.CONNECTING
        )

    def _view(self) -> MonitorView:
        return MonitorView(
            config_error=self._spec_error or self._connection_error,
            broker=self.tracker.broker,
            manager=self.manager_verdict(),
            counts=self.tracker.fleet.counts,
            queue=self.spec.queue if self.spec else None,
            ingest=self.tracker.ingest_verdict(),
        )

    def refresh_conditions(self) -> None:
        for type_, verdict in derive_conditions(self._view()).items():
            self.conditions.set(type_, verdict)
        if self._stopping:
            self.conditions.set(
                ConditionType.READY,
                Verdict(None, Reason.STOPPING, "the operator is shutting down"),
            )

    def _render_status(self) -> dict[str, Any]:
        self.refresh_conditions()
        # Rendered at least once a minute: the lateness keeps growing in the metric while
        # nothing is written (the writer updates it only after a write).
        self.writer.observe_lateness()
        return render_status(
            self.tracker.snapshot(MODULES_LIMIT),
            self.conditions.as_list(self._observed_generation),
            self._observed_generation,
            self._loop.time(),
            datetime.now(UTC),
            self.tracker.heard_wall_time,
        )


def _stopped_because_deleted(stopped: Stopped) -> bool:
    reason = getattr(stopped, "reason", None)
    if reason is None:
        return False
    import kopf  # the monitor itself does not depend on kopf; only its stop reason does

    return bool(reason & kopf.DaemonStoppingReason.RESOURCE_DELETED)
