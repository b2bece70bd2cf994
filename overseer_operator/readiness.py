"""What the conditions of a MessagingExchange say, from what its monitor knows (pure).

``Ready`` means the monitor works (spec valid, queue consumed, Manager reachable). The fleet's
health is ``WorkersHealthy``, never ``Ready``: offline workers must not block a GitOps sync.
``Stalled`` is true exactly when ``Ready`` is false for a reason a human must fix (kstatus).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from overseer_operator.model import (
    BrokerState,
    BrokerStatus,
    ConditionType,
    ConfigError,
    Reason,
    Verdict,
    WorkerState,
)

# The reasons a human must fix; anything else the operator retries by itself.
CONFIGURATION_REASONS = frozenset(
    {
        Reason.INVALID_SPEC,
        Reason.SECRET_NOT_FOUND,
        Reason.SECRET_FORBIDDEN,
        Reason.INVALID_BROKER_URL,
        Reason.MANAGER_UNAUTHORIZED,
        Reason.QUEUE_NOT_FOUND,
    }
)

_BROKER_REASONS = {
    BrokerState.CONNECTING: Reason.CONNECTING,
    BrokerState.CONSUMING: Reason.CONSUMING,
    BrokerState.UNREACHABLE: Reason.BROKER_UNREACHABLE,
    BrokerState.QUEUE_NOT_FOUND: Reason.QUEUE_NOT_FOUND,
    BrokerState.INVALID_URL: Reason.INVALID_BROKER_URL,
}


@dataclass(frozen=True, slots=True)
class MonitorView:
    config_error: ConfigError | None
    broker: BrokerStatus | None  # None: no connection attempted yet
    manager: Verdict | None  # None: no Manager call judged yet
    counts: Mapping[WorkerState, int]
    queue: str | None
    ingest: Verdict | None = None  # whether verdicts may be given (``backlog``); None: unknown


def broker_verdict(broker: BrokerStatus | None) -> Verdict:
    if broker is None:
        return Verdict(None, Reason.STARTING, "not connected yet")
    return Verdict(
        broker.state is BrokerState.CONSUMING, _BROKER_REASONS[broker.state], broker.message
    )


def workers_verdict(counts: Mapping[WorkerState, int]) -> Verdict:
    active = counts.get(WorkerState.ACTIVE, 0)
    inactive, offline = counts.get(WorkerState.INACTIVE, 0), counts.get(WorkerState.OFFLINE, 0)
    if offline:
        return Verdict(False, Reason.WORKERS_OFFLINE, f"{offline} offline, {inactive} inactive")
    if inactive:
        return Verdict(False, Reason.WORKERS_INACTIVE, f"{inactive} inactive")
    if active:
        return Verdict(True, Reason.ALL_ACTIVE, f"{active} active")
    return Verdict(None, Reason.NO_WORKERS, "no heartbeat received yet")


def ready_verdict(view: MonitorView) -> Verdict:
    """The first thing that keeps the monitor from working, in the order a user fixes them."""
    broker, manager = view.broker, view.manager
    if view.config_error is not None:
        return Verdict(False, view.config_error.reason, view.config_error.message)
    if broker is not None and broker.state not in (BrokerState.CONSUMING, BrokerState.CONNECTING):
        return Verdict(False, _BROKER_REASONS[broker.state], broker.message)
    if manager is not None and not manager.status and manager.reason is not Reason.MANAGER_BEHIND:
        return manager  # a Manager that is only slow leaves the monitor working (Ready stays)
    if broker is None or broker.state is BrokerState.CONNECTING:
        return Verdict(None, Reason.STARTING, "connecting to the broker")
    return Verdict(True, Reason.MONITORING, f"consuming heartbeats from queue {view.queue!r}")


def derive_conditions(view: MonitorView) -> dict[ConditionType, Verdict]:
    ready = ready_verdict(view)
    stalled = ready.status is False and ready.reason in CONFIGURATION_REASONS
    return {
        ConditionType.READY: ready,
        ConditionType.BROKER_CONNECTED: broker_verdict(view.broker),
        ConditionType.MANAGER_SYNCED: view.manager
        or Verdict(None, Reason.STARTING, "no Manager call made yet"),
        ConditionType.WORKERS_HEALTHY: workers_verdict(view.counts),
        ConditionType.CAUGHT_UP: view.ingest or Verdict(None, Reason.STARTING, "not consuming yet"),
        ConditionType.STALLED: Verdict(True, ready.reason, ready.message)
        if stalled
        else Verdict(False, Reason.CONFIGURATION_VALID, "no configuration problem"),
    }
