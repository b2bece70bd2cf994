"""A mass transition in process: N workers fall silent at once; how long is the event loop stalled?

The real hot path (``FleetTracker`` with its sweeper, the Manager writer, the Event recorder and
the status render) runs on a real event loop; only the far ends are stand-ins (a Manager client
that answers at once, a Kubernetes API that accepts everything, both in process). A ticker task
records the largest gap between its ticks while the sweeper turns N silences into N inactive
transitions, which is the loop stall every other exchange (and the AMQP heartbeats) would see.
The baseline is the same ticker on an idle loop in the same run. The longest pause of CPython's
cyclic garbage collector is reported beside it, and what one full collection costs afterwards
(the operator runs one a minute on a timer: see ``collector``). The operator's collection policy
applies (``--gc default`` leaves CPython's, to compare), and the heartbeats carry their workload as
the decoder's JSON text, as the real ones do.

    .venv/bin/python -m benchmarks.mass_transition [--workers 100000] [--gc operator|default]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import time
from datetime import UTC, datetime
from typing import Any

import httpx
import kopf  # noqa: F401 - part of the operator's start-up heap

from overseer_operator import collector
from overseer_operator.consumer import QueueReading
from overseer_operator.events import EventRecorder
from overseer_operator.kube import KubeApi
from overseer_operator.manager_writer import ManagerWriter
from overseer_operator.model import BrokerState, BrokerStatus, Heartbeat, Thresholds, WorkerState
from overseer_operator.status import MODULES_LIMIT, render_status
from overseer_operator.tracker import FleetTracker

INACTIVE_AFTER = 2.0


class InstantManager:
    """The writer's client: every call succeeds at once."""

    async def upsert_module(self, *args: Any) -> None:
        await asyncio.sleep(0)

    async def delete_module(self, *args: Any) -> bool:
        await asyncio.sleep(0)
        return True


async def largest_gap(until: asyncio.Event, period: float = 0.001) -> float:
    loop = asyncio.get_running_loop()
    worst, last = 0.0, loop.time()
    while not until.is_set():
        await asyncio.sleep(period)
        now = loop.time()
        worst, last = max(worst, now - last - period), now
    return worst


class GcPauses:
    """The longest pause of the cyclic garbage collector while installed."""

    def __init__(self) -> None:
        self.longest = 0.0
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.longest = max(self.longest, time.perf_counter() - self._started)


async def measure(workers: int) -> dict[str, float]:
    loop = asyncio.get_running_loop()
    idle_done = asyncio.Event()
    idle = asyncio.create_task(largest_gap(idle_done))
    await asyncio.sleep(0.5)
    idle_done.set()
    idle_gap = await idle

    kube = KubeApi(
        httpx.AsyncClient(
            base_url="http://apiserver",
            transport=httpx.MockTransport(lambda request: httpx.Response(201, json={})),
        )
    )
    writer = ManagerWriter(
        "1",
        300.0,
        loop.time,
        lambda verdict: None,
        ("bench", "mass"),
        active_record=lambda hostname: tracker.fleet.active_record(hostname),
    )
    writer.attach(InstantManager())  # type: ignore[arg-type]
    events = EventRecorder(kube, {"namespace": "bench", "name": "mass", "uid": "u"})
    tracker = FleetTracker(("bench", "mass"), writer, events, lambda: None, loop.time)
    tracker.set_thresholds(Thresholds(INACTIVE_AFTER, 3600.0))
    tracker.on_queue_reading(QueueReading(0, 0, started=True))
    tracker.on_broker_status(BrokerStatus(BrokerState.CONSUMING, "bench"))
    workload = '[{"id":1,"name":"build"}]'
    for index in range(workers):
        tracker.observe(Heartbeat(f"worker-{index}", "builder", "active", [], workload))
    tasks = [
        asyncio.create_task(task()) for task in (tracker.sweep_forever, writer.run, events.run)
    ]
    await asyncio.sleep(0.2)  # the registrations written
    done = asyncio.Event()
    gap = asyncio.create_task(largest_gap(done))
    gc_pauses = GcPauses()
    gc.callbacks.append(gc_pauses)
    started = time.perf_counter()
    while tracker.fleet.counts[WorkerState.INACTIVE] < workers:  # noqa: ASYNC110 - polled
        await asyncio.sleep(0.01)
    swept = time.perf_counter() - started - INACTIVE_AFTER + 0.2
    while writer.pending:  # noqa: ASYNC110 - polled
        await asyncio.sleep(0.01)
    written = time.perf_counter() - started - INACTIVE_AFTER + 0.2
    done.set()
    mass_gap = await gap
    gc.callbacks.remove(gc_pauses)
    full_collection = collector.FullCollections().collect()
    render_started = time.perf_counter()
    render_status(tracker.snapshot(MODULES_LIMIT), [], 1, loop.time(), datetime.now(UTC))
    render = time.perf_counter() - render_started
    for task in tasks:
        task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.gather(*tasks)
    await kube.aclose()
    return {
        "idle_gap_ms": idle_gap * 1000,
        "mass_gap_ms": mass_gap * 1000,
        "longest_gc_pause_ms": gc_pauses.longest * 1000,
        "timer_full_collection_ms": full_collection * 1000,
        "all_inactive_after_threshold_s": swept,
        "all_written_after_threshold_s": written,
        "status_render_ms": render * 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=100_000)
    parser.add_argument(
        "--gc",
        choices=["operator", "default"],
        default="operator",
        help="the operator's collection policy, or CPython's default to compare",
    )
    options = parser.parse_args()
    if options.gc == "operator":
        collector.freeze_startup_heap()
        collector.take_over_full_collections()
    result = asyncio.run(measure(options.workers))
    print(f"workers: {options.workers}")
    for key, value in result.items():
        print(f"  {key}: {value:.1f}")


if __name__ == "__main__":
    main()
