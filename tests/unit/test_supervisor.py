"""Background tasks cannot die silently: a crash is counted, reported and the task restarted."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from overseer_operator.backoff import Backoff
from overseer_operator.supervisor import Supervisor
from tests.metering import sample


class Flaky:
    """A task body that raises the first ``failures`` times it runs, then returns."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.runs = 0
        self.finished = asyncio.Event()

    async def __call__(self) -> None:
        self.runs += 1
        await asyncio.sleep(0)
        if self.runs <= self.failures:
            raise RuntimeError(f"crash {self.runs}")
        self.finished.set()


@pytest.mark.looptime
async def test_a_crashing_task_is_restarted_counted_and_reported():
    labels = {"namespace": "ns", "name": "sup", "task": "writer"}
    before = sample("overseer_task_crashes_total", **labels)
    reports: list[tuple[str, str]] = []
    supervisor = Supervisor(("ns", "sup"), lambda name, error: reports.append((name, str(error))))
    flaky = Flaky(failures=3)
    supervisor.spawn("writer", flaky)
    await asyncio.wait_for(flaky.finished.wait(), timeout=60)
    assert flaky.runs == 4
    assert reports == [("writer", "crash 1"), ("writer", "crash 2"), ("writer", "crash 3")]
    assert sample("overseer_task_crashes_total", **labels) == before + 3
    await supervisor.aclose()


@pytest.mark.looptime
async def test_restarts_back_off():
    loop = asyncio.get_running_loop()
    starts: list[float] = []

    async def crashing() -> None:
        starts.append(loop.time())
        raise ValueError("again")

    supervisor = Supervisor(("ns", "sup-backoff"), restart_after=1.0)
    supervisor.spawn("loop", crashing)
    await asyncio.sleep(100)
    await supervisor.aclose()
    gaps = [later - earlier for earlier, later in itertools.pairwise(starts)]
    assert 5 <= len(starts) <= 12
    assert all(0.5 <= gap <= 60 for gap in gaps)
    assert gaps[4] > gaps[0]


@pytest.mark.looptime
async def test_a_task_that_returns_is_not_restarted_and_aclose_cancels_the_rest():
    supervisor = Supervisor(("ns", "sup-close"))
    done = Flaky(failures=0)
    cancelled = asyncio.Event()

    async def forever() -> None:
        try:
            await asyncio.sleep(10**9)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    supervisor.spawn("once", done)
    supervisor.spawn("forever", forever)
    await asyncio.sleep(10)
    assert done.runs == 1
    await supervisor.aclose()
    assert cancelled.is_set()
    labels = {"namespace": "ns", "name": "sup-close", "task": "forever"}
    assert sample("overseer_task_crashes_total", **labels) == 0  # cancelling is no crash


class SwallowsCancellation(Exception):
    """What some libraries raise when the task awaiting them is cancelled."""


async def cancellation_turned_into_an_error() -> None:
    try:
        await asyncio.sleep(10**9)
    except asyncio.CancelledError:
        raise SwallowsCancellation from None


@pytest.mark.looptime
async def test_a_cancellation_turned_into_an_error_stops_the_task_instead_of_a_restart():
    """Closing a session waits for its tasks: a task restarted after its own cancellation (or a
    retry loop that retried it) made that wait last forever."""
    supervisor = Supervisor(("ns", "sup-swallow"))
    supervisor.spawn("swallows", cancellation_turned_into_an_error)
    await asyncio.sleep(1)
    async with asyncio.timeout(5):
        await supervisor.aclose()
    labels = {"namespace": "ns", "name": "sup-swallow", "task": "swallows"}
    assert sample("overseer_task_crashes_total", **labels) == 0


@pytest.mark.looptime
async def test_a_retry_loop_stops_when_its_cancellation_became_an_error():
    backoff = Backoff(1.0)
    attempts = 0

    async def retry_forever() -> None:
        nonlocal attempts
        while True:
            attempts += 1
            try:
                await cancellation_turned_into_an_error()
            except SwallowsCancellation:
                await backoff.wait()

    task = asyncio.create_task(retry_forever())
    await asyncio.sleep(1)
    task.cancel()
    async with asyncio.timeout(60):
        with pytest.raises(asyncio.CancelledError):
            await task
    assert attempts == 1


async def test_aclose_cancels_again_a_task_that_swallowed_its_cancellation():
    """A task body that lost its first cancellation (a library turned it into a value, or 3.11's
    wait_for dropped it) and went back to waiting: one cancel is not enough, aclose must not
    wait for it forever."""
    swallowed = asyncio.Event()

    async def deaf() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            asyncio.current_task().uncancel()  # as if it never came
            swallowed.set()
        await asyncio.Event().wait()

    supervisor = Supervisor(("ns", "deaf"))
    supervisor.spawn("deaf", deaf)
    await asyncio.sleep(0)
    await asyncio.wait_for(supervisor.aclose(), timeout=5)
    assert swallowed.is_set()
