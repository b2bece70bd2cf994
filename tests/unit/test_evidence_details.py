"""Details of restart evidence and of the fleet's records that mutation testing found unchecked:
what a seeded worker carries, naive timestamps, unusable entries, re-seeding an active worker."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from overseer_operator.fleet import Fleet
from overseer_operator.manager_client import ModuleRecord
from overseer_operator.model import Heartbeat, Thresholds, WorkerState
from overseer_operator.seeding import (
    ROW_WRITE_SLACK,
    Evidence,
    from_manager_row,
    from_status_module,
    seconds_since,
)
from tests.fakes import FakeClock

ACTIVE, INACTIVE, OFFLINE = WorkerState.ACTIVE, WorkerState.INACTIVE, WorkerState.OFFLINE
NOW = datetime(2030, 6, 1, 12, 0, tzinfo=UTC)
THRESHOLDS = Thresholds(600, 1200, 3600)


def test_a_naive_time_is_taken_as_utc():
    naive = datetime(2030, 6, 1, 11, 50)
    assert seconds_since(naive, NOW) == 600.0
    assert seconds_since(naive.replace(tzinfo=UTC), NOW) == 600.0


def test_a_status_entry_with_a_naive_time_is_evidence_in_utc():
    module = {"hostname": "w1", "type": "builder", "state": "active"}
    evidence = from_status_module({**module, "lastHeartbeatTime": "2030-06-01T11:40:00"}, NOW, 60)
    heard = datetime(2030, 6, 1, 11, 40, tzinfo=UTC)
    assert evidence == Evidence("w1", "builder", ACTIVE, 1140.0, heard_at=heard)


@pytest.mark.parametrize("hostname", [5, "", None, ["w1"]])
def test_a_status_entry_without_a_usable_hostname_is_skipped(hostname):
    module = {"hostname": hostname, "type": "builder", "state": "active"}
    assert from_status_module(module, NOW, 60) is None


def test_a_recent_status_entry_proves_no_silence_at_all():
    module = {"hostname": "w1", "state": "inactive", "lastHeartbeatTime": "2030-06-01T11:59:30Z"}
    heard = NOW - timedelta(seconds=30)  # and a proof of life then
    assert from_status_module(module, NOW, 60) == Evidence(
        "w1", "unknown", INACTIVE, 0.0, heard_at=heard
    )


def test_a_manager_row_carries_its_hostname_type_and_workload():
    updated = NOW - timedelta(minutes=4)
    evidence = from_manager_row(
        ModuleRecord("w1", "deployer", "active", [{"job": 1}], updated), NOW, 600, 60
    )
    assert evidence == Evidence("w1", "deployer", ACTIVE, 180.0 - ROW_WRITE_SLACK, [{"job": 1}])
    undated = from_manager_row(ModuleRecord("w2", "builder", "weird", None, None), NOW, 600, 60)
    assert undated == Evidence("w2", "builder", ACTIVE, None, [])


# The fleet's records


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1000.0)


@pytest.fixture
def fleet(clock: FakeClock) -> Fleet:
    return Fleet(THRESHOLDS, clock)


def test_a_seeded_worker_carries_its_type_status_and_workload(fleet):
    fleet.seed("w1", "deployer", ACTIVE, None, [{"job": 1}])
    view = fleet.get("w1")
    assert view is not None
    assert (view.module_type, view.status, view.workload, view.last_heartbeat_at) == (
        "deployer",
        "active",
        [{"job": 1}],
        None,
    )


def test_reseeding_without_a_workload_keeps_the_known_one(fleet):
    fleet.seed("w1", "builder", ACTIVE, None, [{"job": 1}])
    fleet.seed("w1", "builder", INACTIVE, 700)
    view = fleet.get("w1")
    assert view is not None and view.workload == [{"job": 1}]


def test_reseeding_an_active_worker_leaves_no_trace_of_its_active_record(fleet, clock):
    fleet.seed("w1", "builder", ACTIVE, None)
    fleet.seed("w1", "builder", ACTIVE, 1300)  # stronger evidence: offline
    assert fleet.counts == {ACTIVE: 0, INACTIVE: 0, OFFLINE: 1}
    clock.advance(700)
    assert fleet.sweep() == []  # no inactive verdict from the replaced active record
    assert fleet.counts == {ACTIVE: 0, INACTIVE: 0, OFFLINE: 1}
    fleet.seed("w2", "builder", INACTIVE, None)
    fleet.seed("w2", "builder", INACTIVE, 1300)  # re-seeding an inactive worker works too
    assert fleet.get("w2").state is OFFLINE


def test_a_heartbeat_of_a_seeded_worker_records_its_time_and_workload(fleet, clock):
    fleet.seed("w1", "builder", ACTIVE, None, [{"job": "old"}])
    clock.advance(30)
    fleet.observe(Heartbeat("w1", "builder", "active", [{"job": "new"}]))
    view = fleet.get("w1")
    assert view is not None
    assert (view.last_heartbeat_at, view.workload) == (1030.0, [{"job": "new"}])


def test_swept_transitions_carry_the_workers_record(fleet, clock):
    fleet.observe(Heartbeat("w1", "deployer", "active", [{"job": 1}]))
    clock.advance(600)
    (transition,) = fleet.sweep()
    assert (transition.module_type, transition.workload) == ("deployer", [{"job": 1}])
    assert (transition.due_at, transition.at) == (1600.0, 1600.0)


def test_a_returning_worker_transition_carries_its_record(fleet, clock):
    fleet.observe(Heartbeat("w1", "builder", "active", []))
    clock.advance(700)
    fleet.sweep()
    transition = fleet.observe(Heartbeat("w1", "deployer", "busy", [{"job": 2}]))
    assert transition is not None
    assert (transition.module_type, transition.workload) == ("deployer", [{"job": 2}])
    assert (transition.previous, transition.current) == (INACTIVE, ACTIVE)
