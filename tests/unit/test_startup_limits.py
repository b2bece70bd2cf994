"""Many exchanges, one operator: a shared Event budget and a bound on connections in flight."""

from __future__ import annotations

import asyncio
from typing import Any

from overseer_operator import defaults
from overseer_operator.consumer import HeartbeatConsumer
from overseer_operator.events import EventRecorder
from overseer_operator.model import Thresholds, Transition, WorkerState
from overseer_operator.ratelimit import RateLimiter
from overseer_operator.session import broker_slots, startup_slots


class RecordingKube:
    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    async def create_event(self, involved: Any, event_type: str, reason: str, message: str) -> None:
        self.events.append((involved["name"], reason))


def registration(hostname: str) -> Transition:
    return Transition(hostname, "builder", None, WorkerState.ACTIVE, [], 0.0, 0.0)


async def test_exchanges_share_the_operator_event_budget() -> None:
    kube = RecordingKube()
    budget = RateLimiter(15, 60.0, asyncio.get_running_loop().time)
    recorders = [
        EventRecorder(kube, {"namespace": "ns", "name": f"x{index}", "uid": "u"}, budget=budget)  # type: ignore[arg-type]
        for index in range(10)
    ]
    tasks = [asyncio.create_task(recorder.run()) for recorder in recorders]
    for recorder in recorders:  # each exchange registers 10 workers at once
        for worker in range(10):
            recorder.record(registration(f"w{worker}"), Thresholds())
    for _ in range(1000):  # until every queued Event is posted
        if all(recorder._queue.empty() for recorder in recorders):
            break
        await asyncio.sleep(0)
    await asyncio.sleep(0.01)
    for task in tasks:
        task.cancel()
    # 10 exchanges could post 10 each on their own; together they get the 15 of the budget.
    assert len(kube.events) == 15
    assert {name for name, _ in kube.events} == {"x0", "x1"}
    assert recorders[2]._limiter.suppressed == 10  # summed up in its next Event


async def test_connections_in_flight_are_bounded_operator_wide() -> None:
    slots = startup_slots()
    assert slots is startup_slots()  # one per event loop
    in_flight = peak = 0

    async def connect() -> None:
        nonlocal in_flight, peak
        async with startup_slots():
            in_flight += 1
            peak = max(peak, in_flight)
            await asyncio.sleep(0.01)
            in_flight -= 1

    await asyncio.gather(*(connect() for _ in range(50)))
    assert peak == defaults.STARTUP_CONCURRENCY


async def test_exchanges_connect_to_the_broker_together_within_a_bound() -> None:
    """A connect is 8 round trips, each waiting behind the drain of the queues already consumed:
    10 at a time, a restart of 100 exchanges under traffic took 14-30 s until every queue was
    consumed again. A broker that accepts and never answers holds every attempt in flight."""
    assert defaults.BROKER_CONNECT_CONCURRENCY >= 100  # the 100 exchanges, all at once
    accepted: list[asyncio.StreamWriter] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    exchanges = defaults.BROKER_CONNECT_CONCURRENCY + 20
    consumers = [
        HeartbeatConsumer(
            [f"amqp://guest:guest@127.0.0.1:{port}/"],
            f"x{index}.system_modules",
            200,
            lambda body: None,
            lambda status: None,
            connect_slots=broker_slots(),
        )
        for index in range(exchanges)
    ]
    tasks = [asyncio.create_task(consumer.run()) for consumer in consumers]
    try:
        async with asyncio.timeout(10):
            while len(accepted) < defaults.BROKER_CONNECT_CONCURRENCY:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)
        assert len(accepted) == defaults.BROKER_CONNECT_CONCURRENCY  # the rest wait their turn
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for writer in accepted:
            writer.close()
        server.close()


async def test_manager_writes_in_flight_are_bounded_operator_wide() -> None:
    from overseer_operator.manager_writer import write_slots

    assert write_slots() is write_slots()
    assert write_slots().free == defaults.MANAGER_WRITE_CONCURRENCY
