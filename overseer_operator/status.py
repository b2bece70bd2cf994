"""The MessagingExchange status: rendered from the fleet, written coalesced.

A status patch happens when something a reader cares about changes (a count, a worker's state, a
condition), at most once per ``min_interval``; heartbeat times alone are refreshed only every
``refresh_interval``. A steady fleet therefore costs one small patch per refresh interval, whatever
its size, the way the kubelet reports NodeStatus.

A monitor's first patch waits until its start has ``settled`` (at most ``start_hold``): after a
restart the status found is the best there is until the new process knows the fleet, and a patch
before that showed only the 50 workers the old status listed, then conditions changing one by
one: three or four patches an exchange, and a fleet that seemed to shrink at every restart.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Any

from overseer_operator import defaults, metrics
from overseer_operator.aiotools import wait_event
from overseer_operator.kube import KubeApi, KubeApiError
from overseer_operator.model import FleetSnapshot, WorkerState, WorkerView
from overseer_operator.times import format_time

MODULES_LIMIT = 50

HeardAt = Callable[[str], datetime | None]

logger = logging.getLogger(__name__)


def render_status(
    snapshot: FleetSnapshot,
    conditions: list[dict[str, Any]],
    observed_generation: int | None,
    monotonic_now: float,
    wall_now: datetime,
    seeded_heard_at: HeardAt = lambda hostname: None,
) -> dict[str, Any]:
    """The status subresource for a fleet snapshot (monotonic times turned into wall time).

    A worker's ``lastHeartbeatTime`` is when a heartbeat was really received; for a worker only
    seeded from before a restart it is the time its evidence proves (``seeded_heard_at``), and it
    is left out when nothing proves one: never the restart time.
    """

    def wall(moment: float) -> str:
        return format_time(wall_now - timedelta(seconds=max(0.0, monotonic_now - moment)))

    def module(worker: WorkerView) -> dict[str, Any]:
        entry = {
            "hostname": worker.hostname,
            "type": worker.module_type,
            "state": worker.state.value,
        }
        if worker.last_heartbeat_at is not None:
            entry["lastHeartbeatTime"] = wall(worker.last_heartbeat_at)
        elif (heard := seeded_heard_at(worker.hostname)) is not None:
            entry["lastHeartbeatTime"] = format_time(heard)
        return entry

    counts = {state.value: snapshot.counts.get(state, 0) for state in WorkerState}
    status: dict[str, Any] = {
        "conditions": conditions,
        "workers": {"total": snapshot.total, **counts},
        "modules": [module(worker) for worker in snapshot.workers],
    }
    if observed_generation is not None:
        status["observedGeneration"] = observed_generation
    if snapshot.last_heartbeat_at is not None:
        status["lastHeartbeatTime"] = wall(snapshot.last_heartbeat_at)
    return status


def _significant_change(old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    """Whether ``new`` differs from ``old`` in more than heartbeat times and in which active
    workers are listed. Past 50 workers the oldest-heard active ones are listed, and in a healthy
    fleet they change with every heartbeat: that was a patch every second and a half at 1,000
    workers. Both are written with the next refresh; a listed active worker that changed (its
    type, say) is written at once."""

    def split(status: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        rest = {key: value for key, value in status.items() if key != "lastHeartbeatTime"}
        listed, active = [], {}
        for module in status.get("modules", ()):
            entry = {key: value for key, value in module.items() if key != "lastHeartbeatTime"}
            if entry.get("state") == _ACTIVE:
                active[str(entry.get("hostname"))] = entry
            else:
                listed.append(entry)
        rest["modules"] = listed
        return rest, active

    (old_rest, old_active), (new_rest, new_active) = split(old), split(new)
    if old_rest != new_rest:
        return True
    return any(
        old_active[host] != new_active[host] for host in old_active.keys() & new_active.keys()
    )


_ACTIVE = WorkerState.ACTIVE.value


class StatusWriter:
    """Writes the rendered status when it changed, coalescing bursts of changes into one patch."""

    def __init__(
        self,
        kube: KubeApi,
        namespace: str,
        name: str,
        render: Callable[[], dict[str, Any]],
        *,
        min_interval: float = defaults.STATUS_MIN_INTERVAL,
        refresh_interval: float = defaults.STATUS_REFRESH_INTERVAL,
        retry_interval: float = defaults.BROKER_RETRY_INTERVAL,
        settled: Callable[[], bool] = lambda: True,
        start_hold: float = defaults.STATUS_START_HOLD,
    ) -> None:
        self._kube = kube
        self._namespace = namespace
        self._name = name
        self._render = render
        self._min_interval = min_interval
        self._refresh_interval = refresh_interval
        self._retry_interval = retry_interval
        self._settled = settled
        self._start_hold = start_hold
        self._dirty = asyncio.Event()
        # With several replicas: every patch is conditional on the owner epoch this monitor
        # took the status over with; a refused one (422) means another replica owns it now.
        self.epoch: str | None = None
        self.on_fenced: Callable[[], None] = lambda: None
        self._written: dict[str, Any] | None = None
        self._written_at = float("-inf")
        self._halted = False

    def halt(self) -> None:
        """Write nothing more (the epoch test would refuse it anyway, once a successor took the
        status over; before that, nothing may be written either)."""
        self._halted = True

    def mark_dirty(self) -> None:
        self._dirty.set()

    def _due(self, status: dict[str, Any], now: float) -> bool:
        if self._written is None:
            return True
        if _significant_change(self._written, status):
            return True
        return now - self._written_at >= self._refresh_interval and status != self._written

    async def write_if_due(self, *, fresh: bool = False) -> bool:
        """One write attempt if the status changed (with ``fresh``, heartbeat times and the
        active workers listed count too: the last status before a handover is the next owner's
        evidence); True if a patch was sent and accepted."""
        if self._halted:
            return False
        loop = asyncio.get_running_loop()
        status = self._render()
        if not (self._due(status, loop.time()) or (fresh and status != self._written)):
            return False
        labels = (self._namespace, self._name, "status")
        try:
            await self._patch(status)
        except KubeApiError as error:
            metrics.KUBERNETES_WRITES.labels(*labels, "failure").inc()
            if error.status == 404:  # the resource is being deleted: nothing left to report to
                return False
            if error.status == 422 and self.epoch is not None:
                metrics.FENCED_WRITES.labels(self._namespace, self._name).inc()
                logger.warning("Status of %s/%s fenced: %s", self._namespace, self._name, error)
                self.on_fenced()
                return False
            raise
        metrics.KUBERNETES_WRITES.labels(*labels, "success").inc()
        self._written, self._written_at = status, loop.time()
        return True

    async def _patch(self, status: dict[str, Any]) -> None:
        if self.epoch is None:
            await self._kube.patch_status(self._namespace, self._name, status)
            return
        operations: list[dict[str, Any]] = [
            {"op": "test", "path": "/status/ownerEpoch", "value": self.epoch}
        ]
        operations += [
            {"op": "add", "path": f"/status/{key}", "value": value} for key, value in status.items()
        ]
        await self._kube.json_patch_status(self._namespace, self._name, operations)

    async def _hold_until_settled(self) -> None:
        """Until ``settled()`` says so, checked at each change, or ``start_hold`` has passed."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._start_hold
        while not self._settled() and (left := deadline - loop.time()) > 0:
            await wait_event(self._dirty, left)
            self._dirty.clear()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        await self._hold_until_settled()
        checked_at = float("-inf")  # the last refresh check that found nothing to write
        while True:
            refresh_due = max(self._written_at, checked_at) + self._refresh_interval
            wait_for = max(0.0, refresh_due - loop.time())
            await wait_event(self._dirty, wait_for)
            # Let a burst of changes settle into one patch.
            await asyncio.sleep(max(0.0, self._written_at + self._min_interval - loop.time()))
            self._dirty.clear()
            try:
                if not await self.write_if_due():
                    checked_at = loop.time()  # unchanged: look again one interval later
            except KubeApiError as error:
                logger.warning(
                    "Status of %s/%s not written: %s", self._namespace, self._name, error
                )
                self._dirty.set()
                await asyncio.sleep(self._retry_interval)
