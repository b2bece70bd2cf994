"""Status conditions in the ``metav1.Condition`` shape, with Kubernetes semantics.

``lastTransitionTime`` moves only when a condition's status flips; a new reason or message alone
does not move it. The set is seeded from the resource's existing status, so an operator restart
keeps the times users already see in ``kubectl describe``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from overseer_operator.model import ConditionType, Reason, Verdict
from overseer_operator.times import format_time, parse_time


@dataclass(frozen=True, slots=True)
class Condition:
    type: str
    status: str  # "True" | "False" | "Unknown"
    reason: str
    message: str
    last_transition_time: datetime

    def as_dict(self, observed_generation: int | None) -> dict[str, Any]:
        condition: dict[str, Any] = {
            "type": self.type,
            "status": self.status,
            "reason": self.reason,
            "message": self.message,
            "lastTransitionTime": format_time(self.last_transition_time),
        }
        if observed_generation is not None:
            condition["observedGeneration"] = observed_generation
        return condition


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

    def set(self, type_: ConditionType, verdict: Verdict) -> bool:
        word = status_word(verdict.status)
        current = self._conditions.get(type_)
        if current is None or current.status != word:
            self._conditions[type_] = Condition(
                type_, word, verdict.reason, verdict.message, self._now()
            )
            return True
        if (current.reason, current.message) == (verdict.reason, verdict.message):
            return False
        self._conditions[type_] = replace(current, reason=verdict.reason, message=verdict.message)
        return True

    def as_list(self, observed_generation: int | None) -> list[dict[str, Any]]:
        order = {type_.value: index for index, type_ in enumerate(ConditionType)}
        ordered = sorted(self._conditions.values(), key=lambda c: order.get(c.type, len(order)))
        return [condition.as_dict(observed_generation) for condition in ordered]
