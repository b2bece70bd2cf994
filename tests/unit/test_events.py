"""What an Event about a worker says, as `kubectl describe mx` shows it."""

from __future__ import annotations

import pytest

from overseer_operator.events import describe_transition
from overseer_operator.model import Thresholds, Transition, WorkerState

THRESHOLDS = Thresholds(600.0, 1200.0)


@pytest.mark.parametrize(
    ("previous", "current", "message"),
    [
        (None, WorkerState.ACTIVE, "worker b1 (builder) is active"),
        (WorkerState.OFFLINE, WorkerState.ACTIVE, "worker b1 (builder) is active again"),
        (
            WorkerState.ACTIVE,
            WorkerState.INACTIVE,
            "worker b1 (builder) is inactive: no heartbeat for 10m",
        ),
        (
            WorkerState.INACTIVE,
            WorkerState.OFFLINE,
            "worker b1 (builder) is offline: no heartbeat for 20m",
        ),
    ],
)
def test_event_messages(previous, current, message):
    transition = Transition("b1", "builder", previous, current, [], 0.0, 0.0)
    assert describe_transition(transition, THRESHOLDS) == message
