"""The rule that holds verdicts: draining the start-up backlog, and falling behind the queue."""

from __future__ import annotations

import pytest

from overseer_operator.backlog import LAG_TOLERANCE, LOW_WATER, Backlog
from overseer_operator.model import Reason, Verdict
from tests.fakes import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(100.0)


def deliver(backlog: Backlog, count: int) -> list[bool]:
    return [backlog.delivered() for _ in range(count)]


def test_a_fresh_backlog_is_caught_up(clock):
    backlog = Backlog(clock)
    assert (backlog.draining, backlog.behind, backlog.caught_up) == (False, False, True)
    assert backlog.verdict() == Verdict(
        True, Reason.CAUGHT_UP, "the queue is read as fast as it fills"
    )


def test_draining_ends_when_as_many_messages_as_were_waiting_are_delivered(clock):
    backlog = Backlog(clock)
    backlog.started(3)
    assert (backlog.draining, backlog.caught_up) == (True, False)
    assert deliver(backlog, 2) == [False, False]
    assert backlog.draining
    assert backlog.delivered() is True  # this one ends it
    assert (backlog.draining, backlog.caught_up) == (False, True)
    assert deliver(backlog, 2) == [False, False]  # reported once


def test_draining_ends_on_an_empty_reading(clock):
    backlog = Backlog(clock)
    backlog.started(500)
    deliver(backlog, 10)
    clock.advance(5)
    backlog.read(1)
    assert backlog.draining
    clock.advance(5)
    backlog.read(0)  # FIFO: what was waiting has been read (or removed by the broker)
    assert not backlog.draining
    assert backlog.caught_up


def test_an_empty_queue_at_start_is_not_draining(clock):
    backlog = Backlog(clock)
    backlog.started(0)
    assert not backlog.draining
    assert backlog.delivered() is False


def test_a_restart_drains_again_and_forgets_being_behind(clock):
    backlog = Backlog(clock, low_water=10)
    backlog.started(0)
    clock.advance(5)
    backlog.read(50)
    assert backlog.behind
    backlog.started(4)
    assert (backlog.behind, backlog.draining, backlog.waiting) == (False, True, 4)
    assert deliver(backlog, 4)[-1] is True


def test_draining_verdict_says_how_much_is_left(clock):
    backlog = Backlog(clock)
    backlog.started(5)
    deliver(backlog, 2)
    assert backlog.verdict() == Verdict(
        False,
        Reason.DRAINING_BACKLOG,
        "reading the 5 messages queued before consuming began; "
        "inactive/offline verdicts are held until then",
    )


def test_falling_behind_is_judged_on_the_reading_rate(clock):
    backlog = Backlog(clock, lag_tolerance=5.0, low_water=10)
    backlog.started(0)
    deliver(backlog, 100)
    clock.advance(10)  # 10 messages/s: 50 messages is 5 s of reading
    backlog.read(50)
    assert not backlog.behind
    deliver(backlog, 100)
    clock.advance(10)
    backlog.read(51)
    assert backlog.behind
    assert not backlog.caught_up
    assert backlog.verdict() == Verdict(
        False,
        Reason.FALLING_BEHIND,
        "more messages wait in the queue than are read in 5 s; inactive/offline verdicts are held",
    )


def test_behind_ends_below_half_the_limit_hysteresis(clock):
    backlog = Backlog(clock, lag_tolerance=5.0, low_water=10)
    backlog.started(0)
    deliver(backlog, 100)
    clock.advance(10)
    backlog.read(80)  # limit 50: behind
    assert backlog.behind
    for waiting in (49, 26, 25):
        deliver(backlog, 100)
        clock.advance(10)
        backlog.read(waiting)  # while behind, the limit is 25
        assert backlog.behind is (waiting > 25), waiting
    deliver(backlog, 100)
    clock.advance(10)
    backlog.read(49)  # no longer behind: the full limit applies again
    assert not backlog.behind


def test_a_small_queue_is_never_behind(clock):
    backlog = Backlog(clock)  # an idle fleet reads nothing: rate 0
    backlog.started(0)
    clock.advance(30)
    backlog.read(LOW_WATER)
    assert not backlog.behind
    clock.advance(30)
    backlog.read(LOW_WATER + 1)
    assert backlog.behind
    assert backlog.verdict().reason is Reason.FALLING_BEHIND


def test_a_reading_at_the_same_instant_keeps_the_last_rate(clock):
    backlog = Backlog(clock, low_water=0)
    backlog.started(0)
    deliver(backlog, 20)
    clock.advance(2)  # 10/s
    backlog.read(40)
    assert not backlog.behind
    deliver(backlog, 1000)
    backlog.read(40)  # no time passed: no new rate, no division by zero
    assert not backlog.behind
    backlog.read(51)
    assert backlog.behind


def test_the_verdict_does_not_change_with_the_count(clock):
    """A condition message that moved with every reading would patch the status every 5 s."""
    backlog = Backlog(clock)
    backlog.started(0)
    clock.advance(1)
    backlog.read(7)
    first = backlog.verdict()
    clock.advance(5)
    backlog.read(3)
    assert backlog.verdict() == first
    assert backlog.waiting == 3


def test_defaults():
    assert (LAG_TOLERANCE, LOW_WATER) == (5.0, 100)
