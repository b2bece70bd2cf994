"""The fleet's health state machine: pure logic over an injected monotonic clock, no I/O.

A worker is ``active`` from its last heartbeat until ``inactive_after`` has passed without one,
``inactive`` until ``offline_after``, then ``offline``; after ``forget_after`` more it is dropped.
Any heartbeat makes it active again.

Cost: active workers sit in a dict that a heartbeat moves to its end (delete and re-insert: dicts
keep insertion order), so it stays sorted by last heartbeat (O(1) per heartbeat) and its front is
the next worker to turn inactive. Inactive and
offline workers never refresh (a heartbeat makes them active), so their next deadline is exact and
lives in a heap; a worker leaving the heap just bumps its epoch and its entry is skipped when it
surfaces. A sweep therefore touches only what is due, O(log n) each.

Memory (about 0.5 KiB a worker): a slotted record per worker, two plain dicts (no OrderedDict and
its linked list), the workload kept as the compact JSON text the decoder made (a string, not a
list of dicts: it is turned back into data only for a transition or a view), and module types and
statuses shared between workers (interned by the decoder).

Time: the fleet runs on its own time, the clock minus the time spent paused. While the consumer has
lost the broker the fleet is paused; on resume every worker keeps the margin it had (a broker
outage is not a fleet outage). Times handed out (deadlines, ``last_seen``, transitions) are clock
times.
"""

from __future__ import annotations

import heapq
import itertools
import json
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

_WORST_FIRST = {WorkerState.OFFLINE: 0, WorkerState.INACTIVE: 1, WorkerState.ACTIVE: 2}


class _Worker:
    __slots__ = (
        "epoch",
        "hostname",
        "last_heartbeat_at",
        "last_seen",
        "module_type",
        "state",
        "status",
        "workload",
    )

    def __init__(
        self,
        hostname: str,
        module_type: str,
        status: str,
        workload: list[Any] | str,
        state: WorkerState,
        last_seen: float,
        last_heartbeat_at: float | None,
    ) -> None:
        self.hostname = hostname
        self.module_type = module_type
        self.status = status
        self.workload = workload  # a list, or its compact JSON text
        self.state = state
        self.last_seen = last_seen  # fleet time (the clock minus time paused)
        self.last_heartbeat_at = last_heartbeat_at  # clock time
        self.epoch = -1  # matches the worker's one live heap entry, if any


class Fleet:
    """The registry of one exchange's workers and their health."""

    def __init__(self, thresholds: Thresholds, clock: Callable[[], float]) -> None:
        self._thresholds = thresholds
        self._clock = clock
        self._workers: dict[str, _Worker] = {}
        self._active: dict[str, _Worker] = {}  # oldest heartbeat first
        self._timers: list[tuple[float, int, str]] = []  # (fleet-time deadline, epoch, hostname)
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
        worker = self._workers.get(hostname)
        return None if worker is None else self._view(worker)

    def observe(self, heartbeat: Heartbeat) -> Transition | None:
        """Record a heartbeat received now; the transition it causes, if any."""
        now, at = self._now(), self._clock()
        self._last_heartbeat_at = at
        worker = self._workers.get(heartbeat.hostname)
        if worker is None:
            worker = _Worker(
                heartbeat.hostname,
                heartbeat.module_type,
                heartbeat.status,
                _stored(heartbeat),
                WorkerState.ACTIVE,
                now,
                at,
            )
            self._add(worker)
            return Transition(
                worker.hostname,
                worker.module_type,
                None,
                WorkerState.ACTIVE,
                heartbeat.workload,
                at,
                at,
            )

        previous = worker.state
        record_changed = (worker.module_type, worker.status) != (
            heartbeat.module_type,
            heartbeat.status,
        )
        worker.module_type = heartbeat.module_type
        worker.status = heartbeat.status
        worker.workload = _stored(heartbeat)
        worker.last_seen = now
        worker.last_heartbeat_at = at
        if previous is WorkerState.ACTIVE:
            active = self._active
            del active[worker.hostname]  # to the end: the newest heartbeat
            active[worker.hostname] = worker
            if not record_changed:
                return None
        else:
            self._move(worker, WorkerState.ACTIVE)
        return Transition(
            worker.hostname,
            worker.module_type,
            previous,
            WorkerState.ACTIVE,
            heartbeat.workload,
            at,
            at,
        )

    def sweep(self, limit: int | None = None) -> list[Transition]:
        """Transitions whose threshold has passed, in the order they fell due; at most ``limit``
        (the rest stay due for the next call, so a caller can yield between batches)."""
        if self._paused_at is not None:
            return []
        now, at = self._now(), self._clock()
        transitions: list[Transition] = []
        while limit is None or len(transitions) < limit:
            active_due = self._active_deadline()
            timer_due = self._timer_deadline()
            if (
                active_due is not None
                and active_due <= now
                and (timer_due is None or active_due <= timer_due)
            ):
                worker = self._active.pop(next(iter(self._active)))
                self._move(worker, WorkerState.INACTIVE)
                transitions.append(self._transition(worker, WorkerState.ACTIVE, active_due, at))
            elif timer_due is not None and timer_due <= now:
                _, _, hostname = heapq.heappop(self._timers)
                worker = self._workers[hostname]
                if worker.state is WorkerState.INACTIVE:
                    self._move(worker, WorkerState.OFFLINE)
                    transitions.append(
                        self._transition(worker, WorkerState.INACTIVE, timer_due, at)
                    )
                else:
                    del self._workers[hostname]
                    self._counts[WorkerState.OFFLINE] -= 1
            else:
                return transitions
        return transitions

    def next_deadline(self) -> float | None:
        """The clock time at which ``sweep`` next has something to do; None if never or paused."""
        if self._paused_at is not None:
            return None
        deadlines = [
            due for due in (self._active_deadline(), self._timer_deadline()) if due is not None
        ]
        return min(deadlines) + self._paused_for if deadlines else None

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
        if existing is not None:
            if existing.last_heartbeat_at is not None:
                return False
            self._remove(existing)
        now, thresholds = self._now(), self._thresholds
        silent = silent_for or 0.0
        if shown is WorkerState.OFFLINE:
            silent = max(silent, thresholds.offline_after)
        elif shown is WorkerState.INACTIVE:
            silent = max(silent, thresholds.inactive_after)
        if existing is not None:
            silent = max(silent, now - existing.last_seen)
        if silent < thresholds.inactive_after:
            # The full threshold runs from the first time the worker was seeded, not the last.
            state = WorkerState.ACTIVE
            last_seen = existing.last_seen if existing is not None else now
        elif silent < thresholds.offline_after:
            state, last_seen = WorkerState.INACTIVE, now - silent
        else:
            state, last_seen = WorkerState.OFFLINE, now - silent
        workload = list(workload) or (_loaded(existing.workload) if existing is not None else [])
        self._add(_Worker(hostname, module_type, DEFAULT_STATUS, workload, state, last_seen, None))
        return True

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
        self._timers = []
        for worker in self._workers.values():
            if worker.state is not WorkerState.ACTIVE:
                worker.epoch = next(self._epochs)
                self._timers.append((self._timer_for(worker), worker.epoch, worker.hostname))
        heapq.heapify(self._timers)

    def snapshot(self, limit: int) -> FleetSnapshot:
        """Complete counts, and up to ``limit`` workers: worst state, then longest silent, first."""
        worst = heapq.nsmallest(
            limit,
            self._workers.values(),
            key=lambda worker: (_WORST_FIRST[worker.state], worker.last_seen, worker.hostname),
        )
        return FleetSnapshot(
            dict(self._counts), self._last_heartbeat_at, [self._view(worker) for worker in worst]
        )

    # Internals

    def _now(self) -> float:
        clock = self._paused_at if self._paused_at is not None else self._clock()
        return clock - self._paused_for

    def _add(self, worker: _Worker) -> None:
        self._workers[worker.hostname] = worker
        self._counts[worker.state] += 1
        self._place(worker)

    def _remove(self, worker: _Worker) -> None:
        del self._workers[worker.hostname]
        self._counts[worker.state] -= 1
        if worker.state is WorkerState.ACTIVE:
            del self._active[worker.hostname]
        worker.epoch = -1  # its heap entry, if any, is stale now

    def _move(self, worker: _Worker, state: WorkerState) -> None:
        self._counts[worker.state] -= 1
        self._counts[state] += 1
        worker.state = state
        worker.epoch = next(self._epochs)  # a heap entry left behind by a revived worker is stale
        self._place(worker)

    def _place(self, worker: _Worker) -> None:
        if worker.state is WorkerState.ACTIVE:
            # Its last_seen is the fleet's now, the newest of all: the end keeps the order.
            self._active[worker.hostname] = worker
        else:
            worker.epoch = next(self._epochs)
            heapq.heappush(self._timers, (self._timer_for(worker), worker.epoch, worker.hostname))

    def _timer_for(self, worker: _Worker) -> float:
        if worker.state is WorkerState.INACTIVE:
            return worker.last_seen + self._thresholds.offline_after
        return worker.last_seen + self._thresholds.offline_after + self._thresholds.forget_after

    def _active_deadline(self) -> float | None:
        if not self._active:
            return None
        oldest = next(iter(self._active.values()))
        return oldest.last_seen + self._thresholds.inactive_after

    def _timer_deadline(self) -> float | None:
        """The earliest live heap deadline, dropping entries of workers that moved on."""
        timers = self._timers
        while timers:
            deadline, epoch, hostname = timers[0]
            worker = self._workers.get(hostname)
            if worker is not None and worker.epoch == epoch:
                return deadline
            heapq.heappop(timers)
        return None

    def _transition(
        self, worker: _Worker, previous: WorkerState, due: float, at: float
    ) -> Transition:
        return Transition(
            worker.hostname,
            worker.module_type,
            previous,
            worker.state,
            _loaded(worker.workload),
            due + self._paused_for,
            at,
        )

    def _view(self, worker: _Worker) -> WorkerView:
        return WorkerView(
            worker.hostname,
            worker.module_type,
            worker.state,
            worker.last_seen + self._paused_for,
            worker.last_heartbeat_at,
            worker.status,
            _loaded(worker.workload),
        )


def _stored(heartbeat: Heartbeat) -> list[Any] | str:
    """What a worker's record keeps of its workload: the decoder's JSON text if there is one."""
    return heartbeat.workload if heartbeat.workload_json is None else heartbeat.workload_json


def _loaded(workload: list[Any] | str) -> list[Any]:
    return json.loads(workload) if isinstance(workload, str) else workload
