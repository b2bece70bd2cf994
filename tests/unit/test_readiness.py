"""Which conditions a monitor reports, from what it knows: Ready is the monitor's health, not
the fleet's, and Stalled marks exactly the problems a human must fix."""

from __future__ import annotations

import pytest

from overseer_operator.model import (
    BrokerState,
    BrokerStatus,
    ConditionType,
    ConfigError,
    Reason,
    Verdict,
    WorkerState,
)
from overseer_operator.readiness import CONFIGURATION_REASONS, MonitorView, derive_conditions

CONSUMING = BrokerStatus(BrokerState.CONSUMING, "consuming queue 'q'")
SYNCED = Verdict(True, Reason.SYNCED, "ok")


def view(**changes) -> MonitorView:
    fields = {
        "config_error": None,
        "broker": CONSUMING,
        "manager": SYNCED,
        "counts": {WorkerState.ACTIVE: 3},
        "queue": "q",
        "ingest": Verdict(True, Reason.CAUGHT_UP, "the queue is read as fast as it fills"),
    }
    return MonitorView(**{**fields, **changes})


def verdicts(monitor: MonitorView) -> dict[str, tuple]:
    return {
        type_.value: (verdict.status, verdict.reason)
        for type_, verdict in derive_conditions(monitor).items()
    }


def test_a_working_monitor_is_ready_whatever_the_fleet_looks_like():
    counts = {WorkerState.ACTIVE: 1, WorkerState.INACTIVE: 2, WorkerState.OFFLINE: 5}
    result = verdicts(view(counts=counts))
    assert result == {
        "Ready": (True, Reason.MONITORING),
        "BrokerConnected": (True, Reason.CONSUMING),
        "ManagerSynced": (True, Reason.SYNCED),
        "WorkersHealthy": (False, Reason.WORKERS_OFFLINE),
        "CaughtUp": (True, Reason.CAUGHT_UP),
        "Stalled": (False, Reason.CONFIGURATION_VALID),
    }


@pytest.mark.parametrize(
    ("counts", "expected"),
    [
        ({}, (None, Reason.NO_WORKERS)),
        ({WorkerState.ACTIVE: 2}, (True, Reason.ALL_ACTIVE)),
        ({WorkerState.ACTIVE: 2, WorkerState.INACTIVE: 1}, (False, Reason.WORKERS_INACTIVE)),
    ],
)
def test_workers_healthy(counts, expected):
    assert verdicts(view(counts=counts))["WorkersHealthy"] == expected


def test_nothing_known_yet_is_unknown_not_false():
    result = verdicts(view(broker=None, manager=None, counts={}))
    assert result["Ready"] == (None, Reason.STARTING)
    assert result["BrokerConnected"] == (None, Reason.STARTING)
    assert result["ManagerSynced"] == (None, Reason.STARTING)
    assert result["Stalled"][0] is False


@pytest.mark.parametrize(
    ("changes", "reason", "stalled"),
    [
        (
            {"config_error": ConfigError(Reason.SECRET_NOT_FOUND, "no Secret 'x'")},
            Reason.SECRET_NOT_FOUND,
            True,
        ),
        (
            {"broker": BrokerStatus(BrokerState.QUEUE_NOT_FOUND, "no queue")},
            Reason.QUEUE_NOT_FOUND,
            True,
        ),
        (
            {"broker": BrokerStatus(BrokerState.UNREACHABLE, "refused")},
            Reason.BROKER_UNREACHABLE,
            False,
        ),
        (
            {"manager": Verdict(False, Reason.MANAGER_UNAUTHORIZED, "401")},
            Reason.MANAGER_UNAUTHORIZED,
            True,
        ),
        (
            {"manager": Verdict(False, Reason.MANAGER_UNREACHABLE, "503")},
            Reason.MANAGER_UNREACHABLE,
            False,
        ),
        # A configuration problem is named before the broker trouble it causes.
        (
            {
                "config_error": ConfigError(Reason.INVALID_SPEC, "bad"),
                "broker": BrokerStatus(BrokerState.UNREACHABLE, "refused"),
            },
            Reason.INVALID_SPEC,
            True,
        ),
    ],
)
def test_not_ready_says_why_and_stalls_only_on_configuration(changes, reason, stalled):
    result = derive_conditions(view(**changes))
    ready, stall = result[ConditionType.READY], result[ConditionType.STALLED]
    assert (ready.status, ready.reason) == (False, reason)
    assert stall.status is stalled
    assert (reason in CONFIGURATION_REASONS) is stalled
    if stalled:
        assert (stall.reason, stall.message) == (
            ready.reason,
            ready.message,
        )  # same reason and message, for kstatus and Argo CD


def test_a_manager_that_is_only_slow_leaves_the_monitor_ready():
    behind = Verdict(False, Reason.MANAGER_BEHIND, "7 Manager writes pending, the oldest for 61 s")
    result = verdicts(view(manager=behind))
    assert result["ManagerSynced"] == (False, Reason.MANAGER_BEHIND)
    assert result["Ready"] == (True, Reason.MONITORING)
    assert result["Stalled"] == (False, Reason.CONFIGURATION_VALID)
