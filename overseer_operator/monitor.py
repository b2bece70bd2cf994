"""One MessagingExchange, monitored: the piece that wires decoding, the fleet, and the writers.

``ExchangeMonitor.run`` lives as long as the kopf daemon of its resource. It re-reads the spec
whenever ``metadata.generation`` moves (kopf daemons do not restart on a spec change): thresholds
and the refresh interval apply in place, anything about connections replaces the ``Session``. The
fleet and the Manager writer outlive sessions, so nothing owed to the Manager is lost to a
reconfiguration, a broker outage or a Manager outage.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Protocol

from overseer_operator import metrics, seeding
from overseer_operator.conditions import ConditionSet, ConditionType, Reason
from overseer_operator.config import (
    ConfigError,
    ExchangeSpec,
    OperatorEnvironment,
    SecretKeyRef,
    parse_spec,
    resolve_connections,
)
from overseer_operator.consumer import BrokerState, BrokerStatus
from overseer_operator.events import EventRecorder
from overseer_operator.fleet import Fleet, Thresholds, Transition, WorkerState
from overseer_operator.heartbeat import Heartbeat, MessageRejected, decode_message
from overseer_operator.kube import KubeApi
from overseer_operator.manager_client import ManagerClient, ModuleRecord
from overseer_operator.manager_writer import ManagerWriter
from overseer_operator.oauth import TokenCache
from overseer_operator.ratelimit import RateLimiter
from overseer_operator.readiness import MonitorView, derive_conditions
from overseer_operator.session import Session
from overseer_operator.status import MODULES_LIMIT, StatusWriter, render_status

logger = logging.getLogger(__name__)

STATUS_REFRESH_INTERVAL = 60.0
CONFIG_RETRY_INTERVAL = 10.0
SHUTDOWN_WRITE_TIMEOUT = 5.0


class Stopped(Protocol):
    """The slice of ``kopf.DaemonStopped`` the monitor uses."""

    def __bool__(self) -> bool: ...
    async def wait(self, timeout: float | None = None) -> bool: ...  # noqa: ASYNC109 - kopf's API


class ExchangeMonitor:
    def __init__(
        self,
        body: Any,
        environment: OperatorEnvironment,
        kube: KubeApi,
        token_cache: TokenCache | None = None,
    ) -> None:
        self._body = body  # kopf's live view: spec and generation change under our feet
        self.namespace: str = body["metadata"]["namespace"]
        self.name: str = body["metadata"]["name"]
        self._labels = (self.namespace, self.name)
        metrics.start_exchange(*self._labels)
        self.environment = environment
        self._kube = kube
        self._token_cache = token_cache  # exchanges with the same credentials share one token
        self._loop = asyncio.get_running_loop()
        self.fleet = Fleet(Thresholds(600.0, 1200.0), self._loop.time)
        # Nobody can be heard before the queue is consumed: the fleet's clock starts then.
        self.fleet.pause()
        self.conditions = ConditionSet()
        self.conditions.seed((body.get("status") or {}).get("conditions") or ())
        self.status_writer = StatusWriter(
            kube,
            self.namespace,
            self.name,
            self._render_status,
            refresh_interval=STATUS_REFRESH_INTERVAL,
        )
        self.events = EventRecorder(
            kube,
            {"namespace": self.namespace, "name": self.name, "uid": body["metadata"].get("uid")},
        )
        # Owed Manager writes accumulate here from the start; a session gives it a client.
        self.writer = ManagerWriter(
            None,
            str((body.get("spec") or {}).get("exchangeId", "")),
            300.0,
            self._loop.time,
            self.set_manager_health,
            self._labels,
        )
        self.spec: ExchangeSpec | None = None
        self._observed_generation: int | None = None
        self._spec_error: ConfigError | None = None
        self._connection_error: ConfigError | None = None
        self._broker: BrokerStatus | None = None
        self._manager: tuple[bool, Reason, str] | None = None
        self._reject_log = RateLimiter(5, 60.0, self._loop.time)
        self._sweep_wake = asyncio.Event()
        self.seeded_from_manager = False
        self._refresh_conditions()

    # --- lifecycle -------------------------------------------------------------------------

    async def run(self, stopped: Stopped) -> None:
        """Monitor until ``stopped``; the caller's daemon exits when this returns."""
        self._seed_from_status(self._body.get("status") or {})
        background = [
            asyncio.create_task(self.status_writer.run(), name="status-writer"),
            asyncio.create_task(self.events.run(), name="events"),
            asyncio.create_task(self._sweep_forever(), name="sweeper"),
        ]
        session: Session | None = None
        try:
            while not stopped:
                generation = self._body["metadata"].get("generation")
                spec = self._apply_spec(generation)
                if spec is not None and (
                    session is None
                    or session.spec.connection_fields != spec.connection_fields
                    or self._credentials_refused()
                ):
                    session = await self._renew_session(session, spec)
                if session is not None and spec is not None:
                    session.spec = spec
                # Re-read Secrets every so often while they are missing or refused: they may be
                # created or rotated, which changes no generation.
                await self._wait_for_change(stopped, generation, retry_after=CONFIG_RETRY_INTERVAL)
        finally:
            if session is not None:
                if _stopped_because_deleted(stopped):
                    await session.deregister()
                await session.close()
            await self._shut_down(stopped, background)

    async def _wait_for_change(
        self, stopped: Stopped, generation: Any, retry_after: float | None
    ) -> None:
        """Until stopped, or the spec changes, or ``retry_after`` seconds have passed."""
        deadline = None if retry_after is None else self._loop.time() + retry_after
        while not stopped and self._body["metadata"].get("generation") == generation:
            if deadline is not None and self._loop.time() >= deadline:
                return
            await stopped.wait(1.0)

    def _apply_spec(self, generation: int | None) -> ExchangeSpec | None:
        self._observed_generation = generation
        try:
            spec = parse_spec(self._body.get("spec") or {})
        except ConfigError as error:
            self._set_spec_error(error)
            return None
        if self.spec is None or spec.thresholds != self.spec.thresholds:
            self.fleet.set_thresholds(spec.thresholds)
            self._sweep_wake.set()
        self.writer.refresh_interval = spec.refresh_interval
        self.spec = spec
        self._set_spec_error(None)
        return spec

    def _credentials_refused(self) -> bool:
        """Whether the Secrets should be read again: missing, refused, or possibly rotated."""
        manager_refused = (
            self._manager is not None and self._manager[1] is Reason.MANAGER_UNAUTHORIZED
        )
        broker_failing = self._broker is not None and self._broker.state in (
            BrokerState.INVALID_URL,
            BrokerState.UNREACHABLE,  # a rotated password in urlSecretRef looks like this
        )
        return self._connection_error is not None or manager_refused or broker_failing

    async def _renew_session(self, session: Session | None, spec: ExchangeSpec) -> Session | None:
        """The session for ``spec``: the current one if nothing it uses changed, else a new one."""
        try:
            connections = await resolve_connections(spec, self.environment, self._read_secret)
        except ConfigError as error:
            self._connection_error = error
            self._refresh_conditions()
            return session  # keep what works (if anything) until the configuration is fixed
        self._connection_error = None
        self._refresh_conditions()
        if (
            session is not None
            and session.connections == connections
            and session.spec.connection_fields == spec.connection_fields
        ):
            return session
        if session is not None:
            await session.close()
        client = ManagerClient(connections.manager, token_cache=self._token_cache)
        self.writer.client = client
        self._manager = None  # the new credentials have not been judged yet
        session = Session(self, spec, connections, client)
        session.start()
        return session

    async def _read_secret(self, ref: SecretKeyRef) -> str:
        return await self._kube.read_secret_value(self.namespace, ref)

    async def _shut_down(self, stopped: Stopped, background: list[asyncio.Task[None]]) -> None:
        deleted = _stopped_because_deleted(stopped)
        if not deleted:
            self.conditions.set(
                ConditionType.READY, None, Reason.STOPPING, "the operator is shutting down"
            )
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.status_writer.write_if_due(), SHUTDOWN_WRITE_TIMEOUT)
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        metrics.forget_exchange(*self._labels)

    # --- seeding (restart safety) ----------------------------------------------------------

    def _seed_from_status(self, status: Mapping[str, Any]) -> None:
        """Workers the previous operator reported (see ``seeding``).

        The status says nothing certain about the Manager, so only what the evidence proves
        stale is owed to it (a DELETE that finds nothing is harmless); the Manager's own list,
        read next, settles the rest.
        """
        now = datetime.now(UTC)
        for module in status.get("modules") or ():
            evidence = seeding.from_status_module(module, now, STATUS_REFRESH_INTERVAL)
            if evidence is None:
                continue
            transition = self.fleet.seed(
                evidence.hostname, evidence.module_type, evidence.shown, evidence.silent_for
            )
            if transition is not None and transition.current is not WorkerState.ACTIVE:
                self._dispatch(transition)
        self._sweep_wake.set()

    def seed_from_manager(self, rows: list[ModuleRecord], spec: ExchangeSpec) -> None:
        """Workers the Manager lists (see ``seeding``); a worker the fleet already knows, from a
        heartbeat or the status, is reconciled with its row instead."""
        now = datetime.now(UTC)
        inactive_after = spec.thresholds.inactive_after
        for row in rows:
            evidence = seeding.from_manager_row(row, now, inactive_after, spec.refresh_interval)
            known = self.fleet.get(evidence.hostname)
            if known is None:
                transition = self.fleet.seed(
                    evidence.hostname,
                    evidence.module_type,
                    evidence.shown,
                    evidence.silent_for,
                    workload=evidence.workload,
                )
                known = self.fleet.get(evidence.hostname)
            elif known.state is not evidence.shown:
                at = self._loop.time()
                transition = Transition(
                    evidence.hostname, known.module_type, evidence.shown, known.state, None, at, at
                )
            else:
                transition = None
            if transition is not None:
                self._dispatch(transition)
            elif known is not None and known.state is WorkerState.ACTIVE:
                self.writer.mark_written(evidence.hostname)
        self.seeded_from_manager = True
        self._sweep_wake.set()

    # --- the heartbeat path ----------------------------------------------------------------

    def handle_message(self, body: bytes) -> None:
        """Called by the consumer for every delivery; raising ``MessageRejected`` rejects it."""
        try:
            decoded = decode_message(body)
        except MessageRejected as error:
            metrics.MESSAGES_REJECTED.labels(*self._labels, error.reason).inc()
            if self._reject_log.allow():
                logger.warning("Rejected a message on %s/%s: %s", *self._labels, error)
            raise
        if decoded.heartbeat is None:
            metrics.MESSAGES_IGNORED.labels(*self._labels, decoded.event_type[:64]).inc()
            return
        metrics.HEARTBEATS_RECEIVED.labels(*self._labels, decoded.format).inc()
        transition = self.fleet.observe(decoded.heartbeat)
        if transition is not None:
            self._dispatch(transition)
            self._sweep_wake.set()
        else:
            self.writer.observe_heartbeat(decoded.heartbeat)

    def handle_registration(self, heartbeat: Heartbeat) -> None:
        """The operator registers itself: seen locally once, then through the queue like others."""
        transition = self.fleet.observe(heartbeat)
        if transition is not None:
            self._dispatch(transition)
            self._sweep_wake.set()

    def _dispatch(self, transition: Transition) -> None:
        metrics.TRANSITIONS.labels(*self._labels, transition.current.value).inc()
        if transition.current is not WorkerState.ACTIVE:
            metrics.DETECTION_LAG.labels(*self._labels).observe(
                max(0.0, transition.at - transition.due_at)
            )
        if transition.current is not WorkerState.ACTIVE or transition.previous is not None:
            logger.info(
                "%s/%s: worker %s %s -> %s",
                *self._labels,
                transition.hostname,
                transition.previous and transition.previous.value,
                transition.current.value,
            )
        known = self.fleet.get(transition.hostname)
        self.writer.apply(transition, workload=known.workload if known else None)
        self.events.record(transition, self.fleet.thresholds)
        self._refresh_conditions()
        self.status_writer.mark_dirty()

    async def _sweep_forever(self) -> None:
        while True:
            deadline = self.fleet.next_deadline()
            timeout = None if deadline is None else max(0.0, deadline - self._loop.time())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._sweep_wake.wait(), timeout)
            self._sweep_wake.clear()
            for transition in self.fleet.sweep():
                self._dispatch(transition)
            self._update_worker_gauges()

    def _update_worker_gauges(self) -> None:
        counts = self.fleet.snapshot(0).counts
        for state in WorkerState:
            metrics.WORKERS.labels(*self._labels, state.value).set(counts.get(state, 0))

    # --- conditions --------------------------------------------------------------------------

    def _set_spec_error(self, error: ConfigError | None) -> None:
        if error is not None and (
            self._spec_error is None or error.message != self._spec_error.message
        ):
            logger.error("%s/%s: %s", *self._labels, error.message)
        self._spec_error = error
        self._refresh_conditions()

    def set_broker_status(self, status: BrokerStatus) -> None:
        self._broker = status
        metrics.BROKER_CONNECTED.labels(*self._labels).set(
            int(status.state is BrokerState.CONSUMING)
        )
        # A broker outage is not a fleet outage: freeze the clock of every worker meanwhile.
        if status.state is BrokerState.CONSUMING:
            self.fleet.resume()
        else:
            self.fleet.pause()
        self._sweep_wake.set()
        self._refresh_conditions()

    def set_manager_health(self, ok: bool, reason: Reason, message: str) -> None:
        self._manager = (ok, reason, message)
        self._refresh_conditions()

    def _refresh_conditions(self) -> None:
        view = MonitorView(
            config_error=self._spec_error or self._connection_error,
            broker=self._broker,
            manager=self._manager,
            counts=self.fleet.snapshot(0).counts,
            queue=self.spec.queue if self.spec else None,
        )
        changed = False
        for type_, verdict in derive_conditions(view).items():
            changed |= self.conditions.set(type_, *verdict)
        if changed:
            self.status_writer.mark_dirty()

    def _render_status(self) -> dict[str, Any]:
        return render_status(
            self.fleet.snapshot(MODULES_LIMIT),
            self.conditions.as_list(self._observed_generation),
            self._observed_generation,
            self._loop.time(),
            datetime.now(UTC),
        )


def _stopped_because_deleted(stopped: Stopped) -> bool:
    reason = getattr(stopped, "reason", None)
    if reason is None:
        return False
    import kopf  # the monitor itself does not depend on kopf; only its stop reason does

    return bool(reason & kopf.DaemonStoppingReason.RESOURCE_DELETED)
