"""Restart evidence: lower bounds of silence from the status and the Manager's rows, and what
the fleet makes of them with the production thresholds (10 and 20 minutes)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from overseer_operator.fleet import Fleet
from overseer_operator.manager_client import ModuleRecord
from overseer_operator.model import Thresholds, WorkerState
from overseer_operator.seeding import (
    ROW_WRITE_SLACK,
    from_manager_row,
    from_status_module,
    manager_writes_failing_since,
)
from tests.fakes import FakeClock

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
MINUTE = 60.0
PRODUCTION = Thresholds(10 * MINUTE, 20 * MINUTE)
REFRESH = 5 * MINUTE
SLACK = ROW_WRITE_SLACK / MINUTE  # minutes a row may be late while its writer says it is not


def row(status: str, minutes_ago: float | None, hostname: str = "w1") -> ModuleRecord:
    updated = None if minutes_ago is None else NOW - timedelta(minutes=minutes_ago)
    return ModuleRecord(hostname, "builder", status, [{"description": "job"}], updated)


def seeded_state(silent_for: float | None, shown: WorkerState) -> WorkerState | None:
    fleet = Fleet(PRODUCTION, FakeClock(1000.0))
    fleet.seed("w1", "builder", shown, silent_for)
    view = fleet.get("w1")
    return None if view is None else view.state


@pytest.mark.parametrize(
    ("status", "minutes_ago", "expected"),
    [
        # An active row may be one refresh interval (5 min) and the write slack (about 1.2 min)
        # behind its last heartbeat.
        ("active", 16, WorkerState.ACTIVE),  # 16 - 5 - 1.2 = 9.8 < 10: no proof, a full threshold
        ("active", 17, WorkerState.INACTIVE),  # 17 - 5 - 1.2 = 10.8 >= 10
        ("active", 26, WorkerState.INACTIVE),  # 26 - 5 - 1.2 = 19.8 < 20
        ("active", 27, WorkerState.OFFLINE),  # 27 - 5 - 1.2 = 20.8 >= 20
        # An inactive row was written once the worker had been silent for 10 minutes already.
        ("inactive", 0, WorkerState.INACTIVE),  # 0 + 10
        ("inactive", 11, WorkerState.INACTIVE),  # 11 + 10 - 1.2 = 19.8 < 20
        ("inactive", 12, WorkerState.OFFLINE),  # 12 + 10 - 1.2 = 20.8
        # No updated_at: no proof.
        ("active", None, WorkerState.ACTIVE),
    ],
)
def test_manager_rows_prove_only_what_they_can(status, minutes_ago, expected):
    evidence = from_manager_row(row(status, minutes_ago), NOW, PRODUCTION.inactive_after, REFRESH)
    assert evidence.shown is (WorkerState.INACTIVE if status == "inactive" else WorkerState.ACTIVE)
    assert evidence.workload == [{"description": "job"}]
    assert seeded_state(evidence.silent_for, evidence.shown) is expected


def test_with_the_legacy_refresh_every_heartbeat_an_active_row_is_exact_but_for_the_slack():
    evidence = from_manager_row(row("active", 11), NOW, PRODUCTION.inactive_after, 0.0)
    assert evidence.silent_for == pytest.approx((11 - SLACK) * MINUTE)


def test_a_row_from_the_future_proves_nothing():
    evidence = from_manager_row(row("active", -3), NOW, PRODUCTION.inactive_after, REFRESH)
    assert evidence.silent_for == 0.0
    assert seeded_state(evidence.silent_for, evidence.shown) is WorkerState.ACTIVE


def status_module(**fields) -> dict:
    return {"hostname": "w1", "type": "deployer", "state": "active", **fields}


def test_status_times_lag_by_one_status_refresh():
    seen = (NOW - timedelta(minutes=11)).strftime("%Y-%m-%dT%H:%M:%SZ")
    evidence = from_status_module(status_module(lastHeartbeatTime=seen), NOW, 60.0)
    assert evidence is not None
    assert (evidence.hostname, evidence.module_type) == ("w1", "deployer")
    assert evidence.silent_for == pytest.approx(10 * MINUTE)
    assert seeded_state(evidence.silent_for, evidence.shown) is WorkerState.INACTIVE


@pytest.mark.parametrize(
    "module",
    [
        status_module(lastHeartbeatTime="2026-11-27T11:00:00Z", state="sleepy"),
        {"lastHeartbeatTime": "2026-11-27T11:00:00Z", "state": "active"},
    ],
)
def test_unusable_status_entries_are_skipped(module):
    assert from_status_module(module, NOW, 60.0) is None


@pytest.mark.parametrize("time", [None, "yesterday"])
def test_a_status_entry_without_a_usable_time_proves_only_its_state(time):
    evidence = from_status_module(
        status_module(lastHeartbeatTime=time, state="inactive"), NOW, 60.0
    )
    assert evidence is not None
    assert (evidence.shown, evidence.silent_for) == (WorkerState.INACTIVE, None)


def test_rows_prove_silence_only_while_their_writer_could_write():
    """The previous owner's Manager writes failed from 20 minutes ago: it went on consuming and
    acking heartbeats it could not write, so a 30-minute-old row proves 30 - 20 - 5 - 1.2 = 3.8
    minutes, not 25 (which would have been an offline verdict on a worker that may well be
    beating)."""
    since = NOW - timedelta(minutes=20)
    evidence = from_manager_row(
        row("active", 30), NOW, PRODUCTION.inactive_after, REFRESH, written_until=since
    )
    assert evidence.silent_for == pytest.approx((5 - SLACK) * MINUTE)
    assert seeded_state(evidence.silent_for, evidence.shown) is WorkerState.ACTIVE
    inactive = from_manager_row(
        row("inactive", 25), NOW, PRODUCTION.inactive_after, REFRESH, written_until=since
    )
    # 10 when written, 5 more proven
    assert inactive.silent_for == pytest.approx((15 - SLACK) * MINUTE)
    # A row written after the writes started failing (one went through) proves what it shows.
    late = from_manager_row(
        row("inactive", 2), NOW, PRODUCTION.inactive_after, REFRESH, written_until=since
    )
    assert late.silent_for == pytest.approx((10 - SLACK) * MINUTE)


@pytest.mark.parametrize(
    ("conditions", "expected"),
    [
        ([], None),
        (
            [
                {
                    "type": "ManagerSynced",
                    "status": "True",
                    "lastTransitionTime": "2026-11-27T11:00:00Z",
                }
            ],
            None,
        ),
        (
            [
                {
                    "type": "ManagerSynced",
                    "status": "False",
                    "lastTransitionTime": "2026-11-27T11:40:00Z",
                }
            ],
            datetime(2026, 11, 27, 11, 40, tzinfo=UTC),
        ),
        # False without a usable time: the rows prove nothing at all.
        ([{"type": "ManagerSynced", "status": "False"}], datetime.min.replace(tzinfo=UTC)),
        (
            [{"type": "Ready", "status": "False", "lastTransitionTime": "2026-11-27T11:40:00Z"}],
            None,
        ),
    ],
)
def test_the_previous_owners_failing_manager_writes_are_read_from_its_status(conditions, expected):
    assert manager_writes_failing_since({"conditions": conditions}) == expected
