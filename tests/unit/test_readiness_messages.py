"""What the conditions say in words (``kubectl describe mx``), not only their reasons."""

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
from overseer_operator.readiness import (
    MonitorView,
    broker_verdict,
    derive_conditions,
    workers_verdict,
)

ACTIVE, INACTIVE, OFFLINE = WorkerState.ACTIVE, WorkerState.INACTIVE, WorkerState.OFFLINE


@pytest.mark.parametrize(
    ("counts", "verdict"),
    [
        ({OFFLINE: 2}, Verdict(False, Reason.WORKERS_OFFLINE, "2 offline, 0 inactive")),
        (
            {OFFLINE: 1, INACTIVE: 3},
            Verdict(False, Reason.WORKERS_OFFLINE, "1 offline, 3 inactive"),
        ),
        ({INACTIVE: 3, ACTIVE: 9}, Verdict(False, Reason.WORKERS_INACTIVE, "3 inactive")),
        ({ACTIVE: 9}, Verdict(True, Reason.ALL_ACTIVE, "9 active")),
        ({}, Verdict(None, Reason.NO_WORKERS, "no heartbeat received yet")),
        (
            {ACTIVE: 0, INACTIVE: 0, OFFLINE: 0},
            Verdict(None, Reason.NO_WORKERS, "no heartbeat received yet"),
        ),
    ],
)
def test_workers_verdicts_in_words(counts, verdict):
    assert workers_verdict(counts) == verdict


def test_broker_verdicts_carry_the_consumers_message():
    assert broker_verdict(None) == Verdict(None, Reason.STARTING, "not connected yet")
    lost = BrokerStatus(BrokerState.UNREACHABLE, "connection to amqp://b/ lost")
    assert broker_verdict(lost) == Verdict(
        False, Reason.BROKER_UNREACHABLE, "connection to amqp://b/ lost"
    )


def view(**changes) -> MonitorView:
    fields = {
        "config_error": None,
        "broker": BrokerStatus(BrokerState.CONSUMING, "consuming queue 'q'"),
        "manager": Verdict(True, Reason.SYNCED, "ok"),
        "counts": {ACTIVE: 1},
        "queue": "q",
        "ingest": None,
    }
    return MonitorView(**{**fields, **changes})


def test_ready_says_which_queue_is_consumed():
    assert derive_conditions(view())[ConditionType.READY] == Verdict(
        True, Reason.MONITORING, "consuming heartbeats from queue 'q'"
    )


def test_ready_repeats_the_first_problem_word_for_word():
    error = ConfigError(Reason.SECRET_NOT_FOUND, "Secret 'x' not found in namespace 'ns'")
    conditions = derive_conditions(view(config_error=error))
    assert conditions[ConditionType.READY] == Verdict(False, error.reason, error.message)
    assert conditions[ConditionType.STALLED] == Verdict(True, error.reason, error.message)
    queue_gone = BrokerStatus(BrokerState.QUEUE_NOT_FOUND, "queue 'q' does not exist")
    assert derive_conditions(view(broker=queue_gone))[ConditionType.READY] == Verdict(
        False, Reason.QUEUE_NOT_FOUND, "queue 'q' does not exist"
    )
    connecting = BrokerStatus(BrokerState.CONNECTING, "connecting")
    assert derive_conditions(view(broker=connecting))[ConditionType.READY] == Verdict(
        None, Reason.STARTING, "connecting to the broker"
    )


def test_unknown_sub_conditions_say_why():
    conditions = derive_conditions(view(manager=None, ingest=None))
    assert conditions[ConditionType.MANAGER_SYNCED] == Verdict(
        None, Reason.STARTING, "no Manager call made yet"
    )
    assert conditions[ConditionType.CAUGHT_UP] == Verdict(
        None, Reason.STARTING, "not consuming yet"
    )
    assert conditions[ConditionType.STALLED] == Verdict(
        False, Reason.CONFIGURATION_VALID, "no configuration problem"
    )
