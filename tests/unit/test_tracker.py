"""The hot path of one exchange (``FleetTracker``): when verdicts may be given, restart evidence
settled once, the Manager's rows, the sweeper loop, and bounded metric labels.

The writers are recording doubles with the writer's interface; the clock is a FakeClock (and
looptime for the sweeper loop)."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from overseer_operator.consumer import QueueReading
from overseer_operator.heartbeat import MessageRejected, encode_etf, encode_json
from overseer_operator.manager_client import ModuleRecord
from overseer_operator.model import (
    BrokerState,
    BrokerStatus,
    Heartbeat,
    Reason,
    Thresholds,
    Transition,
    Verdict,
    WorkerState,
)
from overseer_operator.seeding import ROW_WRITE_SLACK
from overseer_operator.tracker import KNOWN_EVENT_TYPES, FleetTracker
from tests.fakes import FakeClock
from tests.metering import sample

ACTIVE, INACTIVE, OFFLINE = WorkerState.ACTIVE, WorkerState.INACTIVE, WorkerState.OFFLINE
CONSUMING = BrokerStatus(BrokerState.CONSUMING, "consuming")
T0 = 5000.0
WALL0 = datetime(2030, 3, 1, 9, 0, 0, tzinfo=UTC)


class RecordingWriter:
    """The Manager writer's interface as the tracker uses it, recording instead of writing.
    ``owed`` holds workers with a write on its way, until the test acknowledges them."""

    def __init__(self) -> None:
        self.applied: list[Transition] = []
        self.refreshes: list[str] = []
        self.marked: list[str] = []
        self.retired: list[str] = []
        self.owed: set[str] = set()

    def apply(self, transition: Transition) -> None:
        self.applied.append(transition)
        self.owed.add(transition.hostname)

    def observe_heartbeat(self, heartbeat: Heartbeat) -> None:
        self.refreshes.append(heartbeat.hostname)

    def mark_written(self, hostname: str) -> None:
        self.marked.append(hostname)

    def retire(self, hostname: str) -> None:
        self.retired.append(hostname)
        self.owed.add(hostname)

    def forget(self, hostname: str) -> None:
        self.owed.discard(hostname)

    def owes(self, hostname: str) -> bool:
        return hostname in self.owed

    def acknowledge_all(self) -> None:
        self.owed.clear()


class RecordingEvents:
    def __init__(self) -> None:
        self.recorded: list[Transition] = []

    def record(self, transition: Transition, thresholds: Thresholds) -> None:
        self.recorded.append(transition)


class Clocks:
    """The monotonic clock and the wall clock, moved together."""

    def __init__(self) -> None:
        self.monotonic = FakeClock(T0)
        self.wall = WALL0

    def wall_clock(self) -> datetime:
        return self.wall

    def advance(self, seconds: float) -> None:
        self.monotonic.advance(seconds)
        self.wall += timedelta(seconds=seconds)


class Harness:
    def __init__(self, name: str = "trk") -> None:
        self.clocks = Clocks()
        self.writer = RecordingWriter()
        self.events = RecordingEvents()
        self.changes = 0
        self.labels = ("ns", name)
        self.tracker = FleetTracker(
            self.labels,
            self.writer,  # type: ignore[arg-type]
            self.events,  # type: ignore[arg-type]
            self._changed,
            self.clocks.monotonic,
            self.clocks.wall_clock,
        )

    def _changed(self) -> None:
        self.changes += 1

    def consume(self, waiting: int = 0) -> None:
        """What the consumer reports when consuming begins."""
        self.tracker.on_queue_reading(QueueReading(waiting, 0, started=True))
        self.tracker.on_broker_status(CONSUMING)

    def beat(self, hostname: str, module_type: str = "builder") -> None:
        self.tracker.handle_message(encode_json(Heartbeat(hostname, module_type, "active", [])))

    def sweep(self) -> None:
        """One pass of what the sweeper does when woken."""
        for transition in self.tracker.fleet.sweep():
            self.tracker._dispatch(transition)

    def verdicts(self) -> list[tuple[str, WorkerState | None, WorkerState]]:
        """Inactive and offline verdicts given to the Manager writer so far."""
        return [
            (t.hostname, t.previous, t.current)
            for t in self.writer.applied
            if t.current is not ACTIVE
        ]

    def state(self, hostname: str) -> WorkerState | None:
        view = self.tracker.fleet.get(hostname)
        return None if view is None else view.state


@pytest.fixture
def harness() -> Harness:
    return Harness()


def status_module(hostname: str, state: str, heard: datetime | None) -> dict[str, Any]:
    module = {"hostname": hostname, "type": "builder", "state": state}
    if heard is not None:
        module["lastHeartbeatTime"] = heard.strftime("%Y-%m-%dT%H:%M:%SZ")
    return module


def row(hostname: str, status: str, updated_at: datetime | None) -> ModuleRecord:
    return ModuleRecord(hostname, "builder", status, [{"job": hostname}], updated_at)


# When verdicts may be given


def test_nothing_is_judged_before_the_queue_is_consumed(harness):
    tracker = harness.tracker
    harness.beat("w1")  # heard through the queue before the broker said "consuming"
    assert not tracker.verdicts_allowed
    assert tracker.ingest_verdict() == Verdict(
        False, Reason.NOT_CONSUMING, "the queue is not consumed; verdicts are held"
    )
    harness.clocks.advance(7200)
    harness.sweep()
    assert tracker.fleet.next_deadline() is None
    assert harness.verdicts() == []
    assert harness.state("w1") is ACTIVE


def test_consuming_but_draining_the_backlog_holds_verdicts_until_it_is_read(harness):
    tracker = harness.tracker
    harness.beat("w1")
    harness.consume(waiting=2)
    assert tracker.broker == CONSUMING
    assert not tracker.verdicts_allowed
    assert tracker.ingest_verdict().reason is Reason.DRAINING_BACKLOG
    harness.clocks.advance(3600)
    harness.sweep()
    assert harness.verdicts() == []
    harness.beat("x1")
    assert not tracker.verdicts_allowed
    harness.beat("x2")  # the second of the two waiting messages: the backlog is read
    assert tracker.verdicts_allowed
    assert tracker.ingest_verdict().reason is Reason.CAUGHT_UP
    # w1 kept the whole margin it had: nothing was judged while its heartbeats could not be read.
    harness.clocks.advance(599)
    harness.sweep()
    assert harness.verdicts() == []
    harness.clocks.advance(2)
    harness.sweep()
    # x1 and x2 were heard at the same (fleet) moment as w1
    assert harness.verdicts() == [(h, ACTIVE, INACTIVE) for h in ("w1", "x1", "x2")]


def test_caught_up_but_not_consuming_holds_verdicts(harness):
    harness.consume()
    harness.beat("w1")
    harness.tracker.on_broker_status(BrokerStatus(BrokerState.UNREACHABLE, "lost"))
    assert harness.tracker.backlog.caught_up
    assert not harness.tracker.verdicts_allowed
    harness.clocks.advance(3600)
    harness.sweep()
    assert harness.verdicts() == []
    harness.consume()
    harness.clocks.advance(601)
    harness.sweep()
    assert harness.verdicts() == [("w1", ACTIVE, INACTIVE)]


def test_falling_behind_holds_verdicts_until_caught_up(harness):
    tracker = harness.tracker
    harness.consume()
    harness.beat("w1")
    harness.clocks.advance(300)
    tracker.on_queue_reading(QueueReading(5000, 1))  # nothing read meanwhile: far behind
    assert tracker.ingest_verdict().reason is Reason.FALLING_BEHIND
    assert not tracker.verdicts_allowed
    harness.clocks.advance(3600)
    harness.sweep()
    assert harness.verdicts() == []
    tracker.on_queue_reading(QueueReading(0, 1))
    assert tracker.verdicts_allowed
    harness.clocks.advance(299)
    harness.sweep()
    assert harness.verdicts() == []
    harness.clocks.advance(2)
    harness.sweep()
    assert harness.verdicts() == [("w1", ACTIVE, INACTIVE)]


def test_the_held_verdicts_gauge_follows(harness):
    labels = dict(zip(("namespace", "name"), harness.labels, strict=True))
    harness.tracker.on_broker_status(BrokerStatus(BrokerState.CONNECTING, "connecting"))
    assert sample("overseer_verdicts_held", **labels) == 1
    assert sample("overseer_broker_connected", **labels) == 0
    harness.consume()
    assert sample("overseer_verdicts_held", **labels) == 0
    assert sample("overseer_broker_connected", **labels) == 1
    harness.tracker.on_queue_reading(QueueReading(123, 1))
    assert sample("overseer_queue_backlog_messages", **labels) == 123


# Restart evidence


def test_a_start_up_backlog_holds_inactive_and_offline_then_settles(harness):
    tracker = harness.tracker
    long_ago = WALL0 - timedelta(minutes=45)
    tracker.seed_from_status(
        {
            "modules": [
                status_module("gone", "active", long_ago),  # provably silent: offline
                status_module("back", "active", long_ago),  # its heartbeat waits in the queue
                status_module("fresh", "active", WALL0 - timedelta(seconds=30)),
            ]
        }
    )
    harness.consume(waiting=3)
    assert harness.verdicts() == []
    harness.beat("back")
    harness.beat("new")
    assert harness.verdicts() == []  # one message still to read
    harness.beat("fresh")
    assert harness.verdicts() == [("gone", ACTIVE, OFFLINE)]
    assert {h: harness.state(h) for h in ("gone", "back", "fresh", "new")} == {
        "gone": OFFLINE,
        "back": ACTIVE,
        "fresh": ACTIVE,
        "new": ACTIVE,
    }


def test_seeded_workers_are_settled_once_whatever_happens_next(harness):
    tracker = harness.tracker
    long_ago = WALL0 - timedelta(minutes=45)
    tracker.seed_from_status({"modules": [status_module("gone", "active", long_ago)]})
    tracker.on_manager_rows([row("gone", "active", long_ago)])  # the same worker, twice
    harness.consume()
    assert harness.verdicts() == [("gone", ACTIVE, OFFLINE)]
    assert [t.hostname for t in harness.events.recorded] == ["gone"]
    # The broker flaps, twice; time passes.
    tracker.on_broker_status(BrokerStatus(BrokerState.UNREACHABLE, "lost"))
    harness.consume()
    harness.clocks.advance(30)
    tracker.on_broker_status(BrokerStatus(BrokerState.UNREACHABLE, "lost again"))
    harness.consume(waiting=1)
    harness.beat("other")
    harness.sweep()
    assert harness.verdicts() == [("gone", ACTIVE, OFFLINE)]
    assert [t.hostname for t in harness.events.recorded] == ["gone", "other"]


def test_a_relisting_before_the_delete_went_through_is_not_a_second_verdict(harness):
    tracker = harness.tracker
    long_ago = WALL0 - timedelta(minutes=45)
    tracker.on_manager_rows([row("gone", "active", long_ago)])
    harness.consume()
    assert harness.verdicts() == [("gone", ACTIVE, OFFLINE)]
    assert harness.writer.owes("gone")  # the DELETE is on its way
    harness.clocks.advance(300)
    tracker.on_manager_rows([row("gone", "active", long_ago)])  # the reconciliation's listing
    assert harness.verdicts() == [("gone", ACTIVE, OFFLINE)]
    assert [t.hostname for t in harness.events.recorded] == ["gone"]


def test_a_seeded_worker_without_proof_gets_a_full_threshold(harness):
    tracker = harness.tracker
    tracker.seed_from_status({"modules": [status_module("w1", "active", None)]})
    tracker.on_manager_rows([row("w2", "active", None)])
    harness.consume()
    harness.clocks.advance(599)
    harness.sweep()
    assert harness.verdicts() == []
    harness.clocks.advance(2)
    harness.sweep()
    assert sorted(harness.verdicts()) == [("w1", ACTIVE, INACTIVE), ("w2", ACTIVE, INACTIVE)]
    assert tracker.heard_wall_time("w1") is None


def test_a_seeded_inactive_worker_keeps_its_state_and_turns_offline_on_time(harness):
    tracker = harness.tracker
    tracker.on_manager_rows([row("w1", "inactive", WALL0 - timedelta(minutes=5))])
    # An inactive row was written 10 minutes into the silence (perhaps the write slack late):
    # 15 minutes silent by now, less the slack.
    slack = timedelta(seconds=ROW_WRITE_SLACK)
    assert tracker.heard_wall_time("w1") == WALL0 - timedelta(minutes=15) + slack
    harness.consume()
    assert harness.state("w1") is INACTIVE
    assert harness.verdicts() == []  # the row already says inactive: nothing to tell
    harness.clocks.advance(299 + ROW_WRITE_SLACK)
    harness.sweep()
    assert harness.verdicts() == []
    harness.clocks.advance(2)
    harness.sweep()
    assert harness.verdicts() == [("w1", INACTIVE, OFFLINE)]


def test_manager_rows_seed_unknown_workers_and_mark_active_rows_written(harness):
    tracker = harness.tracker
    recent = WALL0 - timedelta(seconds=20)
    tracker.on_manager_rows([row("a", "active", recent), row("i", "inactive", recent)])
    assert harness.writer.marked == ["a"]  # its row is current: no POST owed yet
    assert {h: harness.state(h) for h in ("a", "i")} == {"a": ACTIVE, "i": INACTIVE}
    view = tracker.fleet.get("a")
    assert view is not None and view.last_heartbeat_at is None
    assert view.workload == [{"job": "a"}]
    harness.consume()
    assert harness.writer.applied == []


def test_a_row_that_disagrees_with_a_heard_worker_is_corrected(harness):
    tracker = harness.tracker
    harness.consume()
    harness.beat("w1")
    assert [(t.hostname, t.current) for t in harness.writer.applied] == [("w1", ACTIVE)]
    harness.writer.acknowledge_all()
    tracker.on_manager_rows([row("w1", "inactive", WALL0)])  # someone else wrote it
    assert [(t.hostname, t.previous, t.current) for t in harness.writer.applied[1:]] == [
        ("w1", INACTIVE, ACTIVE)
    ]
    assert harness.state("w1") is ACTIVE
    harness.writer.acknowledge_all()
    tracker.on_manager_rows([row("w1", "active", WALL0)])  # agrees: nothing more
    assert len(harness.writer.applied) == 2


def test_a_heartbeat_before_the_settling_replaces_the_evidence(harness):
    tracker = harness.tracker
    long_ago = WALL0 - timedelta(hours=2)
    tracker.seed_from_status({"modules": [status_module("w1", "active", long_ago)]})
    assert tracker.heard_wall_time("w1") is not None
    harness.beat("w1")
    assert tracker.heard_wall_time("w1") is None
    harness.consume()
    assert harness.verdicts() == []
    assert harness.state("w1") is ACTIVE


def test_evidence_from_status_and_rows_keeps_the_oldest_proof(harness):
    tracker = harness.tracker
    tracker.seed_from_status({"modules": [status_module("w1", "active", None)]})
    tracker.on_manager_rows([row("w1", "active", WALL0 - timedelta(minutes=30))])
    tracker.seed_from_status(
        {"modules": [status_module("w2", "active", WALL0 - timedelta(minutes=40))]}
    )
    tracker.on_manager_rows([row("w2", "active", WALL0 - timedelta(minutes=30))])
    # w1: the row's 30 min - 5 min refresh - the write slack; w2: the status's 40 - 1 = 39 min
    slack = timedelta(seconds=ROW_WRITE_SLACK)
    assert tracker.heard_wall_time("w1") == WALL0 - timedelta(minutes=25) + slack
    assert tracker.heard_wall_time("w2") == WALL0 - timedelta(minutes=39)


def test_no_record_proves_silence_past_a_heartbeat_time_in_the_status(harness):
    """A replica took the exchange, heard w1, and handed it over a second later: its final
    status has w1's fresh heartbeat time, but it had not rewritten the row yet, so the row is
    as old as the outage before. The row's age proves no silence past that heartbeat (a chaos
    proof saw w1 written inactive 30 ms after the next owner started)."""
    tracker = harness.tracker
    tracker.seed_from_status(
        {"modules": [status_module("w1", "active", WALL0 - timedelta(seconds=3))]}
    )
    tracker.on_manager_rows([row("w1", "active", WALL0 - timedelta(minutes=30))])
    assert tracker.heard_wall_time("w1") == WALL0 - timedelta(seconds=3)
    harness.consume()
    assert harness.verdicts() == []
    harness.clocks.advance(599)
    harness.sweep()
    assert harness.verdicts() == []  # 3 s of proven silence: a full threshold
    harness.clocks.advance(2)
    harness.sweep()
    assert harness.verdicts() == [("w1", ACTIVE, INACTIVE)]


def test_a_status_heartbeat_time_still_caps_rows_read_after_the_seeds_were_settled(harness):
    """The same handover, in the order a start that consumes first can take: the queue is read
    to the end (seeds settled from the status) before the Manager's rows arrive. The stale row
    still proves no silence past the status's heartbeat time (the proof of life outlives the
    settling), so w1 is not deleted before it had a chance to beat."""
    tracker = harness.tracker
    tracker.seed_from_status(
        {"modules": [status_module("w1", "active", WALL0 - timedelta(seconds=3))]}
    )
    tracker.await_listing()
    harness.consume()  # caught up: the status's evidence is settled now
    tracker.on_manager_rows([row("w1", "active", WALL0 - timedelta(minutes=30))])
    harness.sweep()
    assert harness.verdicts() == []
    harness.clocks.advance(590)
    harness.sweep()
    assert harness.verdicts() == []  # a full threshold from the proven heartbeat


def test_rows_left_while_the_manager_writes_failed_do_not_prove_the_outage_as_silence(harness):
    """The previous owner could not write to the Manager for the last 20 minutes before it
    stopped (its status says so) while it consumed every heartbeat: its 25-minute-old rows
    must not turn the beating fleet offline on the restart."""
    tracker = harness.tracker
    failing_since = (WALL0 - timedelta(minutes=20)).strftime("%Y-%m-%dT%H:%M:%SZ")
    tracker.seed_from_status(
        {
            "conditions": [
                {
                    "type": "ManagerSynced",
                    "status": "False",
                    "reason": "ManagerUnreachable",
                    "lastTransitionTime": failing_since,
                }
            ]
        }
    )
    tracker.on_manager_rows([row("w1", "active", WALL0 - timedelta(minutes=25))])
    harness.consume()
    assert harness.verdicts() == []
    assert harness.state("w1") is ACTIVE
    harness.clocks.advance(599)
    harness.sweep()
    assert harness.verdicts() == []  # a full threshold: no proof of silence
    harness.clocks.advance(2)
    harness.sweep()
    assert harness.verdicts() == [("w1", ACTIVE, INACTIVE)]


def test_a_monitor_that_stops_judging_gives_no_verdict_whatever_time_passes(harness):
    """A replica handing over stops consuming, then waits (up to 5 s) for a Manager that is
    down: with 3 s thresholds its sweeper wrote beating workers inactive meanwhile (a CI run).
    Heartbeats still read (its own, drained back) are recorded; nobody is judged."""
    harness.consume()
    harness.beat("w1")
    harness.tracker.stop_judging()
    assert not harness.tracker.verdicts_allowed
    harness.tracker.on_queue_reading(QueueReading(0, 0))  # a reading cannot resume the clock
    harness.beat("w2")
    harness.clocks.advance(1300)  # past offlineAfter
    harness.sweep()
    assert harness.verdicts() == []
    assert {harness.state("w1"), harness.state("w2")} == {ACTIVE}


def test_another_replicas_own_row_is_removed_without_a_verdict(harness):
    """A previous owner, alive and now another replica's peer, whose DELETE of its own row
    failed in the handover: its row, its status entry and its last own heartbeat (read from
    the backlog) are not a worker's. The row is deleted, never written inactive."""
    tracker = harness.tracker
    tracker.peers = {"replica-b"}
    recent = WALL0 - timedelta(seconds=5)
    tracker.seed_from_status({"modules": [status_module("replica-b", "active", recent)]})
    tracker.on_manager_rows([row("replica-b", "active", recent), row("w1", "active", recent)])
    harness.consume()
    harness.beat("replica-b", "overseer")
    harness.beat("w1")
    assert harness.writer.retired == ["replica-b"]
    assert tracker.fleet.get("replica-b") is None
    assert tracker.fleet.counts[ACTIVE] == 1
    harness.clocks.advance(1300)  # past offlineAfter
    harness.sweep()
    assert harness.verdicts() == [("w1", ACTIVE, INACTIVE), ("w1", INACTIVE, OFFLINE)]
    # Listed again once the DELETE is through (it was lost): deleted again.
    harness.writer.acknowledge_all()
    tracker.on_manager_rows([row("replica-b", "active", recent)])
    assert harness.writer.retired == ["replica-b", "replica-b"]
    assert harness.verdicts()[-1] == ("w1", INACTIVE, OFFLINE)


# Consuming before the Manager's first listing is read


@pytest.fixture
def awaiting() -> Harness:
    """A tracker that consumes while the Manager's first listing is still being read."""
    harness = Harness()
    harness.tracker.await_listing()
    harness.consume()
    return harness


def test_a_worker_heard_before_the_listing_that_lists_it_active_costs_no_write(awaiting):
    recent = WALL0 - timedelta(seconds=40)
    awaiting.beat("w1")
    awaiting.beat("w1")  # beats again before the listing: no refresh either
    assert awaiting.state("w1") is ACTIVE  # heard: shown active at once
    assert awaiting.writer.applied == [] and awaiting.writer.refreshes == []
    awaiting.tracker.on_manager_rows([row("w1", "active", recent)])
    assert awaiting.writer.applied == []
    assert awaiting.writer.marked == ["w1"]  # its row is current
    assert awaiting.events.recorded == []  # nothing changed: no Event
    awaiting.beat("w1")
    assert awaiting.writer.refreshes == ["w1"]  # from here on as any worker


def test_a_worker_heard_before_the_listing_is_registered_once_unless_listed_active(awaiting):
    recent = WALL0 - timedelta(seconds=40)
    for hostname in ("new", "was-inactive", "other-type", "listed"):
        awaiting.beat(hostname)
    awaiting.tracker.on_manager_rows(
        [
            row("was-inactive", "inactive", recent),
            ModuleRecord("other-type", "deployer", "active", [], recent),
            row("listed", "active", recent),
        ]
    )
    applied = [(t.hostname, t.previous, t.current) for t in awaiting.writer.applied]
    assert sorted(applied) == [
        ("new", None, ACTIVE),
        ("other-type", None, ACTIVE),
        ("was-inactive", None, ACTIVE),
    ]
    assert awaiting.writer.marked == ["listed"]
    awaiting.writer.acknowledge_all()
    awaiting.tracker.on_manager_rows([row("was-inactive", "active", WALL0)])  # written now
    assert len(awaiting.writer.applied) == 3  # the next listing owes nothing more


def test_a_worker_seeded_from_the_status_and_heard_before_the_listing_is_not_refreshed():
    """Known from the last status (active), heard again before the rows are read: its row, if
    current, is not written again; without a row, the refresh its heartbeat owes is."""
    harness = Harness()
    recent = WALL0 - timedelta(seconds=30)
    harness.tracker.seed_from_status(
        {"modules": [status_module(h, "active", recent) for h in ("listed", "unlisted")]}
    )
    harness.tracker.await_listing()
    harness.consume()
    harness.beat("listed")
    harness.beat("unlisted")
    assert harness.writer.applied == [] and harness.writer.refreshes == []
    harness.tracker.on_manager_rows([row("listed", "active", recent)])
    assert harness.writer.marked == ["listed"]
    assert harness.writer.refreshes == ["unlisted"]
    assert harness.writer.applied == []


def test_a_failed_first_listing_registers_what_was_held(awaiting):
    awaiting.beat("w1")
    assert awaiting.writer.applied == []
    awaiting.tracker.listing_unavailable()
    assert [(t.hostname, t.current) for t in awaiting.writer.applied] == [("w1", ACTIVE)]
    assert [t.hostname for t in awaiting.events.recorded] == ["w1"]


@pytest.mark.parametrize("listing", ["read", "unavailable"])
def test_the_end_of_the_wait_for_the_listing_is_a_change_even_with_nothing_held(awaiting, listing):
    """The status writer holds a restarted monitor's first patch until the listing is in (or
    cannot be): the end of the wait must wake it, heartbeats held or not."""
    before = awaiting.changes
    if listing == "read":
        awaiting.tracker.on_manager_rows([])
    else:
        awaiting.tracker.listing_unavailable()
    assert not awaiting.tracker.awaiting_listing
    assert awaiting.changes == before + 1


def test_a_verdict_on_a_worker_still_held_comes_after_its_registration(awaiting):
    """A Manager that does not answer the listing for longer than ``inactiveAfter``: the
    registration is owed first, then the verdict, in order."""
    awaiting.beat("w1")
    awaiting.clocks.advance(601)
    awaiting.sweep()
    assert [(t.hostname, t.current) for t in awaiting.writer.applied] == [
        ("w1", ACTIVE),
        ("w1", INACTIVE),
    ]


def test_a_monitor_that_stops_before_the_listing_leaves_the_registrations_to_the_next(awaiting):
    """Stopping or handing over before the rows are read: the next owner hears the workers again
    and asks its own listing; writing them here rewrote rows the Manager already had current."""
    awaiting.beat("w1")
    awaiting.tracker.stop_judging()
    awaiting.tracker.on_manager_rows([])  # a listing answered after the stop
    assert awaiting.writer.applied == []


def test_a_worker_forgotten_while_held_is_never_registered(awaiting):
    awaiting.beat("w1")
    awaiting.tracker.forget("w1")
    awaiting.tracker.on_manager_rows([])
    assert awaiting.writer.applied == []


# The sweeper loop


@pytest.mark.looptime
async def test_the_sweeper_dispatches_each_transition_at_its_threshold():
    loop = asyncio.get_running_loop()
    writer, events = RecordingWriter(), RecordingEvents()
    tracker = FleetTracker(("ns", "sweeper"), writer, events, lambda: None, loop.time)  # type: ignore[arg-type]
    tracker.on_queue_reading(QueueReading(0, 0, started=True))
    tracker.on_broker_status(CONSUMING)
    start = loop.time()
    tracker.observe(Heartbeat("w1", "builder", "active", []))
    sweeper = asyncio.create_task(tracker.sweep_forever())
    try:
        await asyncio.sleep(599.9)
        assert [t.current for t in writer.applied] == [ACTIVE]
        await asyncio.sleep(0.2)
        assert [(t.current, t.at - start) for t in writer.applied[1:]] == [(INACTIVE, 600.0)]
        await asyncio.sleep(600)
        assert [(t.current, t.at - start) for t in writer.applied[1:]] == [
            (INACTIVE, 600.0),
            (OFFLINE, 1200.0),
        ]
        assert [t.current for t in events.recorded] == [ACTIVE, INACTIVE, OFFLINE]
    finally:
        sweeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sweeper


@pytest.mark.looptime
async def test_the_sweeper_wakes_for_a_worker_that_joins_while_it_sleeps():
    loop = asyncio.get_running_loop()
    writer, events = RecordingWriter(), RecordingEvents()
    tracker = FleetTracker(("ns", "sweeper2"), writer, events, lambda: None, loop.time)  # type: ignore[arg-type]
    tracker.on_broker_status(CONSUMING)
    tracker.set_thresholds(Thresholds(60, 120, 3600))
    sweeper = asyncio.create_task(tracker.sweep_forever())
    try:
        await asyncio.sleep(1000)  # nothing to do: it sleeps without a deadline
        start = loop.time()
        tracker.observe(Heartbeat("late", "builder", "active", []))
        await asyncio.sleep(61)
        assert [(t.current, t.at - start) for t in writer.applied] == [
            (ACTIVE, 0.0),
            (INACTIVE, 60.0),
        ]
        tracker.set_thresholds(Thresholds(10, 70, 3600))  # offline comes sooner now
        await asyncio.sleep(10)
        assert [t.current for t in writer.applied][-1] is OFFLINE
    finally:
        sweeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sweeper


@pytest.mark.looptime
async def test_the_sweeper_wakes_for_a_worker_held_until_the_listing():
    """A worker heard while the Manager's list is awaited joins the fleet all the same: the
    sweeper must wake for its deadline, and its registration goes before the verdict."""
    loop = asyncio.get_running_loop()
    writer, events = RecordingWriter(), RecordingEvents()
    tracker = FleetTracker(("ns", "sweeper3"), writer, events, lambda: None, loop.time)  # type: ignore[arg-type]
    tracker.await_listing()
    tracker.on_broker_status(CONSUMING)
    tracker.set_thresholds(Thresholds(60, 120, 3600))
    sweeper = asyncio.create_task(tracker.sweep_forever())
    try:
        await asyncio.sleep(1000)  # nothing to do: it sleeps without a deadline
        tracker.observe(Heartbeat("held", "builder", "active", []))
        await asyncio.sleep(61)  # the Manager never answered the list meanwhile
        assert [(t.hostname, t.current) for t in writer.applied] == [
            ("held", ACTIVE),
            ("held", INACTIVE),
        ]
    finally:
        sweeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sweeper


# Messages that are not heartbeats


def test_ignored_event_types_are_counted_under_a_bounded_label(harness):
    labels = {"namespace": "ns", "name": "trk"}
    (known,) = KNOWN_EVENT_TYPES

    def ignored(event_type: str) -> float:
        return sample("overseer_messages_ignored_total", **labels, event_type=event_type)

    senders_choice = [f"event_{index}" for index in range(20)]
    before = {name: ignored(name) for name in (known, "other")}
    heartbeat = Heartbeat("w1", "builder", "active", [])
    harness.tracker.handle_message(encode_etf(heartbeat, event_type=known))
    for event_type in senders_choice:
        harness.tracker.handle_message(encode_json(heartbeat, event_type=event_type))
    assert ignored(known) == before[known] + 1
    assert ignored("other") == before["other"] + len(senders_choice)
    assert [ignored(name) for name in senders_choice] == [0] * len(senders_choice)
    assert harness.tracker.fleet.get("w1") is None  # not a heartbeat


def test_heartbeats_are_counted_by_wire_format_and_garbage_is_rejected(harness):
    labels = {"namespace": "ns", "name": "trk"}
    etf = sample("overseer_heartbeats_received_total", **labels, format="etf")
    json_ = sample("overseer_heartbeats_received_total", **labels, format="json")
    harness.tracker.handle_message(encode_etf(Heartbeat("a", "builder", "active", [])))
    harness.beat("b")
    harness.beat("b")
    assert sample("overseer_heartbeats_received_total", **labels, format="etf") == etf + 1
    assert sample("overseer_heartbeats_received_total", **labels, format="json") == json_ + 2
    with pytest.raises(MessageRejected):
        harness.tracker.handle_message(b"{not json")
    # A second heartbeat of an active worker is a refresh for the writer, not a transition.
    assert [t.hostname for t in harness.writer.applied] == ["a", "b"]
    assert harness.writer.refreshes == ["b"]


def test_a_rejected_message_still_counts_towards_the_backlog(harness):
    harness.consume(waiting=2)
    with pytest.raises(MessageRejected):
        harness.tracker.handle_message(b"garbage")
    harness.beat("w1")
    assert harness.tracker.verdicts_allowed


def test_a_queue_reading_that_changes_no_condition_asks_for_no_status_render(harness):
    """The broker is asked about the queue every 5 s; only a change of ``CaughtUp`` is worth a
    status render (which walks the whole fleet)."""
    harness.consume()
    before = harness.changes
    for waiting in (0, 3, 7, 2):
        harness.clocks.advance(5)
        harness.tracker.on_queue_reading(QueueReading(waiting, 1))
    assert harness.changes == before
    harness.clocks.advance(5)
    harness.tracker.on_queue_reading(QueueReading(100_000, 1))  # falling behind: visible
    assert harness.changes == before + 1
