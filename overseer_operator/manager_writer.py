"""The Manager writer: turns worker transitions into Manager calls, in order, never losing one.

Each worker has a short queue of owed operations. A worker that comes back replaces whatever was
still owed for it (``POST active`` deletes and re-inserts its row anyway); ``inactive`` then
``offline`` stay two calls, so the Manager sees the same sequence the legacy Overseer produced. A
failed call stays at the head of its worker's queue and is retried with backoff; the consumer never
waits for the Manager. Every operation has a sequence number, so a call that completes after a
newer transition replaced its queue never removes the newer operation.

Cost: O(1) per transition and per call (a FIFO of workers with work, a running count of what is
owed), so a mass transition of 100,000 workers does not stall the event loop.

The writer belongs to the monitor and outlives sessions: ``attach`` gives it the client of the
current session; until then (and while the Manager is down) writes simply accumulate.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import weakref
import zlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from overseer_operator import defaults, metrics
from overseer_operator.backoff import Backoff
from overseer_operator.manager_client import (
    ManagerClient,
    ManagerError,
    ManagerRejected,
    ManagerUnauthorized,
)
from overseer_operator.model import Heartbeat, Reason, Transition, Verdict, WorkerState

logger = logging.getLogger(__name__)

HealthCallback = Callable[[Verdict], None]


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
    workload: list[Any] | str  # compact JSON text while owed: a fleet registering at once
    # At most three (refresh, inactive, delete): a list, not a deque (a deque is 0.6 KiB empty,
    # and a mass registration owes one per worker).
    operations: list[tuple[int, Operation]] = field(default_factory=list)
    queued: bool = False  # in the writer's FIFO of workers with work
    in_flight: bool = False


class ManagerWriter:
    def __init__(
        self,
        exchange_id: str,
        refresh_interval: float,
        clock: Callable[[], float],
        on_health: HealthCallback,
        labels: tuple[str, str],
        *,
        concurrency: int = 4,
        backoff: Backoff | None = None,
    ) -> None:
        self.refresh_interval = refresh_interval
        self._exchange_id = exchange_id
        self._clock = clock
        self._on_health = on_health
        self._labels = labels
        self._concurrency = concurrency
        self._backoff = backoff or Backoff(2.0)
        self._client: ManagerClient | None = None
        self._attached = asyncio.Event()
        self._owed: dict[str, _Owed] = {}
        self._ready: deque[str] = deque()
        self._pending = 0
        self._written_at: dict[str, float] = {}
        self._wake = asyncio.Event()
        self._sequence = itertools.count()

    @property
    def pending(self) -> int:
        """Operations owed to the Manager and not yet acknowledged by it."""
        return self._pending

    def owes(self, hostname: str) -> bool:
        """Whether a write for ``hostname`` is still owed (or in flight)."""
        owed = self._owed.get(hostname)
        return owed is not None and bool(owed.operations)

    def attach(self, client: ManagerClient) -> None:
        """Write with ``client`` from now on (a new session's credentials)."""
        self._client = client
        self._attached.set()
        self._wake.set()

    def apply(self, transition: Transition) -> None:
        """Owe the Manager whatever this transition changes."""
        owed = self._owed.get(transition.hostname)
        if owed is None:
            owed = self._owed[transition.hostname] = _Owed(
                transition.module_type, _compact(transition.workload)
            )
        owed.module_type = transition.module_type
        owed.workload = _compact(transition.workload)
        operation = _OPERATION_FOR_STATE[transition.current]
        if operation is Operation.ACTIVE:
            self._pending -= len(owed.operations)
            owed.operations.clear()
        if not owed.operations or owed.operations[-1][1] is not operation:
            owed.operations.append((next(self._sequence), operation))
            self._pending += 1
        self._queue(transition.hostname, owed)

    def observe_heartbeat(self, heartbeat: Heartbeat) -> None:
        """An active worker beat again: owe a refresh once ``refresh_interval`` has passed."""
        owed = self._owed.get(heartbeat.hostname)
        if owed is not None and owed.operations:
            owed.workload = _heartbeat_workload(heartbeat)
            return
        written_at = self._written_at.get(heartbeat.hostname)
        if written_at is not None and self._clock() - written_at < self.refresh_interval:
            return
        if owed is None:
            owed = self._owed[heartbeat.hostname] = _Owed(
                heartbeat.module_type, _heartbeat_workload(heartbeat)
            )
        owed.operations.append((next(self._sequence), Operation.ACTIVE))
        self._pending += 1
        self._queue(heartbeat.hostname, owed)

    def mark_written(self, hostname: str) -> None:
        """The Manager already holds a current record (seen at start-up): no write owed yet."""
        self._record_write(hostname)

    def _record_write(self, hostname: str) -> None:
        """The Manager now holds a current record; its next refresh is due one interval on,
        or, for a first write, after the worker's own fraction of it (see the module docs)."""
        now = self._clock()
        if hostname not in self._written_at:
            now -= self.refresh_interval * (1.0 - refresh_phase(hostname))
        self._written_at[hostname] = now

    def _queue(self, hostname: str, owed: _Owed) -> None:
        if not owed.queued and not owed.in_flight:
            owed.queued = True
            self._ready.append(hostname)
        metrics.MANAGER_PENDING.labels(*self._labels).set(self._pending)
        self._wake.set()

    async def run(self) -> None:
        """Write what is owed until cancelled, once a client is attached."""
        await self._attached.wait()
        await asyncio.gather(*(self._work() for _ in range(self._concurrency)))

    async def _work(self) -> None:
        while True:
            if not self._ready:
                self._wake.clear()
                await self._wake.wait()
                continue
            hostname = self._ready.popleft()
            owed = self._owed[hostname]
            owed.queued = False
            owed.in_flight = True
            try:
                await self._write(hostname, owed)
            finally:
                owed.in_flight = False
                if owed.operations:
                    self._queue(hostname, owed)
                elif self._owed.get(hostname) is owed:
                    del self._owed[hostname]

    async def _write(self, hostname: str, owed: _Owed) -> None:
        sequence, operation = owed.operations[0]
        try:
            async with write_slots():  # operator-wide; never held across a backoff wait
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
                self._record_write(hostname)
        # A newer transition may have replaced the queue while the call was in flight.
        if owed.operations and owed.operations[0][0] == sequence:
            del owed.operations[0]
            self._pending -= 1
        self._backoff.reset()
        metrics.MANAGER_PENDING.labels(*self._labels).set(self._pending)
        if not self._pending:
            self._on_health(
                Verdict(True, Reason.SYNCED, "every worker transition was written to the Manager")
            )

    async def _call(self, hostname: str, owed: _Owed, operation: Operation) -> None:
        assert self._client is not None, "run() waits for a client"
        if operation is Operation.DELETE:
            await self._client.delete_module(self._exchange_id, hostname)
        else:
            await self._client.upsert_module(
                self._exchange_id,
                hostname,
                owed.module_type,
                operation.value,
                json.loads(owed.workload) if isinstance(owed.workload, str) else owed.workload,
            )

    def _outcome(self, operation: Operation, outcome: str) -> None:
        metrics.MANAGER_WRITES.labels(*self._labels, operation.value, outcome).inc()

    async def _failed(self, operation: Operation, reason: Reason, message: str) -> None:
        self._outcome(operation, "failure")
        self._on_health(
            Verdict(False, reason, f"{self._pending} Manager writes pending: {message}")
        )
        await self._backoff.wait()


_write_slots: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = (
    weakref.WeakKeyDictionary()
)


def write_slots() -> asyncio.Semaphore:
    """The operator-wide bound on Manager writes in flight, whatever the number of exchanges."""
    loop = asyncio.get_running_loop()
    slots = _write_slots.get(loop)
    if slots is None:
        slots = _write_slots[loop] = asyncio.Semaphore(defaults.MANAGER_WRITE_CONCURRENCY)
    return slots


def _compact(workload: list[Any]) -> str:
    return json.dumps(workload, separators=(",", ":"), ensure_ascii=False)


def _heartbeat_workload(heartbeat: Heartbeat) -> list[Any] | str:
    return heartbeat.workload if heartbeat.workload_json is None else heartbeat.workload_json


def refresh_phase(hostname: str) -> float:
    """A fixed fraction in (0, 1] per worker, evenly spread over a fleet (from a CRC of its name,
    so it is the same after a restart)."""
    return ((zlib.crc32(hostname.encode()) & 0xFFFF) + 1) / 0x10000
