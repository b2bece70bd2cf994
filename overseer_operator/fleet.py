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

Memory (``tracemalloc``, 100,000 active workers with the benchmark's names and workloads: 347
bytes a worker, 425 before the last three points below): one record per worker, the workload in it
kept as compact JSON text (the decoder's, not a list of dicts: it is turned back into data only
for a transition or a view), and module types and statuses shared between workers (interned by
the decoder). An active worker's record is the value of its entry in the ordered dict and in no
other dict (a dict of every record by name cost 38 bytes a worker), and has no state nor epoch
(16 bytes: a silent worker's has). A record holds one float of its own, its last heartbeat's clock
time, not its last_seen as well (24 bytes; see ``_Active``).

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

# An active worker's record: (module_type, status, workload JSON, heard_at, lag). heard_at is the
# clock time of its last heartbeat and lag how far fleet time was behind the clock then, so its
# last_seen (fleet time) is heard_at - lag. The lag of every worker heard since the last pause is
# one shared float (the fleet's time paused), so a heartbeat stores one float of its own (one
# during a pause has a lag of its own: fleet time stands still). A worker only seeded has no
# heartbeat: its heard_at is its last_seen and its lag None.
_Active = tuple[str, str, str, float, float | None]
# An inactive or offline worker's record: the same, then its state and its epoch, which matches
# its one live heap entry.
_Silent = tuple[str, str, str, float, float | None, str, int]
_Record = _Active | _Silent

# States as plain strings in records (an enum member is a tracked object: it would keep its tuple
# tracked); equal to, and hashed like, the WorkerState members (a StrEnum).
_ACTIVE: str = WorkerState.ACTIVE.value
_INACTIVE: str = WorkerState.INACTIVE.value
_OFFLINE: str = WorkerState.OFFLINE.value
_STATE_OF = {state.value: state for state in WorkerState}  # not WorkerState(...): Python-level
_WORST_FIRST = {_OFFLINE: 0, _INACTIVE: 1, _ACTIVE: 2}
_NEXT = {_ACTIVE: WorkerState.INACTIVE, _INACTIVE: WorkerState.OFFLINE}  # by the thresholds


class Fleet:
    """The registry of one exchange's workers and their health."""

    def __init__(self, thresholds: Thresholds, clock: Callable[[], float]) -> None:
        self._thresholds = thresholds
        self._clock = clock
        # Active workers' records, oldest heartbeat first; the others' records by name.
        self._active: OrderedDict[str, _Active] = OrderedDict()
        self._silent: dict[str, _Silent] = {}
        # Heaps of (fleet-time deadline, epoch, hostname): inactive workers until offline,
        # offline ones until forgotten. Two heaps, so each is ordered by last_seen.
        self._timers: dict[str, list[tuple[float, int, str]]] = {_INACTIVE: [], _OFFLINE: []}
        self._epochs = itertools.count()
        self._counts = dict.fromkeys(WorkerState, 0)
        self._paused_for = 0.0
        self._paused_at: float | None = None
        self._last_heartbeat_at: float | None = None

    def __len__(self) -> int:
        return len(self._active) + len(self._silent)

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
        record = self._record(hostname)
        return None if record is None else self._view(hostname, record)

    def standing(self, hostname: str) -> tuple[WorkerState, float | None] | None:
        """A worker's state and the clock time of its last heartbeat (None: only seeded), without
        decoding its record as ``get`` does: a restart reads 100,000 rows against the fleet."""
        record = self._record(hostname)
        return None if record is None else (_STATE_OF[_state(record)], _last_heartbeat_at(record))

    def active_record(self, hostname: str) -> tuple[str, str] | None:
        """An active worker's module type and workload (compact JSON text): what a Manager
        refresh writes, read when its turn comes (see ``ManagerWriter``). None if not active."""
        record = self._active.get(hostname)
        return None if record is None else (record[0], record[2])

    def observe(self, heartbeat: Heartbeat) -> Transition | None:
        """Record a heartbeat received now; the transition it causes, if any."""
        at = self._clock()
        self._last_heartbeat_at = at
        hostname, module_type, status = heartbeat.hostname, heartbeat.module_type, heartbeat.status
        record = (module_type, status, _stored(heartbeat), at, self._lag(at))
        active = self._active.get(hostname)
        if active is not None:
            self._active.move_to_end(hostname)  # the newest heartbeat
            self._active[hostname] = record
            if (active[0], active[1]) == (module_type, status):
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
        silent = self._silent.pop(hostname, None)
        previous: WorkerState | None = None
        if silent is not None:
            previous = _STATE_OF[silent[5]]
            self._counts[previous] -= 1
        self._place(hostname, record, _ACTIVE)
        if silent is not None:
            self._drop_stale(silent[5])  # its entry in the heap it left is stale now
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
            if state == _OFFLINE:
                _, _, hostname = heapq.heappop(self._timers[state])
                del self._silent[hostname]
                self._counts[WorkerState.OFFLINE] -= 1
                continue
            if state == _ACTIVE:
                hostname, record = self._active.popitem(last=False)
            else:
                _, _, hostname = heapq.heappop(self._timers[state])
                record = self._silent[hostname][:5]
            transitions.append(self._move(hostname, record, state, due, at))
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
        existing = self._record(hostname)
        if existing is not None and existing[4] is not None:
            return False
        now, thresholds = self._now(), self._thresholds
        silent = silent_for or 0.0
        if shown is WorkerState.OFFLINE:
            silent = max(silent, thresholds.offline_after)
        elif shown is WorkerState.INACTIVE:
            silent = max(silent, thresholds.inactive_after)
        if existing is not None:
            silent = max(silent, now - existing[3])  # only seeded: heard_at is its last_seen
        if silent < thresholds.inactive_after:
            # The full threshold runs from the first time the worker was seeded, not the last.
            state = _ACTIVE
            last_seen = existing[3] if existing is not None else now
        elif silent < thresholds.offline_after:
            state, last_seen = _INACTIVE, now - silent
        else:
            state, last_seen = _OFFLINE, now - silent
        listed = list(workload)
        stored = _compact(listed) if listed else existing[2] if existing is not None else "[]"
        record: _Active = (module_type, DEFAULT_STATUS, stored, last_seen, None)
        if state == _ACTIVE and hostname in self._active:
            # Still active since its first seed: its place in the active order (by last_seen,
            # which has not changed) is kept; at the end, it would be swept after newer ones.
            self._active[hostname] = record
            return True
        if existing is not None:
            self._remove(hostname)
        self._place(hostname, record, state)
        return True

    def forget(self, hostname: str) -> None:
        """Drop a worker without a verdict (the operator's own row, when it hands over)."""
        self._remove(hostname)

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
        for hostname, record in list(self._silent.items()):
            self._counts[_STATE_OF[record[5]]] -= 1
            self._place(hostname, record[:5], record[5])

    def snapshot(self, limit: int) -> FleetSnapshot:
        """Complete counts, and up to ``limit`` workers: worst state, then longest silent, first.

        O(limit) in the usual case, whatever the fleet's size: each state's workers are already
        ordered by last_seen (a heap each, the active ones by heartbeat), so only the worst few
        are looked at.
        """
        silent: list[str] = []
        for state in (_OFFLINE, _INACTIVE):
            silent += self._earliest(state, limit - len(silent))
        views = [self._view(hostname, self._silent[hostname]) for hostname in silent]
        for hostname, record in itertools.islice(self._active.items(), limit - len(silent)):
            views.append(self._view(hostname, record))
        return FleetSnapshot(dict(self._counts), self._last_heartbeat_at, views)

    # Internals

    def _now(self) -> float:
        clock = self._paused_at if self._paused_at is not None else self._clock()
        return clock - self._paused_for

    def _lag(self, at: float) -> float:
        """How far fleet time is behind the clock time ``at`` (now). Not paused, the time paused
        so far: the same float for every heartbeat until the next pause."""
        if self._paused_at is None:
            return self._paused_for
        return at - self._now()  # frozen: a heartbeat during a pause counts from the resume

    def _record(self, hostname: str) -> _Record | None:
        active = self._active.get(hostname)
        return active if active is not None else self._silent.get(hostname)

    def _place(self, hostname: str, record: _Active, state: str) -> None:
        """Store ``record`` in ``state``, count it, and queue its next deadline."""
        if state == _ACTIVE:
            # Its last_seen is the fleet's now, the newest of all: the end keeps the order.
            self._active[hostname] = record
        else:
            # A new epoch: a heap entry left behind by a revived worker is stale now.
            epoch = next(self._epochs)
            deadline = self._timer_for(state, _last_seen(record))
            heapq.heappush(self._timers[state], (deadline, epoch, hostname))
            self._silent[hostname] = (*record, state, epoch)
        self._counts[_STATE_OF[state]] += 1

    def _remove(self, hostname: str) -> None:
        if self._active.pop(hostname, None) is not None:
            self._counts[WorkerState.ACTIVE] -= 1
            return
        record = self._silent.pop(hostname, None)  # its heap entry, if any, is stale now
        if record is not None:
            self._counts[_STATE_OF[record[5]]] -= 1
            self._drop_stale(record[5])

    def _move(
        self, hostname: str, record: _Active, previous: str, due: float, at: float
    ) -> Transition:
        """Turn a worker that is out of ``_active`` and the heap into its next state."""
        state = _NEXT[previous]
        self._counts[_STATE_OF[previous]] -= 1
        self._place(hostname, record, state.value)
        return Transition(
            hostname,
            record[0],
            _STATE_OF[previous],
            state,
            json.loads(record[2]),
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
            oldest = _last_seen(next(iter(self._active.values())))
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
        record = self._silent.get(entry[2])
        return record is not None and record[6] == entry[1]

    def _view(self, hostname: str, record: _Record) -> WorkerView:
        return WorkerView(
            hostname,
            record[0],
            _STATE_OF[_state(record)],
            _last_seen(record) + self._paused_for,
            _last_heartbeat_at(record),
            record[1],
            json.loads(record[2]),
        )


def _state(record: _Record) -> str:
    """A worker's state: only a silent worker's record holds one."""
    return _ACTIVE if len(record) == 5 else record[5]


def _last_seen(record: _Record) -> float:
    """A worker's last_seen, in fleet time."""
    heard_at, lag = record[3], record[4]
    return heard_at if lag is None else heard_at - lag


def _last_heartbeat_at(record: _Record) -> float | None:
    """The clock time of a worker's last heartbeat; None if it was only seeded."""
    return None if record[4] is None else record[3]


def _stored(heartbeat: Heartbeat) -> str:
    """What a worker's record keeps of its workload: the decoder's JSON text if there is one."""
    if heartbeat.workload_json is not None:
        return heartbeat.workload_json
    return _compact(heartbeat.workload)


def _compact(workload: list[Any]) -> str:
    return json.dumps(workload, separators=(",", ":"), ensure_ascii=False)
