"""The Manager writer: turns worker transitions into Manager calls, in order, never losing one.

Each worker has a short queue of owed operations. A worker that comes back replaces whatever was
still owed for it (``POST active`` deletes and re-inserts its row anyway); ``inactive`` then
``offline`` stay two calls, so the Manager sees the same sequence the legacy Overseer produced. A
failed call stays at the head of its worker's queue and is retried with backoff; the consumer never
waits for the Manager.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from overseer_operator import metrics
from overseer_operator.conditions import Reason
from overseer_operator.fleet import Transition, WorkerState
from overseer_operator.heartbeat import Heartbeat
from overseer_operator.manager_client import (
    ManagerClient,
    ManagerError,
    ManagerRejected,
    ManagerUnauthorized,
)

logger = logging.getLogger(__name__)

HealthCallback = Callable[[bool, Reason, str], None]


class Operation(StrEnum):
    ACTIVE = "active"
    INACTIVE = "inactive"
    DELETE = "delete"


_OPERATION_FOR_STATE = {
    WorkerState.ACTIVE: Operation.ACTIVE,
    WorkerState.INACTIVE: Operation.INACTIVE,
    WorkerState.OFFLINE: Operation.DELETE,
}


@dataclass(slots=True)
class _Owed:
    module_type: str
    workload: list[Any] = field(default_factory=list)
    operations: deque[Operation] = field(default_factory=deque)


class ManagerWriter:
    def __init__(
        self,
        client: ManagerClient | None,
        exchange_id: str,
        refresh_interval: float,
        clock: Callable[[], float],
        on_health: HealthCallback,
        labels: tuple[str, str],
        *,
        concurrency: int = 4,
        max_backoff: float = 60.0,
    ) -> None:
        self.client = client
        self.refresh_interval = refresh_interval
        self._exchange_id = exchange_id
        self._clock = clock
        self._on_health = on_health
        self._labels = labels
        self._concurrency = concurrency
        self._max_backoff = max_backoff
        self._owed: OrderedDict[str, _Owed] = OrderedDict()
        self._in_flight: set[str] = set()
        self._written_at: dict[str, float] = {}
        self._wake = asyncio.Event()
        self._failures = 0

    @property
    def pending(self) -> int:
        return sum(len(owed.operations) for owed in self._owed.values())

    def apply(self, transition: Transition, workload: list[Any] | None = None) -> None:
        """Owe the Manager whatever this transition changes.

        ``workload`` is the worker's last known one, for transitions no heartbeat came with.
        """
        operation = _OPERATION_FOR_STATE[transition.current]
        owed = self._owed.get(transition.hostname)
        if owed is None:
            owed = self._owed[transition.hostname] = _Owed(transition.module_type)
        owed.module_type = transition.module_type
        if transition.heartbeat is not None:
            owed.workload = list(transition.heartbeat.workload)
        elif workload is not None:
            owed.workload = list(workload)
        if operation is Operation.ACTIVE:
            owed.operations.clear()
        if not owed.operations or owed.operations[-1] is not operation:
            owed.operations.append(operation)
        self._changed()

    def observe_heartbeat(self, heartbeat: Heartbeat) -> None:
        """An active worker beat again: owe a refresh once ``refresh_interval`` has passed."""
        owed = self._owed.get(heartbeat.hostname)
        if owed is not None and owed.operations:
            owed.workload = list(heartbeat.workload)
            return
        written_at = self._written_at.get(heartbeat.hostname)
        if written_at is not None and self._clock() - written_at < self.refresh_interval:
            return
        self._owed[heartbeat.hostname] = _Owed(
            heartbeat.module_type, list(heartbeat.workload), deque([Operation.ACTIVE])
        )
        self._changed()

    def mark_written(self, hostname: str) -> None:
        """The Manager already holds a current record (seen at start-up): no write owed yet."""
        self._written_at[hostname] = self._clock()

    def _changed(self) -> None:
        metrics.MANAGER_PENDING.labels(*self._labels).set(self.pending)
        self._wake.set()

    def _next(self) -> str | None:
        for hostname, owed in self._owed.items():
            if owed.operations and hostname not in self._in_flight:
                return hostname
        return None

    async def run(self) -> None:
        """Write what is owed, with ``client``, until cancelled."""
        assert self.client is not None, "a session gives the writer its client before running it"
        await asyncio.gather(*(self._work() for _ in range(self._concurrency)))

    async def _work(self) -> None:
        while True:
            hostname = self._next()
            if hostname is None:
                self._wake.clear()
                await self._wake.wait()
                continue
            self._in_flight.add(hostname)
            try:
                await self._write(hostname)
            finally:
                self._in_flight.discard(hostname)
                self._wake.set()

    async def _write(self, hostname: str) -> None:
        owed = self._owed[hostname]
        operation = owed.operations[0]
        try:
            await self._call(hostname, owed, operation)
        except ManagerRejected as error:
            if error.status == 404 and operation is not Operation.DELETE:
                await self._failed(operation, Reason.MANAGER_UNREACHABLE, str(error))
                return
            # The Manager will never accept this record (e.g. 400): retrying cannot help.
            logger.error("Manager refused %s for %s, dropped: %s", operation, hostname, error)
            self._outcome(operation, "rejected")
        except ManagerUnauthorized as error:
            await self._failed(operation, Reason.MANAGER_UNAUTHORIZED, str(error))
            return
        except ManagerError as error:
            await self._failed(operation, Reason.MANAGER_UNREACHABLE, str(error))
            return
        else:
            self._outcome(operation, "success")
            if operation is Operation.DELETE:
                self._written_at.pop(hostname, None)
            else:
                self._written_at[hostname] = self._clock()
        # A newer transition may have replaced the queue while the call was in flight.
        if owed.operations and owed.operations[0] is operation:
            owed.operations.popleft()
        if not owed.operations and self._owed.get(hostname) is owed:
            del self._owed[hostname]
        self._failures = 0
        metrics.MANAGER_PENDING.labels(*self._labels).set(self.pending)
        if not self.pending:
            self._on_health(
                True, Reason.SYNCED, "every worker transition was written to the Manager"
            )

    async def _call(self, hostname: str, owed: _Owed, operation: Operation) -> None:
        assert self.client is not None
        if operation is Operation.DELETE:
            await self.client.delete_module(self._exchange_id, hostname)
        else:
            await self.client.upsert_module(
                self._exchange_id, hostname, owed.module_type, operation.value, owed.workload
            )

    def _outcome(self, operation: Operation, outcome: str) -> None:
        metrics.MANAGER_WRITES.labels(*self._labels, operation.value, outcome).inc()

    async def _failed(self, operation: Operation, reason: Reason, message: str) -> None:
        self._outcome(operation, "failure")
        self._failures += 1
        self._on_health(False, reason, f"{self.pending} Manager writes pending: {message}")
        backoff = min(self._max_backoff, 2.0 ** min(self._failures, 10))
        await asyncio.sleep(random.uniform(backoff / 2, backoff))
