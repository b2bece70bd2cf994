"""Status conditions in the ``metav1.Condition`` shape, with Kubernetes semantics.

``lastTransitionTime`` moves only when a condition's status flips; a new reason or message alone
does not move it. The set is seeded from the resource's existing status, so an operator restart
keeps the times users already see in ``kubectl describe``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any


class ConditionType(StrEnum):
    READY = "Ready"
    BROKER_CONNECTED = "BrokerConnected"
    MANAGER_SYNCED = "ManagerSynced"
    WORKERS_HEALTHY = "WorkersHealthy"
    STALLED = "Stalled"


class Reason(StrEnum):
    """Every reason the operator writes; ``docs/operations.md`` explains each."""

    MONITORING = "Monitoring"
    STARTING = "Starting"
    STOPPING = "Stopping"
    # Configuration problems: a human must act (Ready=False and Stalled=True).
    INVALID_SPEC = "InvalidSpec"
    SECRET_NOT_FOUND = "SecretNotFound"
    INVALID_BROKER_URL = "InvalidBrokerUrl"
    MANAGER_UNAUTHORIZED = "ManagerUnauthorized"
    QUEUE_NOT_FOUND = "QueueNotFound"
    # Transient problems: the operator keeps retrying by itself.
    BROKER_UNREACHABLE = "BrokerUnreachable"
    MANAGER_UNREACHABLE = "ManagerUnreachable"
    # Sub-conditions.
    CONSUMING = "Consuming"
    CONNECTING = "Connecting"
    SYNCED = "Synced"
    WRITES_PENDING = "WritesPending"
    ALL_ACTIVE = "AllActive"
    NO_WORKERS = "NoWorkers"
    WORKERS_INACTIVE = "WorkersInactive"
    WORKERS_OFFLINE = "WorkersOffline"
    CONFIGURATION_VALID = "ConfigurationValid"


CONFIGURATION_REASONS = frozenset(
    {
        Reason.INVALID_SPEC,
        Reason.SECRET_NOT_FOUND,
        Reason.INVALID_BROKER_URL,
        Reason.MANAGER_UNAUTHORIZED,
        Reason.QUEUE_NOT_FOUND,
    }
)


@dataclass(frozen=True, slots=True)
class Condition:
    type: str
    status: str  # "True" | "False" | "Unknown"
    reason: str
    message: str
    last_transition_time: datetime

    def as_dict(self, observed_generation: int | None) -> dict[str, Any]:
        condition = {
            "type": self.type,
            "status": self.status,
            "reason": self.reason,
            "message": self.message,
            "lastTransitionTime": format_time(self.last_transition_time),
        }
        if observed_generation is not None:
            condition["observedGeneration"] = observed_generation
        return condition


def format_time(moment: datetime) -> str:
    """RFC 3339 in UTC with second precision, as Kubernetes writes ``metav1.Time``."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def status_word(value: bool | None) -> str:
    return "Unknown" if value is None else ("True" if value else "False")


class ConditionSet:
    """The conditions of one resource; ``set`` says whether anything visible changed."""

    def __init__(self, now: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self._now = now
        self._conditions: dict[str, Condition] = {}

    def seed(self, existing: Iterable[Mapping[str, Any]]) -> None:
        for item in existing:
            moment = parse_time(item.get("lastTransitionTime")) or self._now()
            self._conditions[item["type"]] = Condition(
                type=item["type"],
                status=item.get("status", "Unknown"),
                reason=item.get("reason") or Reason.STARTING,
                message=item.get("message", ""),
                last_transition_time=moment,
            )

    def set(self, type_: ConditionType, status: bool | None, reason: Reason, message: str) -> bool:
        word = status_word(status)
        current = self._conditions.get(type_)
        if current is None or current.status != word:
            self._conditions[type_] = Condition(type_, word, reason, message, self._now())
            return True
        if (current.reason, current.message) == (reason, message):
            return False
        self._conditions[type_] = replace(current, reason=reason, message=message)
        return True

    def get(self, type_: ConditionType) -> Condition | None:
        return self._conditions.get(type_)

    def as_list(self, observed_generation: int | None) -> list[dict[str, Any]]:
        order = {type_.value: index for index, type_ in enumerate(ConditionType)}
        ordered = sorted(self._conditions.values(), key=lambda c: order.get(c.type, len(order)))
        return [condition.as_dict(observed_generation) for condition in ordered]
