"""The Manager writer: turns worker transitions into Manager calls, in order, never losing one.

Each worker has a short queue of owed operations. A worker that comes back replaces whatever was
still owed for it (``POST active`` deletes and re-inserts its row anyway); ``inactive`` then
``offline`` stay two calls, so the Manager sees the same sequence the legacy Overseer produced. A
failed call stays at the head of its worker's queue and is retried with backoff; the consumer never
waits for the Manager. Every operation has a sequence number, so a call that completes after a
newer transition replaced its queue never removes the newer operation.

Cost: O(1) per transition and per call (a FIFO of workers with work, a running count of what is
owed), so a mass transition of 100,000 workers does not stall the event loop. What is owed for a
worker is a plain tuple of strings and ints (operations as strings, not enum members, which are
tracked objects), replaced on every change: CPython stops tracking such tuples, so the full
collections a mass transition triggers do not scan 100,000 owed records (see ``fleet``).

How late the writes are is part of the record. A restarted operator reads the age of an
``active`` row as its worker's silence minus one ``refreshInterval``; that holds only while every
owed write reaches the Manager promptly. So the writer reports ``ManagerSynced=False`` (reason
``ManagerBehind``) once a write has been owed for ``MANAGER_WRITE_LATENESS_ALLOWED`` (a Manager
slower than the fleet's refreshes, a mass registration), and ``True`` again once nothing owed is
older than half that: the next process counts no row's age past the moment it went ``False``
(see ``seeding``). The queue is oldest first (a write put back keeps its place at the head), so
the lateness is the age of its head or of a write in flight.

Transitions go before refreshes. A transition (a registration, ``inactive``, a DELETE) changes what
the Manager shows; a refresh only renews the date of a row that is already right. So they wait in
two lines, and the transitions' line is always served first; a worker with a refresh waiting that
makes a transition moves to the transitions' line. A refresh waiting in line holds nothing but its
place: what it writes (the worker's module type and newest workload) is read from the fleet when its
turn comes (``active_record``). A fleet far behind on its refreshes (100,000 workers owe 333 a
second at the default interval) would otherwise keep a record per worker: 331 bytes each, measured
with ``tracemalloc``, against 104 for a place in line. Across the operator, refreshes may hold at
most ``MANAGER_WRITE_CONCURRENCY - MANAGER_WRITE_SLOTS_FOR_TRANSITIONS`` of the write slots, so a
hundred exchanges behind on their refreshes still leave room for another exchange's verdicts, and
a slot that comes free goes to a waiting transition of any exchange before any refresh.

The writer belongs to the monitor and outlives sessions: ``attach`` gives it the client of the
current session; until then (and while the Manager is down) writes simply accumulate.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import weakref
import zlib
from collections import deque
from collections.abc import Callable
from typing import Any, Literal

from overseer_operator import defaults, metrics
from overseer_operator.aiotools import LoopSemaphores, PrioritySlots, loop_semaphore, per_loop
from overseer_operator.backoff import Backoff
from overseer_operator.manager_client import (
    ManagerClient,
    ManagerError,
    ManagerRejected,
    ManagerUnauthorized,
)
from overseer_operator.model import (
    MANAGER_SYNCED,
    Heartbeat,
    Reason,
    Transition,
    Verdict,
    WorkerState,
)

logger = logging.getLogger(__name__)

HealthCallback = Callable[[Verdict], None]


Operation = Literal["active", "inactive", "delete"]  # a row's status, or its deletion

_OPERATION_FOR_STATE: dict[WorkerState, Operation] = {
    WorkerState.ACTIVE: "active",
    WorkerState.INACTIVE: "inactive",
    WorkerState.OFFLINE: "delete",
}


# What is owed for a worker: (module_type, workload as compact JSON text, operations), the
# operations (sequence, operation) oldest first, at most three (refresh, inactive, delete).
_Owed = tuple[str, str, tuple[tuple[int, Operation], ...]]


class ManagerWriter:
    def __init__(
        self,
        exchange_id: str,
        refresh_interval: float,
        clock: Callable[[], float],
        on_health: HealthCallback,
        labels: tuple[str, str],
        *,
        active_record: Callable[[str], tuple[str, str] | None],
        concurrency: int = 4,
        backoff: Backoff | None = None,
        lateness_allowed: float = defaults.MANAGER_WRITE_LATENESS_ALLOWED,
    ) -> None:
        self.refresh_interval = refresh_interval
        self._exchange_id = exchange_id
        self._clock = clock
        self._on_health = on_health
        self._labels = labels
        self._active_record = active_record
        self._concurrency = concurrency
        self._backoff = backoff or Backoff(2.0)
        self._client: ManagerClient | None = None
        self._attached = asyncio.Event()
        self._owed: dict[str, _Owed] = {}
        self._ready: deque[str] = deque()  # workers with a transition owed, oldest first
        # In _ready, with the time their write became owed. A dict, not a set: a dict of strings
        # and floats is untracked by the garbage collector, a set is traversed entry by entry by
        # every collection (a mass transition queues 100,000).
        self._queued: dict[str, float] = {}
        # The same for workers owed only a refresh, which have no entry in _owed while they wait.
        # A worker moved to _ready leaves its name in _refreshes (a deque cannot drop from the
        # middle), skipped once it comes up.
        self._refreshes: deque[str] = deque()
        self._refresh_queued: dict[str, float] = {}
        self._in_flight: dict[str, float] = {}
        self._lateness_allowed = lateness_allowed
        self._behind = False
        self._pending = 0
        self._written_at: dict[str, float] = {}
        self._wake = asyncio.Event()
        self._sequence = itertools.count()
        self._halted = False

    @property
    def pending(self) -> int:
        """Operations owed to the Manager and not yet acknowledged by it."""
        return self._pending

    def lateness(self) -> float:
        """How long the oldest write still owed has waited, in seconds (0.0: none is owed)."""
        oldest = min(self._in_flight.values(), default=None)
        for line, queued in ((self._ready, self._queued), (self._refreshes, self._refresh_queued)):
            head = queued.get(line[0]) if line else None
            if head is not None:
                oldest = head if oldest is None else min(oldest, head)
        return 0.0 if oldest is None else max(0.0, self._clock() - oldest)

    def observe_lateness(self) -> float:
        """``lateness()``, also exported as ``overseer_manager_write_lateness_seconds``."""
        lateness = self.lateness()
        metrics.MANAGER_WRITE_LATENESS.labels(*self._labels).set(lateness)
        return lateness

    def owes(self, hostname: str) -> bool:
        """Whether a write for ``hostname`` is still owed (or in flight)."""
        if hostname in self._refresh_queued:
            return True
        owed = self._owed.get(hostname)
        return owed is not None and bool(owed[2])

    def halt(self) -> None:
        """Start no Manager call from now on (one already sent may still land): another replica
        may own the exchange. What is owed stays owed, for nobody: the next owner derives its
        writes from the evidence again."""
        self._halted = True
        self._wake.set()

    def attach(self, client: ManagerClient) -> None:
        """Write with ``client`` from now on (a new session's credentials)."""
        self._client = client
        self._attached.set()
        self._wake.set()

    def apply(self, transition: Transition) -> None:
        """Owe the Manager whatever this transition changes."""
        owed = self._owed.get(transition.hostname)
        operations = () if owed is None else owed[2]
        if transition.hostname in self._refresh_queued:  # already counted in _pending
            operations = self._refresh_operation()
        operation = _OPERATION_FOR_STATE[transition.current]
        if operation == "active":
            self._pending -= len(operations)
            operations = ()
        if not operations or operations[-1][1] != operation:
            operations += ((next(self._sequence), operation),)
            self._pending += 1
        self._owed[transition.hostname] = (
            transition.module_type,
            _compact(transition.workload),
            operations,
        )
        self._queue(transition.hostname)

    def observe_heartbeat(self, heartbeat: Heartbeat) -> None:
        """An active worker beat again: owe a refresh once ``refresh_interval`` has passed."""
        hostname = heartbeat.hostname
        owed = self._owed.get(hostname)
        if owed is not None and owed[2]:
            self._owed[hostname] = (owed[0], _heartbeat_workload(heartbeat), owed[2])
            return
        if hostname in self._refresh_queued:
            return  # it writes the newest record when its turn comes
        written_at = self._written_at.get(hostname)
        if written_at is not None and self._clock() - written_at < self.refresh_interval:
            return
        self._pending += 1
        if hostname in self._in_flight or hostname in self._queued:
            # Its turn is taken already (a write in flight, or forgotten while in line): the
            # refresh rides on its record, queued again after that write.
            refresh = self._refresh_operation()
            self._owed[hostname] = (heartbeat.module_type, _heartbeat_workload(heartbeat), refresh)
            return
        self._queue(hostname, refresh=True)

    def retire(self, hostname: str) -> None:
        """Owe a DELETE of ``hostname``'s row, and nothing else: the row is not a worker's (see
        ``FleetTracker.peers``), so no ``inactive`` comes first."""
        self._drop_refresh(hostname)
        owed = self._owed.get(hostname)
        if owed is not None:
            self._pending -= len(owed[2])
        self._owed[hostname] = ("", "[]", ((next(self._sequence), "delete"),))
        self._pending += 1
        self._written_at.pop(hostname, None)
        self._queue(hostname)

    def forget(self, hostname: str) -> None:
        """Owe nothing more for ``hostname`` (a call already in flight still completes)."""
        self._drop_refresh(hostname)
        owed = self._owed.get(hostname)
        if owed is not None:
            self._pending -= len(owed[2])
            self._owed[hostname] = (owed[0], owed[1], ())
        metrics.MANAGER_PENDING.labels(*self._labels).set(self._pending)
        self._written_at.pop(hostname, None)

    def _refresh_operation(self) -> tuple[tuple[int, Operation], ...]:
        """The operations of a refresh given a record: one ``POST active``."""
        return ((next(self._sequence), "active"),)

    def _drop_refresh(self, hostname: str) -> None:
        """Owe no more the refresh ``hostname`` waits in line for (its name stays in the deque,
        skipped when it comes up)."""
        if self._refresh_queued.pop(hostname, None) is not None:
            self._pending -= 1

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

    def _queue(
        self, hostname: str, owed_since: float | None = None, *, refresh: bool = False
    ) -> None:
        """Put ``hostname`` in line: a ``refresh`` in the refreshes' line, anything else in the
        transitions' line (leaving the refreshes' line, its age kept); at the end, or, for a
        write put back (``owed_since``), at the head, which keeps the line oldest first."""
        if hostname in self._in_flight or hostname in self._queued:
            pass
        elif refresh:
            if hostname not in self._refresh_queued:
                self._refresh_queued[hostname] = self._clock()
                self._refreshes.append(hostname)
        elif owed_since is not None:
            self._queued[hostname] = owed_since
            self._ready.appendleft(hostname)
        else:
            waited = self._refresh_queued.pop(hostname, None)
            self._queued[hostname] = self._clock() if waited is None else waited
            self._ready.append(hostname)
        metrics.MANAGER_PENDING.labels(*self._labels).set(self._pending)
        self._wake.set()
        if not self._behind and self.lateness() > self._lateness_allowed:
            self._report_lateness()

    async def run(self) -> None:
        """Write what is owed until cancelled, once a client is attached."""
        await self._attached.wait()
        await asyncio.gather(*(self._work() for _ in range(self._concurrency)))

    async def _work(self) -> None:
        while not self._halted:
            if self._ready:
                hostname, refresh = self._ready.popleft(), False
                owed_since = self._queued.pop(hostname)
            elif self._refreshes:
                hostname, refresh = self._refreshes.popleft(), True
                waited = self._refresh_queued.pop(hostname, None)
                if waited is None:  # moved to the transitions' line meanwhile, or forgotten
                    continue
                record = self._active_record(hostname)
                if record is None:  # not active any more: what it owes came as a transition
                    self._pending -= 1
                    self._report_lateness()
                    continue
                self._owed[hostname] = (*record, self._refresh_operation())
                owed_since = waited
            else:
                self._wake.clear()
                await self._wake.wait()
                continue
            self._in_flight[hostname] = owed_since
            try:
                done = await self._write(hostname, refresh)
            finally:
                del self._in_flight[hostname]
                if self._owed[hostname][2]:
                    self._queue(hostname, owed_since)
                else:
                    del self._owed[hostname]
            if done:
                self._report_lateness()

    async def _write(self, hostname: str, refresh: bool) -> bool:
        """Make the call owed first for ``hostname``; whether it is done with (written, or
        refused for good) rather than still owed."""
        module_type, workload, operations = self._owed[hostname]
        if not operations:  # forgotten while queued
            return False
        sequence, operation = operations[0]
        try:
            # Operator-wide slots, never held across a backoff wait.
            async with (
                refresh_slots() if refresh else contextlib.nullcontext(),
                write_slots().slot(urgent=not refresh),
            ):
                if self._halted:  # while waiting for a slot
                    return False
                await self._call(hostname, module_type, workload, operation)
        except ManagerRejected as error:
            if error.status == 404 and operation != "delete":
                await self._failed(operation, Reason.MANAGER_UNREACHABLE, str(error))
                return False
            # The Manager will never accept this record (e.g. 400): retrying cannot help.
            logger.error("Manager refused %s for %s, dropped: %s", operation, hostname, error)
            self._outcome(operation, "rejected")
        except ManagerUnauthorized as error:
            await self._failed(operation, Reason.MANAGER_UNAUTHORIZED, str(error))
            return False
        except ManagerError as error:
            await self._failed(operation, Reason.MANAGER_UNREACHABLE, str(error))
            return False
        else:
            self._outcome(operation, "success")
            if operation == "delete":
                self._written_at.pop(hostname, None)
            else:
                self._record_write(hostname)
        # A newer transition may have replaced the queue while the call was in flight.
        module_type, workload, operations = self._owed[hostname]
        if operations and operations[0][0] == sequence:
            self._owed[hostname] = (module_type, workload, operations[1:])
            self._pending -= 1
        self._backoff.reset()
        metrics.MANAGER_PENDING.labels(*self._labels).set(self._pending)
        return True

    def _report_lateness(self) -> None:
        """After a write, or when the head of the line grew too old: ``ManagerBehind`` past the
        allowance, ``Synced`` once caught up (nothing owed, or nothing owed for long)."""
        lateness, allowed = self.observe_lateness(), self._lateness_allowed
        if not self._pending:
            self._behind = False
            self._on_health(MANAGER_SYNCED)
        elif lateness > allowed:
            if not self._behind:
                self._behind = True
                self._on_health(
                    Verdict(
                        False,
                        Reason.MANAGER_BEHIND,
                        f"{self._pending} Manager writes pending, the oldest for {lateness:.0f} s "
                        f"(more than {allowed:.0f} s): rows in the Manager may be stale",
                    )
                )
        elif self._behind and lateness <= allowed / 2:
            self._behind = False
            self._on_health(MANAGER_SYNCED)

    async def _call(
        self, hostname: str, module_type: str, workload: str, operation: Operation
    ) -> None:
        assert self._client is not None, "run() waits for a client"
        if operation == "delete":
            await self._client.delete_module(self._exchange_id, hostname)
        else:
            await self._client.upsert_module(
                self._exchange_id, hostname, module_type, operation, json.loads(workload)
            )

    def _outcome(self, operation: Operation, outcome: str) -> None:
        metrics.MANAGER_WRITES.labels(*self._labels, operation, outcome).inc()

    async def _failed(self, operation: Operation, reason: Reason, message: str) -> None:
        self._outcome(operation, "failure")
        self._on_health(
            Verdict(False, reason, f"{self._pending} Manager writes pending: {message}")
        )
        await self._backoff.wait()


_write_slots: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, PrioritySlots] = (
    weakref.WeakKeyDictionary()
)
_refresh_slots: LoopSemaphores = weakref.WeakKeyDictionary()


def write_slots() -> PrioritySlots:
    """The operator-wide bound on Manager writes in flight, whatever the number of exchanges;
    transitions (``urgent``) are handed a slot before any refresh waiting for one."""
    return per_loop(_write_slots, lambda: PrioritySlots(defaults.MANAGER_WRITE_CONCURRENCY))


def refresh_slots() -> asyncio.Semaphore:
    """The share of those slots refreshes may hold (taken before a write slot): the rest stays
    free for transitions."""
    return loop_semaphore(
        _refresh_slots,
        defaults.MANAGER_WRITE_CONCURRENCY - defaults.MANAGER_WRITE_SLOTS_FOR_TRANSITIONS,
    )


def _compact(workload: list[Any]) -> str:
    return json.dumps(workload, separators=(",", ":"), ensure_ascii=False)


def _heartbeat_workload(heartbeat: Heartbeat) -> str:
    if heartbeat.workload_json is not None:
        return heartbeat.workload_json
    return _compact(heartbeat.workload)


def refresh_phase(hostname: str) -> float:
    """A fixed fraction in (0, 1] per worker, evenly spread over a fleet (from a CRC of its name,
    so it is the same after a restart)."""
    return ((zlib.crc32(hostname.encode()) & 0xFFFF) + 1) / 0x10000
