"""Kubernetes Events for worker transitions, rate-limited and posted off the hot path.

A fleet-wide incident must not turn into an Event storm: at most ``capacity`` Events per minute
per exchange, and within a ``budget`` shared by every exchange of the operator; what is held back
is summed up in one Event once the buckets refill.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

from overseer_operator import defaults, metrics
from overseer_operator.kube import KubeApi, KubeApiError
from overseer_operator.model import Thresholds, Transition, WorkerState
from overseer_operator.ratelimit import RateLimiter
from overseer_operator.times import format_duration

logger = logging.getLogger(__name__)

_REASONS = {
    WorkerState.ACTIVE: ("Normal", "WorkerActive"),
    WorkerState.INACTIVE: ("Warning", "WorkerInactive"),
    WorkerState.OFFLINE: ("Warning", "WorkerOffline"),
}


def describe_transition(transition: Transition, thresholds: Thresholds) -> str:
    worker = f"worker {transition.hostname} ({transition.module_type})"
    if transition.current is WorkerState.ACTIVE:
        return f"{worker} is active" + ("" if transition.previous is None else " again")
    silent = (
        thresholds.inactive_after
        if transition.current is WorkerState.INACTIVE
        else thresholds.offline_after
    )
    return f"{worker} is {transition.current.value}: no heartbeat for {format_duration(silent)}"


class EventRecorder:
    def __init__(
        self,
        kube: KubeApi,
        involved: Mapping[str, Any],
        *,
        capacity: int = defaults.EVENTS_PER_MINUTE,
        per_seconds: float = 60.0,
        budget: RateLimiter | None = None,
    ) -> None:
        self._kube = kube
        self._involved = dict(involved)
        self._labels = (involved["namespace"], involved["name"], "event")
        self._limiter = RateLimiter(capacity, per_seconds, asyncio.get_running_loop().time)
        self._budget = budget
        self._queue: asyncio.Queue[tuple[str, str, str]] = asyncio.Queue(maxsize=capacity * 2)
        self._token_period = per_seconds / capacity

    def record(self, transition: Transition, thresholds: Thresholds) -> None:
        if not self._limiter.allow():
            return
        if self._budget is not None and not self._budget.allow():
            self._limiter.suppressed += 1  # summed up in this exchange's next Event
            return
        event_type, reason = _REASONS[transition.current]
        self._enqueue(event_type, reason, describe_transition(transition, thresholds))
        self._sum_up_suppressed()

    def _sum_up_suppressed(self) -> None:
        suppressed = self._limiter.take_suppressed()
        if suppressed:
            self._enqueue(
                "Warning",
                "TransitionsSuppressed",
                f"{suppressed} more worker transitions were not posted as Events (rate limit); "
                "see the resource status and the operator metrics",
            )

    def _sum_up_once_refilled(self) -> None:
        """After a burst nothing may follow: the summary goes out once a token is back."""
        if not self._limiter.suppressed:
            return
        if self._limiter.allow():
            self._sum_up_suppressed()
        else:
            self._limiter.suppressed -= 1  # that check was not a transition held back

    def _enqueue(self, event_type: str, reason: str, message: str) -> None:
        try:
            self._queue.put_nowait((event_type, reason, message))
        except asyncio.QueueFull:
            self._limiter.suppressed += 1

    async def run(self) -> None:
        while True:
            try:
                event_type, reason, message = await asyncio.wait_for(
                    self._queue.get(), self._token_period
                )
            except TimeoutError:
                self._sum_up_once_refilled()
                continue
            try:
                await self._kube.create_event(self._involved, event_type, reason, message)
            except KubeApiError as error:
                metrics.KUBERNETES_WRITES.labels(*self._labels, "failure").inc()
                logger.warning("Event %s not posted: %s", reason, error)
            else:
                metrics.KUBERNETES_WRITES.labels(*self._labels, "success").inc()
