"""The fleet's health state machine: pure logic over an injected monotonic clock, no I/O.

A worker is ``active`` from its last heartbeat until ``inactive_after`` has passed without one,
``inactive`` until ``offline_after``, then ``offline``; after ``forget_after`` more it is dropped.
Any heartbeat makes it active again.

Cost: active workers sit in an ``OrderedDict`` that a heartbeat moves to its end, so it stays
sorted by last heartbeat (O(1) per heartbeat) and its front is the next worker to turn inactive.
Not a plain dict: taking entries off a dict's front leaves deleted slots that every later
``next(iter(d))`` walks again, which made a mass transition quadratic (100,000 workers took 10 s
to turn inactive instead of 0.1 s); the linked list costs about 53 bytes a worker. Inactive and
offline workers never refresh (a heartbeat makes them active), so their next deadline is exact and
lives in a heap; a worker leaving the heap just bumps its epoch and its entry is skipped when it
surfaces. A sweep therefore touches only what is due, O(log n) each.

Memory (about 0.5 KiB a worker): one record per worker, one plain dict and the ordered one, the
workload kept as compact JSON text (the decoder's, not a list of dicts: it is turned back into data
only for a transition or a view), and module types and statuses shared between workers (interned
by the decoder).

Garbage collection: a worker's record is a plain tuple of strings and numbers (its state as the
plain string), replaced on every change, never mutated. CPython stops tracking such a tuple at the
first collection it survives, so the cyclic garbage collector never scans the fleet. With an
object per worker, every full collection (which a mass transition triggers, several times) walked
all of them: at 100,000 workers, about half of a 100 ms event-loop stall.

Time: the fleet runs on its own time, the clock minus the time spent paused. While the consumer has
lost the broker the fleet is paused; on resume every worker keeps the margin it had (a broker
outage is not a fleet outage). Times handed out (deadlines, ``last_seen``, transitions) are clock
times.
"""

from __future__ import annotations

import heapq
import itertools
import json
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

from overseer_operator.model import (
    DEFAULT_STATUS,
    FleetSnapshot,
    Heartbeat,
    Thresholds,
    Transition,
    WorkerState,
    WorkerView,
)

# A worker's record: (module_type, status, workload JSON, state, last_seen, last_heartbeat_at,
# epoch). last_seen is fleet time (the clock minus time paused), last_heartbeat_at clock time (None
# if only seeded); epoch matches the worker's one live heap entry (-1 while active: no entry).
_Record = tuple[str, str, str, str, float, float | None, int]

# States as plain strings in records (an enum member is a tracked object: it would keep its tuple
# tracked); equal to, and hashed like, the WorkerState members (a StrEnum).
_ACTIVE: str = WorkerState.ACTIVE.value
_INACTIVE: str = WorkerState.INACTIVE.value
_OFFLINE: str = WorkerState.OFFLINE.value
_STATE_OF = {state.value: state for state in WorkerState}  # not WorkerState(...): Python-level
_WORST_FIRST = {_OFFLINE: 0, _INACTIVE: 1, _ACTIVE: 2}


class Fleet:
    """The registry of one exchange's workers and their health."""

    def __init__(self, thresholds: Thresholds, clock: Callable[[], float]) -> None:
        self._thresholds = thresholds
        self._clock = clock
        self._workers: dict[str, _Record] = {}
        # Active workers' last_seen, oldest first.
        self._active: OrderedDict[str, float] = OrderedDict()
        # Heaps of (fleet-time deadline, epoch, hostname): inactive workers until offline,
        # offline ones until forgotten. Two heaps, so each is ordered by last_seen.
        self._timers: dict[str, list[tuple[float, int, str]]] = {_INACTIVE: [], _OFFLINE: []}
        self._epochs = itertools.count()
        self._counts = dict.fromkeys(WorkerState, 0)
        self._paused_for = 0.0
        self._paused_at: float | None = None
        self._last_heartbeat_at: float | None = None

    def __len__(self) -> int:
        return len(self._workers)

    @property
    def thresholds(self) -> Thresholds:
        return self._thresholds

    @property
    def counts(self) -> dict[WorkerState, int]:
        return dict(self._counts)

    @property
    def paused(self) -> bool:
        return self._paused_at is not None

    def get(self, hostname: str) -> WorkerView | None:
        record = self._workers.get(hostname)
        return None if record is None else self._view(hostname, record)

    def standing(self, hostname: str) -> tuple[WorkerState, float | None] | None:
        """A worker's state and the clock time of its last heartbeat (None: only seeded), without
        decoding its record as ``get`` does: a restart reads 100,000 rows against the fleet."""
        record = self._workers.get(hostname)
        return None if record is None else (_STATE_OF[record[3]], record[5])

    def active_record(self, hostname: str) -> tuple[str, str] | None:
        """An active worker's module type and workload (compact JSON text): what a Manager
        refresh writes, read when its turn comes (see ``ManagerWriter``). None if not active."""
        record = self._workers.get(hostname)
        return None if record is None or record[3] != _ACTIVE else (record[0], record[2])

    def observe(self, heartbeat: Heartbeat) -> Transition | None:
        """Record a heartbeat received now; the transition it causes, if any."""
        now, at = self._now(), self._clock()
        self._last_heartbeat_at = at
        hostname, module_type, status = heartbeat.hostname, heartbeat.module_type, heartbeat.status
        record = self._workers.get(hostname)
        stored = _stored(heartbeat)
        previous: WorkerState | None = None
        if record is not None:
            if record[3] == _ACTIVE:
                self._active.move_to_end(hostname)  # the newest heartbeat
                self._active[hostname] = now
                self._workers[hostname] = (module_type, status, stored, _ACTIVE, now, at, -1)
                if (record[0], record[1]) == (module_type, status):
                    return None
                return Transition(
                    hostname,
                    module_type,
                    WorkerState.ACTIVE,
                    WorkerState.ACTIVE,
                    heartbeat.workload,
                    at,
                    at,
                )
            previous = _STATE_OF[record[3]]
            self._counts[previous] -= 1
        self._place(hostname, (module_type, status, stored, _ACTIVE, now, at, -1))
        if record is not None:
            self._drop_stale(record[3])  # its entry in the heap it left is stale now
        return Transition(
            hostname, module_type, previous, WorkerState.ACTIVE, heartbeat.workload, at, at
        )

    def sweep(self, limit: int | None = None) -> list[Transition]:
        """Transitions whose threshold has passed, in the order they fell due; at most ``limit``
        (the rest stay due for the next call, so a caller can yield between batches)."""
        if self._paused_at is not None:
            return []
        now, at = self._now(), self._clock()
        transitions: list[Transition] = []
        while limit is None or len(transitions) < limit:
            deadlines = self._deadlines()
            if not deadlines:
                return transitions
            due, state = min(deadlines)
            if due > now:
                return transitions
            if state == _ACTIVE:
                hostname, _ = self._active.popitem(last=False)
                transitions.append(self._move(hostname, WorkerState.INACTIVE, due, at))
            else:
                _, _, hostname = heapq.heappop(self._timers[state])
                if state == _INACTIVE:
                    transitions.append(self._move(hostname, WorkerState.OFFLINE, due, at))
                else:
                    del self._workers[hostname]
                    self._counts[WorkerState.OFFLINE] -= 1
        return transitions

    def next_deadline(self) -> float | None:
        """The clock time at which ``sweep`` next has something to do; None if never or paused."""
        if self._paused_at is not None:
            return None
        earliest = min(self._deadlines(), default=None)
        return None if earliest is None else earliest[0] + self._paused_for

    def seed(
        self,
        hostname: str,
        module_type: str,
        shown: WorkerState,
        silent_for: float | None,
        workload: Iterable[Any] = (),
    ) -> bool:
        """Register a worker known from before a restart (a Manager row, the resource's status).

        ``shown`` is the state that record shows; ``silent_for`` is a lower bound of how long the
        worker has provably been silent, None without proof. Without proof of ``inactive_after``
        the worker gets a full threshold to report (from now, in fleet time); with it, it takes the
        state its silence earns. Never a better state than the one shown: without a heartbeat
        nobody comes back. A worker seeded twice keeps the stronger evidence; a worker already
        heard is left alone (False). The writers are not told: what the records show versus what
        the fleet now says is for the caller to settle, once verdicts may be given.
        """
        existing = self._workers.get(hostname)
        if existing is not None and existing[5] is not None:
            return False
        now, thresholds = self._now(), self._thresholds
        silent = silent_for or 0.0
        if shown is WorkerState.OFFLINE:
            silent = max(silent, thresholds.offline_after)
        elif shown is WorkerState.INACTIVE:
            silent = max(silent, thresholds.inactive_after)
        if existing is not None:
            silent = max(silent, now - existing[4])
        if silent < thresholds.inactive_after:
            # The full threshold runs from the first time the worker was seeded, not the last.
            state = _ACTIVE
            last_seen = existing[4] if existing is not None else now
        elif silent < thresholds.offline_after:
            state, last_seen = _INACTIVE, now - silent
        else:
            state, last_seen = _OFFLINE, now - silent
        listed = list(workload)
        stored = _compact(listed) if listed else existing[2] if existing is not None else "[]"
        record = (module_type, DEFAULT_STATUS, stored, state, last_seen, None, -1)
        if existing is not None and existing[3] == _ACTIVE and state == _ACTIVE:
            # Still active since its first seed: its place in the active order (by last_seen,
            # which has not changed) is kept; at the end, it would be swept after newer ones.
            self._workers[hostname] = record
            return True
        if existing is not None:
            self._remove(hostname, existing)
        self._place(hostname, record)
        return True

    def forget(self, hostname: str) -> None:
        """Drop a worker without a verdict (the operator's own row, when it hands over)."""
        record = self._workers.get(hostname)
        if record is not None:
            self._remove(hostname, record)

    def pause(self) -> None:
        """Stop the fleet's time: nothing turns inactive or offline until ``resume``."""
        if self._paused_at is None:
            self._paused_at = self._clock()

    def resume(self) -> None:
        """Restart the fleet's time, shifting every worker's last_seen by the pause."""
        if self._paused_at is not None:
            self._paused_for += self._clock() - self._paused_at
            self._paused_at = None

    def set_thresholds(self, thresholds: Thresholds) -> None:
        """Apply new thresholds; states only move forward, so a longer threshold revives nobody."""
        self._thresholds = thresholds
        self._timers = {_INACTIVE: [], _OFFLINE: []}
        for hostname, record in list(self._workers.items()):
            if record[3] != _ACTIVE:
                self._counts[_STATE_OF[record[3]]] -= 1
                self._place(hostname, record)

    def snapshot(self, limit: int) -> FleetSnapshot:
        """Complete counts, and up to ``limit`` workers: worst state, then longest silent, first.

        O(limit) in the usual case, whatever the fleet's size: each state's workers are already
        ordered by last_seen (a heap each, the active ones by heartbeat), so only the worst few
        are looked at.
        """
        worst: list[str] = []
        for state in (_OFFLINE, _INACTIVE):
            worst += self._earliest(state, limit - len(worst))
        worst += itertools.islice(self._active, limit - len(worst))
        return FleetSnapshot(
            dict(self._counts),
            self._last_heartbeat_at,
            [self._view(hostname, self._workers[hostname]) for hostname in worst],
        )

    # Internals

    def _now(self) -> float:
        clock = self._paused_at if self._paused_at is not None else self._clock()
        return clock - self._paused_for

    def _place(self, hostname: str, record: _Record) -> None:
        """Store ``record`` (epoch aside), count it, and queue its next deadline."""
        module_type, status, workload, state, last_seen, last_heartbeat_at, _ = record
        epoch = -1
        if state == _ACTIVE:
            # Its last_seen is the fleet's now, the newest of all: the end keeps the order.
            self._active[hostname] = last_seen
        else:
            # A new epoch: a heap entry left behind by a revived worker is stale now.
            epoch = next(self._epochs)
            heapq.heappush(
                self._timers[state], (self._timer_for(state, last_seen), epoch, hostname)
            )
        self._workers[hostname] = (
            module_type,
            status,
            workload,
            state,
            last_seen,
            last_heartbeat_at,
            epoch,
        )
        self._counts[_STATE_OF[state]] += 1

    def _remove(self, hostname: str, record: _Record) -> None:
        del self._workers[hostname]  # its heap entry, if any, is stale now
        self._counts[_STATE_OF[record[3]]] -= 1
        if record[3] == _ACTIVE:
            del self._active[hostname]
        else:
            self._drop_stale(record[3])

    def _move(self, hostname: str, state: WorkerState, due: float, at: float) -> Transition:
        """Turn a worker that is out of ``_active`` and the heap into ``state``, by the rules."""
        module_type, status, workload, previous, last_seen, last_heartbeat_at, _ = self._workers[
            hostname
        ]
        self._counts[_STATE_OF[previous]] -= 1
        self._place(
            hostname,
            (module_type, status, workload, state.value, last_seen, last_heartbeat_at, -1),
        )
        return Transition(
            hostname,
            module_type,
            _STATE_OF[previous],
            state,
            json.loads(workload),
            due + self._paused_for,
            at,
        )

    def _timer_for(self, state: str, last_seen: float) -> float:
        if state == _INACTIVE:
            return last_seen + self._thresholds.offline_after
        return last_seen + self._thresholds.offline_after + self._thresholds.forget_after

    def _deadlines(self) -> list[tuple[float, str]]:
        """Each state's next deadline, with the state (the active first on a tie)."""
        deadlines = []
        if self._active:
            oldest = next(iter(self._active.values()))
            deadlines.append((oldest + self._thresholds.inactive_after, _ACTIVE))
        for state, timers in self._timers.items():
            while timers and not self._live(timers[0]):
                heapq.heappop(timers)  # left behind by a worker that moved on
            if timers:
                deadlines.append((timers[0][0], state))
        return deadlines

    def _earliest(self, state: str, count: int) -> list[str]:
        """Up to ``count`` workers in ``state`` with the earliest deadlines, in order: a walk of
        its heap from the root, best first, skipping stale entries."""
        timers, found = self._timers[state], list[str]()
        frontier = [(timers[0], 0)] if timers and count > 0 else []
        while frontier and len(found) < count:
            entry, index = heapq.heappop(frontier)
            if self._live(entry):
                found.append(entry[2])
            for child in (2 * index + 1, 2 * index + 2):
                if child < len(timers):
                    heapq.heappush(frontier, (timers[child], child))
        return found

    def _drop_stale(self, state: str) -> None:
        """Rebuild a heap once stale entries outnumber live ones (O(1) amortized): they would
        otherwise linger until due, and slow the walk of ``_earliest``."""
        timers = self._timers.get(state)
        if timers is not None and len(timers) > 2 * self._counts[_STATE_OF[state]] + 64:
            live = [entry for entry in timers if self._live(entry)]
            heapq.heapify(live)
            self._timers[state] = live

    def _live(self, entry: tuple[float, int, str]) -> bool:
        """Whether a heap entry is its worker's current one (not left behind by a change)."""
        record = self._workers.get(entry[2])
        return record is not None and record[6] == entry[1]

    def _view(self, hostname: str, record: _Record) -> WorkerView:
        module_type, status, workload, state, last_seen, last_heartbeat_at, _ = record
        return WorkerView(
            hostname,
            module_type,
            _STATE_OF[state],
            last_seen + self._paused_for,
            last_heartbeat_at,
            status,
            json.loads(workload),
        )


def _stored(heartbeat: Heartbeat) -> str:
    """What a worker's record keeps of its workload: the decoder's JSON text if there is one."""
    if heartbeat.workload_json is not None:
        return heartbeat.workload_json
    return _compact(heartbeat.workload)


def _compact(workload: list[Any]) -> str:
    return json.dumps(workload, separators=(",", ":"), ensure_ascii=False)
