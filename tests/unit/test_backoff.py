"""One retry pacing for every loop: exponential, capped, jittered within [ceiling/2, ceiling]."""

from __future__ import annotations

import pytest

from overseer_operator import defaults
from overseer_operator.backoff import Backoff
from tests.fakes import Sleeps


def delays(backoff: Backoff, count: int) -> list[float]:
    return [backoff.next_delay() for _ in range(count)]


def test_delays_double_up_to_the_cap_at_full_jitter():
    backoff = Backoff(1.0, 10.0, jitter=lambda: 1.0)
    assert delays(backoff, 6) == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert backoff.failures == 6


def test_no_jitter_is_half_the_ceiling_never_zero():
    backoff = Backoff(2.0, 60.0, jitter=lambda: 0.0)
    assert delays(backoff, 3) == [1.0, 2.0, 4.0]


def test_jitter_scales_within_the_ceiling():
    backoff = Backoff(4.0, 60.0, jitter=lambda: 0.5)
    assert backoff.next_delay() == 3.0  # 4 * (0.5 + 0.25)


def test_reset_starts_from_the_base_again():
    backoff = Backoff(1.0, 60.0, jitter=lambda: 1.0)
    delays(backoff, 4)
    backoff.reset()
    assert backoff.failures == 0
    assert backoff.next_delay() == 1.0


def test_a_long_outage_stays_at_the_cap_without_overflow():
    backoff = Backoff(0.5, jitter=lambda: 1.0)
    assert delays(backoff, 2000)[-1] == defaults.MAX_BACKOFF


def test_the_default_jitter_stays_in_range():
    backoff = Backoff(8.0, 8.0)
    assert all(4.0 <= delay <= 8.0 for delay in delays(backoff, 200))
    assert len(set(delays(backoff, 50))) > 1


async def test_wait_sleeps_the_delay_it_returns():
    sleeps = Sleeps()
    backoff = Backoff(1.0, 60.0, jitter=lambda: 1.0, sleep=sleeps)
    assert [await backoff.wait() for _ in range(3)] == [1.0, 2.0, 4.0]
    assert sleeps == [1.0, 2.0, 4.0]


@pytest.mark.parametrize(("base", "cap"), [(0.0, 1.0), (-1.0, 1.0), (2.0, 1.0)])
def test_nonsense_settings_are_refused(base, cap):
    with pytest.raises(ValueError):
        Backoff(base, cap)


def test_base_equal_to_cap_is_allowed():
    assert Backoff(3.0, 3.0, jitter=lambda: 1.0).next_delay() == 3.0
