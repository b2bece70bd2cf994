"""The fleet's health state machine, driven by a fake clock (and once by looptime)."""

from __future__ import annotations

import asyncio
import gc
import json
import sys
import tracemalloc
from types import FrameType
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from overseer_operator.fleet import Fleet
from overseer_operator.model import Heartbeat, Thresholds, Transition, WorkerState
from tests.fakes import FakeClock

ACTIVE, INACTIVE, OFFLINE = WorkerState.ACTIVE, WorkerState.INACTIVE, WorkerState.OFFLINE
T0 = 1000.0
DEFAULT = Thresholds(inactive_after=600, offline_after=1200, forget_after=3600)


def beat(hostname: str, module_type: str = "builder", status: str = "active") -> Heartbeat:
    """A heartbeat as the decoder makes it: the workload also as compact JSON text."""
    workload = [{"description": f"work of {hostname}"}]
    return Heartbeat(
        hostname, module_type, status, workload, json.dumps(workload, separators=(",", ":"))
    )


def moves(transitions: list[Transition]) -> list[tuple[str, WorkerState | None, WorkerState]]:
    return [(t.hostname, t.previous, t.current) for t in transitions]


def state(fleet: Fleet, hostname: str) -> WorkerState | None:
    view = fleet.get(hostname)
    return None if view is None else view.state


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture
def fleet(clock: FakeClock) -> Fleet:
    return Fleet(DEFAULT, clock)


# Heartbeats and thresholds


def test_a_new_worker_becomes_active(fleet: Fleet) -> None:
    heartbeat = beat("w1")
    transition = fleet.observe(heartbeat)
    assert transition == Transition("w1", "builder", None, ACTIVE, heartbeat.workload, T0, T0)
    assert len(fleet) == 1
    view = fleet.get("w1")
    assert view is not None
    assert (view.state, view.last_seen, view.last_heartbeat_at) == (ACTIVE, T0, T0)
    assert view.workload == [{"description": "work of w1"}]


def test_thresholds_fire_exactly(fleet: Fleet, clock: FakeClock) -> None:
    fleet.observe(beat("w1"))
    assert fleet.next_deadline() == T0 + 600
    clock.advance(599)
    assert fleet.sweep() == []
    assert state(fleet, "w1") is ACTIVE

    clock.advance(1)
    [inactive] = fleet.sweep()
    assert (inactive.previous, inactive.current, inactive.due_at, inactive.at) == (
        ACTIVE, INACTIVE, T0 + 600, T0 + 600,
    )  # fmt: skip
    assert inactive.workload == beat("w1").workload
    assert state(fleet, "w1") is INACTIVE
    assert fleet.next_deadline() == T0 + 1200

    clock.advance(599)
    assert fleet.sweep() == []
    clock.advance(1)
    assert moves(fleet.sweep()) == [("w1", INACTIVE, OFFLINE)]
    assert state(fleet, "w1") is OFFLINE
    assert fleet.sweep() == []


def test_a_heartbeat_keeps_an_active_worker_active(fleet: Fleet, clock: FakeClock) -> None:
    fleet.observe(beat("w1"))
    clock.advance(500)
    assert fleet.observe(beat("w1")) is None
    assert fleet.next_deadline() == T0 + 500 + 600
    clock.advance(599)
    assert fleet.sweep() == []
    clock.advance(1)
    assert moves(fleet.sweep()) == [("w1", ACTIVE, INACTIVE)]


def test_a_refreshed_worker_does_not_delay_a_silent_one(fleet: Fleet, clock: FakeClock) -> None:
    fleet.observe(beat("chatty"))
    clock.advance(10)
    fleet.observe(beat("silent"))
    clock.advance(290)
    fleet.observe(beat("chatty"))
    assert fleet.next_deadline() == T0 + 610
    clock.now = T0 + 610
    assert moves(fleet.sweep()) == [("silent", ACTIVE, INACTIVE)]
    assert fleet.next_deadline() == T0 + 900


def test_a_changed_type_or_status_rewrites_an_active_worker(fleet: Fleet) -> None:
    fleet.observe(beat("w1"))
    assert fleet.observe(beat("w1")) is None
    assert moves([fleet.observe(beat("w1", module_type="deployer"))]) == [("w1", ACTIVE, ACTIVE)]
    assert moves([fleet.observe(beat("w1", "deployer", "draining"))]) == [("w1", ACTIVE, ACTIVE)]
    view = fleet.get("w1")
    assert view is not None
    assert (view.module_type, view.status) == ("deployer", "draining")


@pytest.mark.parametrize(("silence", "previous"), [(700, INACTIVE), (1300, OFFLINE)])
def test_a_heartbeat_brings_a_worker_back(
    fleet: Fleet, clock: FakeClock, silence: float, previous: WorkerState
) -> None:
    fleet.observe(beat("w1"))
    clock.advance(silence)
    fleet.sweep()
    assert state(fleet, "w1") is previous

    transition = fleet.observe(beat("w1"))
    assert transition is not None
    assert (transition.previous, transition.current) == (previous, ACTIVE)
    assert transition.due_at == transition.at == clock.now
    # The deadline it had before coming back is void: only a new silence counts.
    assert fleet.next_deadline() == clock.now + 600
    clock.advance(599)
    assert fleet.sweep() == []
    assert state(fleet, "w1") is ACTIVE
    clock.advance(1)
    assert moves(fleet.sweep()) == [("w1", ACTIVE, INACTIVE)]


def test_a_long_silence_emits_inactive_then_offline(fleet: Fleet, clock: FakeClock) -> None:
    fleet.observe(beat("w1"))
    clock.advance(5000)
    inactive, offline = fleet.sweep()
    assert (inactive.previous, inactive.current, inactive.due_at) == (ACTIVE, INACTIVE, T0 + 600)
    assert (offline.previous, offline.current, offline.due_at) == (INACTIVE, OFFLINE, T0 + 1200)
    assert inactive.at == offline.at == T0 + 5000
    assert inactive.at - inactive.due_at == 4400  # how late it was detected


def test_transitions_come_in_the_order_they_fell_due(fleet: Fleet, clock: FakeClock) -> None:
    fleet.observe(beat("a"))
    clock.advance(10)
    fleet.observe(beat("b"))
    clock.advance(700)
    fleet.observe(beat("c"))
    clock.advance(1300)
    transitions = fleet.sweep()
    assert moves(transitions) == [
        ("a", ACTIVE, INACTIVE),
        ("b", ACTIVE, INACTIVE),
        ("a", INACTIVE, OFFLINE),
        ("b", INACTIVE, OFFLINE),
        ("c", ACTIVE, INACTIVE),
        ("c", INACTIVE, OFFLINE),
    ]
    due = [t.due_at for t in transitions]
    assert due == sorted(due)


def test_an_offline_worker_is_forgotten(fleet: Fleet, clock: FakeClock) -> None:
    fleet.observe(beat("w1"))
    clock.advance(1200)
    fleet.sweep()
    assert fleet.next_deadline() == T0 + 1200 + 3600
    clock.advance(3599)
    assert fleet.sweep() == []
    assert state(fleet, "w1") is OFFLINE
    clock.advance(1)
    assert fleet.sweep() == []  # no transition: it just leaves the registry
    assert fleet.get("w1") is None
    assert len(fleet) == 0
    assert fleet.next_deadline() is None
    assert fleet.snapshot(10).counts == {ACTIVE: 0, INACTIVE: 0, OFFLINE: 0}


def test_a_forgotten_worker_that_returns_is_new(fleet: Fleet, clock: FakeClock) -> None:
    fleet.observe(beat("w1"))
    clock.advance(10_000)
    fleet.sweep()
    assert moves([fleet.observe(beat("w1"))]) == [("w1", None, ACTIVE)]


def test_thresholds_are_validated() -> None:
    for inactive_after, offline_after in [(0, 10), (600, 600), (600, 300), (-1, 5)]:
        with pytest.raises(ValueError):
            Thresholds(inactive_after, offline_after)
    with pytest.raises(ValueError):
        Thresholds(1, 2, forget_after=-1)


# Restart seeding


def test_seeding_without_evidence_gives_a_full_threshold(fleet: Fleet, clock: FakeClock) -> None:
    assert fleet.seed("w1", "builder", ACTIVE, None, [{"description": "old"}])
    assert fleet.seed("w2", "builder", ACTIVE, 599)  # not proof enough
    for hostname in ("w1", "w2"):
        view = fleet.get(hostname)
        assert view is not None
        assert (view.state, view.last_seen, view.last_heartbeat_at) == (ACTIVE, T0, None)
    assert fleet.get("w1").workload == [{"description": "old"}]  # type: ignore[union-attr]
    assert fleet.next_deadline() == T0 + 600
    clock.advance(599)
    assert fleet.sweep() == []
    clock.advance(1)
    [first, second] = fleet.sweep()
    assert (first.hostname, first.current, first.workload) == (
        "w1",
        INACTIVE,
        [{"description": "old"}],
    )
    assert (second.hostname, second.current) == ("w2", INACTIVE)


def test_seeding_a_worker_proven_inactive(fleet: Fleet, clock: FakeClock) -> None:
    assert fleet.seed("w1", "builder", ACTIVE, 700)
    assert state(fleet, "w1") is INACTIVE
    assert fleet.next_deadline() == T0 + 500  # offline once 1200 s of silence are proven
    clock.advance(500)
    assert moves(fleet.sweep()) == [("w1", INACTIVE, OFFLINE)]


def test_seeding_a_worker_proven_offline(fleet: Fleet) -> None:
    assert fleet.seed("w1", "builder", ACTIVE, 1300)
    assert state(fleet, "w1") is OFFLINE
    assert fleet.next_deadline() == T0 - 1300 + 1200 + 3600


def test_seeding_keeps_what_the_record_shows_when_it_agrees(fleet: Fleet) -> None:
    assert fleet.seed("w1", "builder", INACTIVE, 900)
    assert fleet.seed("w2", "builder", OFFLINE, 1500)
    assert (state(fleet, "w1"), state(fleet, "w2")) == (INACTIVE, OFFLINE)


def test_a_record_shown_inactive_is_proof_of_inactivity(fleet: Fleet, clock: FakeClock) -> None:
    """Without a heartbeat nobody comes back: a row shown inactive stays at least inactive (two
    restarts in a row once re-POSTed a dead worker as active)."""
    assert fleet.seed("w1", "builder", INACTIVE, None)
    assert state(fleet, "w1") is INACTIVE
    assert fleet.next_deadline() == T0 + 600  # offline 600 s later, as if just turned inactive
    assert fleet.seed("w2", "builder", OFFLINE, 10)
    assert state(fleet, "w2") is OFFLINE


def test_seeding_twice_keeps_the_stronger_evidence(fleet: Fleet, clock: FakeClock) -> None:
    """The status is read first, the Manager's rows next: the longer proven silence wins."""
    assert fleet.seed("w1", "builder", ACTIVE, 100)  # from the status: no proof enough
    assert state(fleet, "w1") is ACTIVE
    assert fleet.seed("w1", "builder", ACTIVE, 1300)  # the Manager's updated_at is older
    assert state(fleet, "w1") is OFFLINE
    assert fleet.seed("w1", "builder", ACTIVE, None)  # weaker evidence changes nothing
    assert state(fleet, "w1") is OFFLINE
    assert fleet.counts == {ACTIVE: 0, INACTIVE: 0, OFFLINE: 1}


def test_seeding_again_without_proof_does_not_extend_the_threshold(
    fleet: Fleet, clock: FakeClock
) -> None:
    """The Manager's rows are read every few minutes: a worker never heard of must still expire
    one threshold after it was first seeded, not one threshold after the last reading."""
    assert fleet.seed("quiet", "builder", ACTIVE, None)
    for _ in range(5):
        clock.advance(100)
        assert fleet.seed("quiet", "builder", ACTIVE, None)
    clock.advance(100)
    assert moves(fleet.sweep()) == [("quiet", ACTIVE, INACTIVE)]


def test_seeding_never_regresses_a_worker_already_heard(fleet: Fleet, clock: FakeClock) -> None:
    fleet.observe(beat("w1"))
    clock.advance(5)
    assert not fleet.seed("w1", "deployer", OFFLINE, 5000)
    view = fleet.get("w1")
    assert view is not None
    assert (view.state, view.module_type, view.last_seen) == (ACTIVE, "builder", T0)


def test_standing_tells_a_seeded_worker_from_one_heard(fleet: Fleet, clock: FakeClock) -> None:
    """What a restart's seeding asks of every row, without decoding the worker's record."""
    fleet.seed("seeded", "builder", INACTIVE, 900)
    clock.advance(5)
    fleet.observe(beat("heard"))
    assert fleet.standing("seeded") == (INACTIVE, None)
    assert fleet.standing("heard") == (ACTIVE, T0 + 5)
    assert fleet.standing("unknown") is None


def test_a_heartbeat_revives_a_seeded_worker(fleet: Fleet, clock: FakeClock) -> None:
    fleet.seed("w1", "builder", INACTIVE, 900)
    transition = fleet.observe(beat("w1"))
    assert transition is not None
    assert (transition.previous, transition.current) == (INACTIVE, ACTIVE)
    clock.advance(599)
    assert fleet.sweep() == []  # the seeded offline deadline (T0 + 300) no longer applies


# Broker outages


def test_a_pause_flips_nobody_and_keeps_each_margin(fleet: Fleet, clock: FakeClock) -> None:
    fleet.observe(beat("w1"))
    clock.advance(500)
    fleet.pause()
    assert fleet.paused
    assert fleet.next_deadline() is None
    clock.advance(3000)
    fleet.pause()  # idempotent: the pause still started at T0 + 500
    assert fleet.sweep() == []
    assert state(fleet, "w1") is ACTIVE

    fleet.resume()
    fleet.resume()  # idempotent
    assert not fleet.paused
    view = fleet.get("w1")
    assert view is not None
    assert (view.last_seen, view.last_heartbeat_at) == (T0 + 3000, T0)  # shifted; the real time
    assert fleet.next_deadline() == T0 + 3600  # the 100 s it had left
    clock.advance(99)
    assert fleet.sweep() == []
    clock.advance(1)
    [transition] = fleet.sweep()
    assert (transition.current, transition.due_at) == (INACTIVE, T0 + 3600)


def test_a_pause_also_holds_inactive_workers(fleet: Fleet, clock: FakeClock) -> None:
    fleet.observe(beat("w1"))
    clock.advance(700)
    fleet.sweep()
    fleet.pause()
    clock.advance(10_000)
    fleet.resume()
    assert fleet.next_deadline() == T0 + 1200 + 10_000
    assert fleet.sweep() == []
    assert state(fleet, "w1") is INACTIVE


def test_a_heartbeat_during_a_pause_counts_from_the_resume(fleet: Fleet, clock: FakeClock) -> None:
    fleet.observe(beat("w1"))
    fleet.pause()
    clock.advance(100)
    fleet.observe(beat("w2"))
    clock.advance(100)
    fleet.resume()
    assert fleet.next_deadline() == T0 + 200 + 600  # w1: its full margin was kept
    assert fleet.get("w2").last_heartbeat_at == T0 + 100  # type: ignore[union-attr]
    clock.advance(600)
    assert moves(fleet.sweep()) == [("w1", ACTIVE, INACTIVE), ("w2", ACTIVE, INACTIVE)]


def test_workers_heard_before_during_and_after_pauses_keep_their_times(
    fleet: Fleet, clock: FakeClock
) -> None:
    """A record keeps its heartbeat's clock time and how far fleet time lagged it, shared by every
    worker heard between two pauses (one heard during a pause has its own)."""
    fleet.observe(beat("w1"))
    clock.advance(100)
    fleet.pause()
    clock.advance(50)
    fleet.observe(beat("w2"))  # counts from the resume: fleet time stands at T0 + 100
    clock.advance(50)
    fleet.resume()
    clock.advance(10)
    fleet.observe(beat("w3"))
    clock.advance(10)
    fleet.pause()
    clock.advance(100)
    fleet.resume()  # 200 s paused in all

    def times(hostname: str) -> tuple[float, float | None]:
        view = fleet.get(hostname)
        assert view is not None
        return view.last_seen, view.last_heartbeat_at

    assert [times(hostname) for hostname in ("w1", "w2", "w3")] == [
        (T0 + 200, T0),
        (T0 + 300, T0 + 150),
        (T0 + 310, T0 + 210),
    ]
    assert fleet.standing("w2") == (ACTIVE, T0 + 150)
    assert fleet.next_deadline() == T0 + 800
    clock.now = T0 + 905
    assert moves(fleet.sweep()) == [("w1", ACTIVE, INACTIVE), ("w2", ACTIVE, INACTIVE)]
    assert times("w2") == (T0 + 300, T0 + 150)  # the same once silent
    clock.now = T0 + 1505
    assert [(t.hostname, t.current, t.due_at) for t in fleet.sweep()] == [
        ("w3", INACTIVE, T0 + 910),
        ("w1", OFFLINE, T0 + 1400),
        ("w2", OFFLINE, T0 + 1500),
    ]


# Threshold changes


def test_shorter_thresholds_apply_at_once(fleet: Fleet, clock: FakeClock) -> None:
    fleet.observe(beat("w1"))
    clock.advance(700)
    fleet.sweep()
    fleet.observe(beat("w2"))
    clock.advance(400)
    fleet.set_thresholds(Thresholds(300, 800))
    assert fleet.thresholds == Thresholds(300, 800)
    assert moves(fleet.sweep()) == [("w1", INACTIVE, OFFLINE), ("w2", ACTIVE, INACTIVE)]
    assert fleet.next_deadline() == T0 + 700 + 800


def test_longer_thresholds_delay_but_revive_nobody(fleet: Fleet, clock: FakeClock) -> None:
    fleet.observe(beat("w1"))
    clock.advance(700)
    fleet.sweep()
    fleet.set_thresholds(Thresholds(900, 1800))
    assert state(fleet, "w1") is INACTIVE
    assert fleet.next_deadline() == T0 + 1800
    clock.advance(1099)
    assert fleet.sweep() == []
    clock.advance(1)
    assert moves(fleet.sweep()) == [("w1", INACTIVE, OFFLINE)]


# Snapshots


def test_snapshot_lists_the_worst_first_with_complete_counts(
    fleet: Fleet, clock: FakeClock
) -> None:
    for hostname in ("off-old", "off-new", "act-old", "act-new"):
        fleet.observe(beat(hostname))
        clock.advance(1)
    clock.now = T0 + 1201
    fleet.observe(beat("in-old"))
    clock.advance(1)
    fleet.observe(beat("in-new"))
    clock.advance(1)
    fleet.seed("seeded", "builder", ACTIVE, None)
    clock.now = T0 + 1801
    fleet.observe(beat("act-old"))
    clock.advance(1)
    fleet.observe(beat("act-new"))
    newest = clock.now
    clock.advance(10)
    fleet.sweep()

    snapshot = fleet.snapshot(limit=4)
    assert snapshot.counts == {ACTIVE: 2, INACTIVE: 3, OFFLINE: 2}
    assert snapshot.total == 7
    assert snapshot.last_heartbeat_at == newest
    assert [(w.hostname, w.state) for w in snapshot.workers] == [
        ("off-old", OFFLINE),
        ("off-new", OFFLINE),
        ("in-old", INACTIVE),
        ("in-new", INACTIVE),
    ]
    full = fleet.snapshot(limit=100)
    assert [w.hostname for w in full.workers][4:] == ["seeded", "act-old", "act-new"]
    assert fleet.snapshot(limit=0).workers == []


def test_an_empty_fleet_has_no_deadline_and_no_heartbeat(fleet: Fleet) -> None:
    assert fleet.next_deadline() is None
    assert fleet.sweep() == []
    snapshot = fleet.snapshot(10)
    assert (snapshot.total, snapshot.last_heartbeat_at, snapshot.workers) == (0, None, [])


# Cost at scale


class OperationCounter:
    """Counts Python-level events (calls and executed lines) in every frame while active.

    The collector is off meanwhile: a collection would run the finalizers of other tests'
    garbage (aiohttp's objects have ``__del__``) inside the count."""

    def __init__(self) -> None:
        self.events = 0

    def _trace(self, frame: FrameType, event: str, arg: Any) -> Any:
        self.events += 1
        return self._trace

    def __enter__(self) -> OperationCounter:
        self._collecting = gc.isenabled()
        gc.collect()
        gc.disable()
        self._previous = sys.gettrace()
        sys.settrace(self._trace)
        return self

    def __exit__(self, *exc_info: object) -> None:
        sys.settrace(self._previous)
        if self._collecting:
            gc.enable()


def sweep_costs(workers: int) -> tuple[int, int, int, int]:
    """Per-heartbeat cost, and the cost of sweeps with nothing and with ten workers due."""
    clock = FakeClock(T0)
    fleet = Fleet(DEFAULT, clock)
    beats = [beat(f"worker-{index}") for index in range(workers)]
    for heartbeat in beats:  # they join 10 ms apart
        fleet.observe(heartbeat)
        clock.advance(0.01)
    clock.now = T0 + 300
    with OperationCounter() as per_beat:
        for heartbeat in beats:
            fleet.observe(heartbeat)
            clock.advance(0.01)
    clock.now = T0 + 301 + workers * 0.01
    with OperationCounter() as idle:
        assert fleet.sweep() == []
    clock.now = T0 + 900 + 0.095  # worker-0 .. worker-9 refreshed 600 s ago or more
    with OperationCounter() as due:
        transitions = fleet.sweep()
    assert [t.hostname for t in transitions] == [f"worker-{index}" for index in range(10)]
    return per_beat.events // workers, idle.events, due.events, len(fleet)


def test_heartbeats_and_sweeps_cost_the_same_for_any_fleet_size() -> None:
    small = sweep_costs(100)
    large = sweep_costs(10_000)
    assert large[3] == 10_000
    assert large[:3] == small[:3]  # no part of the work grows with the fleet
    per_beat, idle, due, _ = large
    assert per_beat < 60
    assert idle < 60
    assert due < 150 * 10  # a transition decodes its workload's JSON text: ~30 of them


# Loop time


@pytest.mark.looptime
async def test_thresholds_fire_on_time_in_a_monitor_loop() -> None:
    loop = asyncio.get_running_loop()
    fleet = Fleet(Thresholds(600, 1200, forget_after=600), loop.time)
    start = loop.time()
    fleet.observe(beat("w1"))
    fired: list[tuple[WorkerState, float]] = []
    while (deadline := fleet.next_deadline()) is not None:
        await asyncio.sleep(deadline - loop.time())
        fired.extend((t.current, loop.time() - start) for t in fleet.sweep())
    assert fired == [(INACTIVE, 600), (OFFLINE, 1200)]
    assert loop.time() - start == 1800  # then it was forgotten
    assert len(fleet) == 0


# What the garbage collector and the status see of a large fleet


def tracked_objects() -> int:
    gc.collect()
    return len(gc.get_objects())


def test_the_cyclic_garbage_collector_does_not_track_the_workers(clock: FakeClock) -> None:
    """A full collection scans every tracked object; a mass transition triggers several, so a
    fleet of tracked per-worker objects stalled the event loop for 100s of ms at 100,000."""
    fleet = Fleet(DEFAULT, clock)
    before = tracked_objects()
    for index in range(5_000):
        fleet.observe(beat(f"worker-{index}"))
        clock.advance(0.01)
    clock.advance(DEFAULT.inactive_after)
    assert len(fleet.sweep()) == 5_000  # inactive ones live in a heap
    assert tracked_objects() - before < 50


def test_an_active_worker_costs_its_record_and_its_place_in_line_only() -> None:
    """Issue 9: at most 1 KiB a worker beyond an idle operator at 100,000. Beside its name and
    workload (the decoder's strings, not counted here), an active worker holds its place in the
    active order with its record as the value: 192 bytes with 12,000 workers (the dicts as full
    as with 100,000). 267 before: its record in a second dict too, with a state and an epoch, and
    its last_seen a float of its own beside its heartbeat's time (216 with only that float)."""
    count = 12_000
    beats = [beat(f"worker-{index}") for index in range(count)]
    now = T0

    def monotonic() -> float:
        return now + 0.0  # a float object a call, as time.monotonic()

    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        fleet = Fleet(DEFAULT, monotonic)
        fleet.pause()  # as the operator starts it: its backlog is read paused
        for heartbeat in beats:
            fleet.observe(heartbeat)
        now += 5
        fleet.resume()
        now += 5
        for heartbeat in beats:  # steady state: every record replaced since the pause
            fleet.observe(heartbeat)
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert fleet.counts[ACTIVE] == count
    assert grown / count < 205


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    steps=st.lists(
        st.tuples(st.sampled_from(["beat", "wait", "seed"]), st.integers(0, 30)),
        max_size=120,
    ),
    limit=st.integers(1, 12),
)
# Found by hypothesis: a worker seeded again went to the end of the active order.
@example(steps=[("seed", 0), ("wait", 1), ("beat", 1), ("seed", 0)], limit=1)
def test_the_snapshot_lists_the_worst_workers_first_like_a_full_sort(
    steps: list[tuple[str, int]], limit: int
) -> None:
    """The snapshot walks each state's heap instead of sorting the fleet; it must agree with a
    full sort (state, then longest silent), through revivals, seeds and stale heap entries."""
    clock = FakeClock(T0)
    fleet = Fleet(Thresholds(inactive_after=10, offline_after=20, forget_after=30), clock)
    for action, number in steps:
        if action == "beat":
            fleet.observe(beat(f"w{number}"))
        elif action == "seed":
            fleet.seed(f"w{number}", "builder", [ACTIVE, INACTIVE, OFFLINE][number % 3], number)
        else:
            clock.advance(number / 3)
        fleet.sweep()
    everyone = [view for view in map(fleet.get, (f"w{n}" for n in range(31))) if view]
    rank = {OFFLINE: 0, INACTIVE: 1, ACTIVE: 2}
    expected = sorted(everyone, key=lambda view: (rank[view.state], view.last_seen))[:limit]
    snapshot = fleet.snapshot(limit)
    assert [(view.state, view.last_seen) for view in snapshot.workers] == [
        (view.state, view.last_seen) for view in expected
    ]
    assert snapshot.total == len(everyone)


def test_a_worker_seeded_again_turns_inactive_on_its_first_seeds_time(clock: FakeClock) -> None:
    """The Manager's list is read again every few minutes: a worker still unheard is seeded
    again, keeping the time of its first seed. It must keep its place in the active order too,
    or it is swept only after every worker heard since (late verdicts, a wrong status order)."""
    fleet = Fleet(DEFAULT, clock)
    fleet.seed("quiet", "builder", ACTIVE, None)
    clock.advance(60)
    fleet.observe(beat("heard"))
    fleet.seed("quiet", "builder", ACTIVE, None)  # the relisting
    clock.advance(DEFAULT.inactive_after - 60)
    assert [(t.hostname, t.current) for t in fleet.sweep()] == [("quiet", INACTIVE)]
