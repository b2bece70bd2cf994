"""The MessagingExchange status: what it shows, and how rarely it is written."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from overseer_operator.fleet import Fleet
from overseer_operator.kube import KubeApiError
from overseer_operator.model import FleetSnapshot, Heartbeat, Thresholds, WorkerState, WorkerView
from overseer_operator.status import StatusWriter, render_status
from tests.fakes import FakeClock
from tests.kube_fakes import FakeKube
from tests.metering import sample

ACTIVE, INACTIVE, OFFLINE = WorkerState.ACTIVE, WorkerState.INACTIVE, WorkerState.OFFLINE
WALL = datetime(2030, 5, 17, 12, 0, 0, tzinfo=UTC)
NOW = 10_000.0  # the monotonic clock at WALL


def beat(hostname: str, module_type: str = "builder") -> Heartbeat:
    return Heartbeat(hostname, module_type, "active", [])


def snapshot(*workers: WorkerView, last: float | None = None) -> FleetSnapshot:
    counts = dict.fromkeys(WorkerState, 0)
    for worker in workers:
        counts[worker.state] += 1
    return FleetSnapshot(counts, last, list(workers))


# render_status


def test_counts_are_complete_when_the_modules_list_is_cut_worst_first():
    clock = FakeClock(NOW - 3000)
    fleet = Fleet(Thresholds(600, 1200, 3600), clock)
    for hostname in ("a1", "a2", "i1", "o1"):
        fleet.observe(beat(hostname))
    clock.advance(700)  # everybody inactive
    fleet.sweep()
    fleet.observe(beat("a1"))
    fleet.observe(beat("a2"))
    clock.advance(600)  # i1 and o1 offline by now; a1/a2 beat 600 s ago: inactive
    fleet.observe(beat("i1"))
    fleet.sweep()
    clock.advance(10)
    fleet.observe(beat("a1"))
    fleet.observe(beat("a2"))
    fleet.observe(beat("late"))
    fleet.sweep()
    status = render_status(fleet.snapshot(2), [], 3, clock(), WALL)
    assert status["workers"] == {"total": 5, "active": 4, "inactive": 0, "offline": 1}
    assert [(m["hostname"], m["state"]) for m in status["modules"]] == [
        ("o1", "offline"),
        ("i1", "active"),  # then the longest silent of the active
    ]
    assert status["observedGeneration"] == 3


def test_states_come_worst_first_inactive_before_active():
    workers = [
        WorkerView("o", "builder", OFFLINE, 1.0, 1.0),
        WorkerView("i", "builder", INACTIVE, 2.0, 2.0),
        WorkerView("a", "builder", ACTIVE, 3.0, 3.0),
    ]
    status = render_status(snapshot(*workers, last=3.0), [], None, NOW, WALL)
    assert [m["state"] for m in status["modules"]] == ["offline", "inactive", "active"]
    assert status["workers"] == {"total": 3, "active": 1, "inactive": 1, "offline": 1}


def test_heartbeat_times_are_wall_times_of_the_monotonic_ones():
    worker = WorkerView("w1", "deployer", ACTIVE, NOW - 90, NOW - 90)
    status = render_status(snapshot(worker, last=NOW - 5), [], None, NOW, WALL)
    assert status["modules"] == [
        {
            "hostname": "w1",
            "type": "deployer",
            "state": "active",
            "lastHeartbeatTime": "2030-05-17T11:58:30Z",
        }
    ]
    assert status["lastHeartbeatTime"] == "2030-05-17T11:59:55Z"
    assert "observedGeneration" not in status


def test_a_moment_ahead_of_now_is_shown_as_now():
    worker = WorkerView("w1", "deployer", ACTIVE, NOW + 30, NOW + 30)
    status = render_status(snapshot(worker, last=NOW + 30), [], None, NOW, WALL)
    assert status["lastHeartbeatTime"] == "2030-05-17T12:00:00Z"
    assert status["modules"][0]["lastHeartbeatTime"] == "2030-05-17T12:00:00Z"


def test_a_seeded_worker_shows_its_proven_time_or_none_never_the_restart():
    proven = WALL - timedelta(minutes=7)
    workers = [
        WorkerView("proven", "builder", ACTIVE, NOW, None),
        WorkerView("unproven", "builder", ACTIVE, NOW, None),
    ]
    heard = {"proven": proven}.get
    status = render_status(snapshot(*workers), [], 1, NOW, WALL, heard)
    by_host = {m["hostname"]: m for m in status["modules"]}
    assert by_host["proven"]["lastHeartbeatTime"] == "2030-05-17T11:53:00Z"
    assert "lastHeartbeatTime" not in by_host["unproven"]
    assert "lastHeartbeatTime" not in status  # nobody was heard since the restart


def test_a_heard_worker_ignores_its_seeded_time():
    worker = WorkerView("w1", "builder", ACTIVE, NOW - 10, NOW - 10)
    status = render_status(snapshot(worker, last=NOW - 10), [], 1, NOW, WALL, lambda h: WALL)
    assert status["modules"][0]["lastHeartbeatTime"] == "2030-05-17T11:59:50Z"


def test_counts_missing_from_a_snapshot_are_zero():
    partial = FleetSnapshot({INACTIVE: 2}, None, [])
    status = render_status(partial, [], None, NOW, WALL)
    assert status["workers"] == {"total": 2, "active": 0, "inactive": 2, "offline": 0}


def test_an_empty_fleet_shows_zero_counts_and_the_conditions():
    conditions = [{"type": "Ready", "status": "True"}]
    status = render_status(snapshot(), conditions, 0, NOW, WALL)
    assert status == {
        "conditions": conditions,
        "workers": {"total": 0, "active": 0, "inactive": 0, "offline": 0},
        "modules": [],
        "observedGeneration": 0,
    }


# StatusWriter


class Rendered:
    """What the monitor would render; tests change it between writes."""

    def __init__(self) -> None:
        self.count = 1
        self.heartbeat = "2030-05-17T12:00:00Z"
        self.module_type = "b"
        self.rotating = False  # the listed active worker changes each second, as past 50 workers
        self.conditions: list[dict[str, Any]] = []

    def __call__(self) -> dict[str, Any]:
        beat = self.heartbeat
        return {
            "conditions": self.conditions,
            "workers": {"total": self.count, "active": self.count, "inactive": 0, "offline": 0},
            "modules": [
                {
                    "hostname": f"w{int(asyncio.get_running_loop().time())}"
                    if self.rotating
                    else "w1",
                    "type": self.module_type,
                    "state": "active",
                    "lastHeartbeatTime": beat,
                }
            ],
            "lastHeartbeatTime": self.heartbeat,
        }


@pytest.fixture
def kube() -> FakeKube:
    return FakeKube()


@pytest.fixture
def rendered() -> Rendered:
    return Rendered()


@contextlib.asynccontextmanager
async def started(writer: StatusWriter) -> AsyncIterator[StatusWriter]:
    task = asyncio.create_task(writer.run())
    try:
        yield writer
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@pytest.fixture
async def running(kube: FakeKube, rendered: Rendered) -> AsyncIterator[StatusWriter]:
    writer = StatusWriter(
        kube, "ns", "st", rendered, min_interval=1.0, refresh_interval=60.0, retry_interval=5.0
    )
    async with started(writer):
        yield writer


@pytest.mark.looptime
async def test_a_burst_of_changes_is_one_patch(running, kube, rendered):
    await asyncio.sleep(0.5)
    assert len(kube.patches) == 1  # the first status, at once
    for count in range(2, 12):
        rendered.count = count
        running.mark_dirty()
        await asyncio.sleep(0.05)
    await asyncio.sleep(2)
    assert [patch["workers"]["total"] for patch in kube.patches] == [1, 11]


@pytest.mark.looptime
async def test_changes_further_apart_than_the_minimum_interval_are_each_written(
    running, kube, rendered
):
    await asyncio.sleep(0.5)
    for count in (2, 3, 4):
        rendered.count = count
        running.mark_dirty()
        await asyncio.sleep(1.5)
    assert [patch["workers"]["total"] for patch in kube.patches] == [1, 2, 3, 4]


@pytest.mark.looptime(start=100_000)  # a loop clock far from 0, as in production
async def test_heartbeat_times_alone_wait_for_the_refresh_interval(running, kube, rendered):
    await asyncio.sleep(0.5)
    rendered.heartbeat = "2030-05-17T12:00:30Z"
    running.mark_dirty()
    await asyncio.sleep(30)
    assert len(kube.patches) == 1
    await asyncio.sleep(31)  # past the refresh interval since the first patch
    assert len(kube.patches) == 2
    assert kube.patches[-1]["lastHeartbeatTime"] == "2030-05-17T12:00:30Z"
    assert kube.patches[-1]["modules"][0]["lastHeartbeatTime"] == "2030-05-17T12:00:30Z"


async def test_a_steady_status_is_neither_rewritten_nor_rendered_in_a_loop(kube):
    """Real time, short intervals: an idle exchange (nothing changes, not even heartbeat times)
    must cost about one render per refresh interval, not a busy loop."""
    renders = 0

    def render() -> dict[str, Any]:
        nonlocal renders
        renders += 1
        return {"conditions": [], "workers": {"total": 0}, "modules": []}

    writer = StatusWriter(kube, "ns", "idle", render, min_interval=0.01, refresh_interval=0.05)
    async with started(writer):
        await asyncio.sleep(0.5)
    assert len(kube.patches) == 1
    assert renders <= 0.5 / 0.05 + 5


@pytest.mark.looptime
async def test_a_condition_change_is_written_at_once(running, kube, rendered):
    await asyncio.sleep(0.5)
    rendered.conditions = [{"type": "Ready", "status": "False"}]
    running.mark_dirty()
    await asyncio.sleep(1.0)
    assert len(kube.patches) == 2


@pytest.mark.looptime(start=100_000)
async def test_write_if_due_compares_with_what_was_written(kube, rendered):
    writer = StatusWriter(kube, "ns", "st", rendered, refresh_interval=60.0)
    loop = asyncio.get_running_loop()
    assert await writer.write_if_due() is True
    assert await writer.write_if_due() is False  # nothing changed
    rendered.heartbeat = "2030-05-17T12:00:40Z"
    assert await writer.write_if_due() is False  # only heartbeat times, too early
    start = loop.time()
    await asyncio.sleep(60)
    assert loop.time() - start == 60
    assert await writer.write_if_due() is True  # now refreshed
    await asyncio.sleep(60)
    assert await writer.write_if_due() is False  # refresh due, but nothing differs


@pytest.mark.looptime
async def test_a_deleted_resource_is_not_an_error_and_counts_as_a_failure(kube, rendered):
    writer = StatusWriter(kube, "ns", "gone", rendered)
    labels = {"namespace": "ns", "name": "gone", "kind": "status"}
    failures = sample("overseer_kubernetes_writes_total", **labels, outcome="failure")
    successes = sample("overseer_kubernetes_writes_total", **labels, outcome="success")
    kube.fail_next(KubeApiError("not found", 404))
    assert await writer.write_if_due() is False
    assert kube.patches == []
    assert sample("overseer_kubernetes_writes_total", **labels, outcome="failure") == failures + 1
    assert await writer.write_if_due() is True  # it was not taken as written
    assert sample("overseer_kubernetes_writes_total", **labels, outcome="success") == successes + 1


@pytest.mark.looptime
async def test_other_failures_raise_and_the_loop_retries_later(kube, rendered):
    labels = {"namespace": "ns", "name": "flaky", "kind": "status"}
    failures = sample("overseer_kubernetes_writes_total", **labels, outcome="failure")
    writer = StatusWriter(kube, "ns", "flaky", rendered, retry_interval=5.0)
    kube.fail_next(KubeApiError("boom", 500))
    with pytest.raises(KubeApiError):
        await writer.write_if_due()
    kube.fail_next(KubeApiError("boom", 500), KubeApiError("connection refused", 0))
    async with started(writer):
        await asyncio.sleep(4)
        assert kube.patches == []  # the second failure, then waiting out the retry interval
        await asyncio.sleep(10)
        assert len(kube.patches) == 1
    assert sample("overseer_kubernetes_writes_total", **labels, outcome="failure") == failures + 3


@pytest.mark.looptime(start=100_000)
async def test_which_active_workers_are_listed_waits_for_the_refresh_interval(
    running, kube, rendered
):
    """Past 50 workers the oldest-heard active ones are listed; in a healthy fleet they change
    with every heartbeat, which must not be a patch each time (1,000 workers: one every 1.5 s)."""
    rendered.rotating = True
    await asyncio.sleep(0.5)
    assert len(kube.patches) == 1
    for _ in range(44):  # 66 s of heartbeats, each changing who is listed
        running.mark_dirty()
        await asyncio.sleep(1.5)
    assert len(kube.patches) == 2  # the first, and the refresh a minute later with the new list
    rendered.count = 2  # a significant change is still written at once
    running.mark_dirty()
    await asyncio.sleep(1.5)
    assert len(kube.patches) == 3


@pytest.mark.looptime
async def test_a_listed_active_worker_that_changed_is_written_at_once(running, kube, rendered):
    await asyncio.sleep(0.5)
    rendered.module_type = "deployer"
    running.mark_dirty()
    await asyncio.sleep(1.5)
    assert [patch["modules"][0]["type"] for patch in kube.patches] == ["b", "deployer"]


@pytest.mark.looptime
async def test_a_fresh_write_includes_heartbeat_times_at_once(kube, rendered):
    """The last status before a handover is the next owner's evidence of who was heard when."""
    writer = StatusWriter(kube, "ns", "fresh", rendered, min_interval=1.0, refresh_interval=60.0)
    assert await writer.write_if_due()
    rendered.heartbeat = "2030-05-17T12:00:10Z"
    assert not await writer.write_if_due()  # heartbeat times alone wait for the refresh
    assert await writer.write_if_due(fresh=True)
    assert kube.patches[-1]["modules"][0]["lastHeartbeatTime"] == "2030-05-17T12:00:10Z"
    assert not await writer.write_if_due(fresh=True)  # nothing new: nothing written


@pytest.mark.looptime
async def test_a_halted_writer_writes_nothing_more_not_even_a_fresh_final_status(kube, rendered):
    writer = StatusWriter(kube, "ns", "st", rendered, refresh_interval=60.0)
    assert await writer.write_if_due() is True
    writer.halt()  # this replica lost the exchange
    rendered.count = 7
    assert await writer.write_if_due() is False
    assert await writer.write_if_due(fresh=True) is False
    assert len(kube.patches) == 1


@pytest.mark.looptime
async def test_the_first_patch_waits_until_the_start_has_settled(kube, rendered):
    """A restarted monitor knows only the workers the old status listed until the Manager's list
    arrives: nothing is written before, and the first patch has the whole fleet."""
    settled = False
    writer = StatusWriter(kube, "ns", "st", rendered, settled=lambda: settled, start_hold=10.0)
    async with started(writer):
        rendered.count = 50
        writer.mark_dirty()
        await asyncio.sleep(3)
        assert kube.patches == []
        rendered.count, settled = 1001, True
        writer.mark_dirty()
        await asyncio.sleep(0.5)
        assert [patch["workers"]["total"] for patch in kube.patches] == [1001]


@pytest.mark.looptime
async def test_a_start_that_does_not_settle_is_written_after_the_hold(kube, rendered):
    writer = StatusWriter(kube, "ns", "st", rendered, settled=lambda: False, start_hold=10.0)
    async with started(writer):
        await asyncio.sleep(9.5)
        assert kube.patches == []
        await asyncio.sleep(1)
        assert len(kube.patches) == 1
        rendered.count = 2  # and from then on as usual
        writer.mark_dirty()
        await asyncio.sleep(1.5)
        assert len(kube.patches) == 2
