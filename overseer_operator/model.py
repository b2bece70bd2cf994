"""The operator's pure vocabulary: what flows from decoding to the registry to the writers.

Nothing here does I/O or imports an I/O library (a test checks it), so the health rules, the
readiness rules and their tests can be read and run without a broker, a Manager or Kubernetes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from overseer_operator import defaults

DEFAULT_STATUS = "active"


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """A worker's status report, with the workload as plain JSON-able data.

    ``workload_json`` is the same workload as compact JSON text when the decoder has it: the
    registry keeps that (a tenth of the memory of the lists and dicts) instead of the objects.
    """

    hostname: str
    module_type: str
    status: str
    workload: list[Any]
    workload_json: str | None = field(default=None, compare=False, repr=False)


class WorkerState(StrEnum):
    ACTIVE = "active"
    INACTIVE = "inactive"
    OFFLINE = "offline"


@dataclass(frozen=True, slots=True)
class Thresholds:
    """Seconds of silence before a worker is inactive, offline, and forgotten once offline."""

    inactive_after: float = defaults.INACTIVE_AFTER
    offline_after: float = defaults.OFFLINE_AFTER
    forget_after: float = defaults.FORGET_AFTER

    def __post_init__(self) -> None:
        if not 0 < self.inactive_after < self.offline_after:
            raise ValueError("thresholds need 0 < inactive_after < offline_after")
        if self.forget_after < 0:
            raise ValueError("forget_after must not be negative")


@dataclass(frozen=True, slots=True)
class Transition:
    """A change the writers owe the Manager and the status.

    ``previous is None`` is a worker new to the fleet. ``ACTIVE -> ACTIVE`` means an active worker
    now reports another module type or status string, so its record must be rewritten.
    ``due_at`` is when the rule fired (a threshold, or the heartbeat), ``at`` when it was emitted.
    ``workload`` is the worker's latest known one, what its Manager record carries.
    """

    hostname: str
    module_type: str
    previous: WorkerState | None
    current: WorkerState
    workload: list[Any]
    due_at: float
    at: float


@dataclass(frozen=True, slots=True)
class WorkerView:
    """One worker as the writers see it; ``last_heartbeat_at`` is None if it was only seeded."""

    hostname: str
    module_type: str
    state: WorkerState
    last_seen: float
    last_heartbeat_at: float | None = None
    status: str = DEFAULT_STATUS
    workload: list[Any] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class FleetSnapshot:
    """Complete counts, the newest heartbeat's clock time, and the worst workers first."""

    counts: dict[WorkerState, int]
    last_heartbeat_at: float | None
    workers: list[WorkerView]

    @property
    def total(self) -> int:
        return sum(self.counts.values())


class BrokerState(StrEnum):
    CONNECTING = "connecting"
    CONSUMING = "consuming"
    UNREACHABLE = "unreachable"
    QUEUE_NOT_FOUND = "queue-not-found"
    INVALID_URL = "invalid-url"


@dataclass(frozen=True, slots=True)
class BrokerStatus:
    state: BrokerState
    message: str


class ConditionType(StrEnum):
    READY = "Ready"
    BROKER_CONNECTED = "BrokerConnected"
    MANAGER_SYNCED = "ManagerSynced"
    WORKERS_HEALTHY = "WorkersHealthy"
    CAUGHT_UP = "CaughtUp"
    STALLED = "Stalled"


class Reason(StrEnum):
    """Every reason the operator writes; ``docs/operations.md`` explains each."""

    MONITORING = "Monitoring"
    STARTING = "Starting"
    STOPPING = "Stopping"
    # Configuration problems: a human must act (Ready=False and Stalled=True).
    INVALID_SPEC = "InvalidSpec"
    SECRET_NOT_FOUND = "SecretNotFound"
    SECRET_FORBIDDEN = "SecretForbidden"
    INVALID_BROKER_URL = "InvalidBrokerUrl"
    MANAGER_UNAUTHORIZED = "ManagerUnauthorized"
    QUEUE_NOT_FOUND = "QueueNotFound"
    # Transient problems: the operator keeps retrying by itself.
    BROKER_UNREACHABLE = "BrokerUnreachable"
    MANAGER_UNREACHABLE = "ManagerUnreachable"
    MANAGER_BEHIND = "ManagerBehind"
    KUBERNETES_UNREACHABLE = "KubernetesUnreachable"
    # Sub-conditions.
    CONSUMING = "Consuming"
    CONNECTING = "Connecting"
    SYNCED = "Synced"
    ALL_ACTIVE = "AllActive"
    NO_WORKERS = "NoWorkers"
    WORKERS_INACTIVE = "WorkersInactive"
    WORKERS_OFFLINE = "WorkersOffline"
    CONFIGURATION_VALID = "ConfigurationValid"
    CAUGHT_UP = "CaughtUp"
    DRAINING_BACKLOG = "DrainingBacklog"
    FALLING_BEHIND = "FallingBehind"
    NOT_CONSUMING = "NotConsuming"


@dataclass(frozen=True, slots=True)
class Verdict:
    """What one condition says: ``status`` None is Unknown."""

    status: bool | None
    reason: Reason
    message: str


# ManagerSynced=True in one set of words, whichever call proved it (a listing, a write, the end of
# a delay): the words are part of the status, and a status whose words change is patched, so
# "reachable" (the first listing) then "written" (the first write) was a patch more per start.
MANAGER_SYNCED = Verdict(
    True, Reason.SYNCED, "the Manager is reachable and no write owed to it is late"
)


class ConfigError(Exception):
    """A configuration problem; ``reason`` is the condition reason it shows as."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
