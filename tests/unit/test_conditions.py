"""Conditions with Kubernetes semantics: lastTransitionTime moves only when the status flips."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from overseer_operator.conditions import ConditionSet, status_word
from overseer_operator.model import ConditionType, Reason, Verdict

T0 = datetime(2030, 1, 1, 8, 0, 0, tzinfo=UTC)


class WallClock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def clock() -> WallClock:
    return WallClock()


@pytest.fixture
def conditions(clock: WallClock) -> ConditionSet:
    return ConditionSet(clock)


def by_type(conditions: ConditionSet, generation: int | None = None) -> dict[str, dict]:
    return {c["type"]: c for c in conditions.as_list(generation)}


def test_status_words():
    assert [status_word(v) for v in (True, False, None)] == ["True", "False", "Unknown"]


def test_a_new_condition_is_a_change_stamped_now(conditions, clock):
    assert conditions.set(ConditionType.READY, Verdict(True, Reason.MONITORING, "ok")) is True
    assert by_type(conditions)["Ready"] == {
        "type": "Ready",
        "status": "True",
        "reason": "Monitoring",
        "message": "ok",
        "lastTransitionTime": "2030-01-01T08:00:00Z",
    }


def test_the_same_verdict_again_changes_nothing(conditions, clock):
    conditions.set(ConditionType.READY, Verdict(True, Reason.MONITORING, "ok"))
    clock.advance(60)
    assert conditions.set(ConditionType.READY, Verdict(True, Reason.MONITORING, "ok")) is False
    assert by_type(conditions)["Ready"]["lastTransitionTime"] == "2030-01-01T08:00:00Z"


@pytest.mark.parametrize(
    "verdict",
    [
        Verdict(False, Reason.MONITORING, "ok"),  # only the reason would stay
        Verdict(False, Reason.BROKER_UNREACHABLE, "lost"),
    ],
)
def test_status_flip_moves_the_transition_time(conditions, clock, verdict):
    conditions.set(ConditionType.READY, Verdict(True, Reason.MONITORING, "ok"))
    clock.advance(90)
    assert conditions.set(ConditionType.READY, verdict) is True
    ready = by_type(conditions)["Ready"]
    assert (ready["status"], ready["reason"], ready["message"]) == (
        "False",
        verdict.reason.value,
        verdict.message,
    )
    assert ready["lastTransitionTime"] == "2030-01-01T08:01:30Z"


@pytest.mark.parametrize(
    "verdict",
    [
        Verdict(False, Reason.MANAGER_UNREACHABLE, "down"),  # new reason
        Verdict(False, Reason.BROKER_UNREACHABLE, "still lost, 3rd attempt"),  # new message
    ],
)
def test_a_new_reason_or_message_is_visible_but_keeps_the_time(conditions, clock, verdict):
    conditions.set(ConditionType.READY, Verdict(False, Reason.BROKER_UNREACHABLE, "lost"))
    clock.advance(30)
    assert conditions.set(ConditionType.READY, verdict) is True
    ready = by_type(conditions)["Ready"]
    assert (ready["reason"], ready["message"]) == (verdict.reason.value, verdict.message)
    assert ready["lastTransitionTime"] == "2030-01-01T08:00:00Z"


def test_unknown_to_true_is_a_flip(conditions, clock):
    conditions.set(ConditionType.READY, Verdict(None, Reason.STARTING, "connecting"))
    assert by_type(conditions)["Ready"]["status"] == "Unknown"
    clock.advance(5)
    assert conditions.set(ConditionType.READY, Verdict(True, Reason.MONITORING, "ok"))
    assert by_type(conditions)["Ready"]["lastTransitionTime"] == "2030-01-01T08:00:05Z"


def test_seed_keeps_the_times_users_already_see(conditions, clock):
    conditions.seed(
        [
            {
                "type": "Ready",
                "status": "True",
                "reason": "Monitoring",
                "message": "ok",
                "lastTransitionTime": "2029-12-24T18:00:00Z",
            },
            {"type": "BrokerConnected", "status": "False"},  # written by hand, no time
        ]
    )
    clock.advance(3600)
    assert conditions.set(ConditionType.READY, Verdict(True, Reason.MONITORING, "ok")) is False
    assert conditions.set(ConditionType.READY, Verdict(True, Reason.MONITORING, "restarted"))
    seen = by_type(conditions)
    assert seen["Ready"]["lastTransitionTime"] == "2029-12-24T18:00:00Z"
    assert seen["Ready"]["message"] == "restarted"
    assert seen["BrokerConnected"] == {
        "type": "BrokerConnected",
        "status": "False",
        "reason": "Starting",
        "message": "",
        "lastTransitionTime": "2030-01-01T08:00:00Z",  # seeded "now", not the later flip
    }


def test_seeded_status_is_compared_as_written():
    clock = WallClock()
    conditions = ConditionSet(clock)
    conditions.seed([{"type": "Ready", "lastTransitionTime": "2029-12-24T18:00:00Z"}])
    assert by_type(conditions)["Ready"]["status"] == "Unknown"
    clock.advance(10)
    assert conditions.set(ConditionType.READY, Verdict(None, Reason.STARTING, "again")) is True
    assert by_type(conditions)["Ready"]["lastTransitionTime"] == "2029-12-24T18:00:00Z"


def test_conditions_are_listed_in_the_declared_order_unknown_types_last(conditions):
    conditions.seed([{"type": "Custom", "status": "True", "reason": "Mine"}])
    for type_ in reversed(ConditionType):
        conditions.set(type_, Verdict(True, Reason.MONITORING, ""))
    assert [c["type"] for c in conditions.as_list(None)] == [
        *(type_.value for type_ in ConditionType),
        "Custom",
    ]


def test_observed_generation_is_stamped_on_every_condition_when_known(conditions):
    conditions.set(ConditionType.READY, Verdict(True, Reason.MONITORING, "ok"))
    conditions.set(ConditionType.STALLED, Verdict(False, Reason.CONFIGURATION_VALID, ""))
    assert {c["observedGeneration"] for c in conditions.as_list(7)} == {7}
    assert all("observedGeneration" not in c for c in conditions.as_list(None))
    assert {c["observedGeneration"] for c in conditions.as_list(0)} == {0}
