"""Worker Events are rate-limited: a fleet-wide incident is not an Event storm, and what was held
back is summed up in one Event."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from overseer_operator.events import EventRecorder
from overseer_operator.kube import KubeApiError
from overseer_operator.model import Thresholds, Transition, WorkerState
from overseer_operator.ratelimit import RateLimiter
from tests.fakes import FakeClock
from tests.kube_fakes import FakeKube
from tests.metering import sample

THRESHOLDS = Thresholds(600.0, 1200.0)
INVOLVED = {"namespace": "ns", "name": "events-mx", "uid": "u-1"}


def went_inactive(hostname: str) -> Transition:
    return Transition(hostname, "builder", WorkerState.ACTIVE, WorkerState.INACTIVE, [], 0.0, 0.0)


@pytest.fixture
def kube() -> FakeKube:
    return FakeKube()


@contextlib.asynccontextmanager
async def running_recorder(kube: FakeKube) -> AsyncIterator[EventRecorder]:
    """Built inside the test: looptime's clock starts with the test, not with its fixtures."""
    recorder = EventRecorder(kube, INVOLVED, capacity=10, per_seconds=60.0)
    task = asyncio.create_task(recorder.run())
    try:
        yield recorder
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@pytest.mark.looptime
async def test_at_most_capacity_events_a_minute(kube):
    async with running_recorder(kube) as recorder:
        for index in range(25):
            recorder.record(went_inactive(f"w{index}"), THRESHOLDS)
        await asyncio.sleep(0.1)
        assert len(kube.events) == 10
        assert [reason for _, reason, _ in kube.events] == ["WorkerInactive"] * 10
        assert kube.events[0] == (
            "Warning",
            "WorkerInactive",
            "worker w0 (builder) is inactive: no heartbeat for 10m",
        )


@pytest.mark.looptime
async def test_the_suppressed_count_is_posted_once_a_token_is_back(kube):
    async with running_recorder(kube) as recorder:
        for index in range(25):
            recorder.record(went_inactive(f"w{index}"), THRESHOLDS)
        await asyncio.sleep(3)  # less than a token's worth (6 s): still suppressed
        recorder.record(went_inactive("w25"), THRESHOLDS)
        await asyncio.sleep(0.1)
        assert len(kube.events) == 10
        await asyncio.sleep(4)  # a token is back at 6 s: the summary takes it
        assert len(kube.events) == 11
        event_type, reason, message = kube.events[10]
        assert (event_type, reason) == ("Warning", "TransitionsSuppressed")
        assert message.startswith("16 more worker transitions were not posted as Events")
        await asyncio.sleep(6)  # the next token
        recorder.record(went_inactive("w26"), THRESHOLDS)
        await asyncio.sleep(0.1)
        assert kube.events[11][2] == "worker w26 (builder) is inactive: no heartbeat for 10m"
        assert len(kube.events) == 12


@pytest.mark.looptime
async def test_a_steady_trickle_is_never_suppressed(kube):
    async with running_recorder(kube) as recorder:
        for index in range(30):
            recorder.record(went_inactive(f"w{index}"), THRESHOLDS)
            await asyncio.sleep(6)
        assert len(kube.events) == 30
        assert all(reason == "WorkerInactive" for _, reason, _ in kube.events)


@pytest.mark.looptime
async def test_a_failed_post_is_counted_and_does_not_stop_the_recorder(kube):
    async with running_recorder(kube) as recorder:
        labels = {"namespace": "ns", "name": "events-mx", "kind": "event"}
        failures = sample("overseer_kubernetes_writes_total", **labels, outcome="failure")
        kube.fail_next(KubeApiError("boom", 500))
        recorder.record(went_inactive("a"), THRESHOLDS)
        recorder.record(went_inactive("b"), THRESHOLDS)
        await asyncio.sleep(0.1)
        assert [m.split()[1] for _, _, m in kube.events] == ["b"]
        assert (
            sample("overseer_kubernetes_writes_total", **labels, outcome="failure") == failures + 1
        )


def test_the_token_bucket_refills_at_its_rate():
    clock = FakeClock()
    limiter = RateLimiter(2, 10.0, clock)  # 2 per 10 s: one token every 5 s
    assert [limiter.allow() for _ in range(3)] == [True, True, False]
    clock.advance(4.9)
    assert limiter.allow() is False
    clock.advance(0.2)
    assert limiter.allow() is True
    clock.advance(100)  # never more than the capacity
    assert [limiter.allow() for _ in range(3)] == [True, True, False]
    assert limiter.take_suppressed() == 3
    assert limiter.take_suppressed() == 0


@pytest.mark.looptime
async def test_a_burst_is_summed_up_even_when_nothing_follows(kube):
    async with running_recorder(kube) as recorder:
        for index in range(25):
            recorder.record(went_inactive(f"w{index}"), THRESHOLDS)
        await asyncio.sleep(120)  # the bucket has long refilled
    assert [reason for _, reason, _ in kube.events][-1] == "TransitionsSuppressed"
