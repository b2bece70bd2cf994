"""``wait_event`` never loses a cancellation that arrives as the event is set (3.11's
``asyncio.wait_for`` does: the sweeper and the status writer of a halted monitor went on), and
``PrioritySlots`` serves its urgent waiters first and never loses a slot to a cancellation."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Awaitable, Callable

import pytest

from overseer_operator.aiotools import PrioritySlots, wait_event


def waiting_loop(wait: Callable[[asyncio.Event], Awaitable[object]], event: asyncio.Event):
    async def loop() -> None:  # the shape of the sweeper and the status writer
        while True:
            await wait(event)
            event.clear()

    return loop


async def cancelled_as_set(wait: Callable[[asyncio.Event], Awaitable[object]]) -> bool:
    """Set the event and cancel the loop in the same step, as ``ExchangeMonitor.halt`` and the
    shutdown after it do; whether the loop ended."""
    event = asyncio.Event()
    task = asyncio.create_task(waiting_loop(wait, event)())
    await asyncio.sleep(0)
    event.set()
    task.cancel()
    await asyncio.wait({task}, timeout=0.5)
    ended = task.done()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return ended


async def test_a_cancellation_as_the_event_is_set_ends_the_loop() -> None:
    assert await cancelled_as_set(lambda event: wait_event(event, 60.0))


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="wait_for was fixed in 3.12")
async def test_the_baseline_wait_for_loses_that_cancellation_on_this_python() -> None:
    async def with_wait_for(event: asyncio.Event) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), 60.0)

    assert not await cancelled_as_set(with_wait_for)


async def test_the_timeout_and_an_event_already_set() -> None:
    event = asyncio.Event()
    assert await wait_event(event, 0.01) is False
    event.set()
    assert await wait_event(event, 0.0) is True


async def taking(slots: PrioritySlots, name: str, order: list[str], *, urgent: bool) -> None:
    async with slots.slot(urgent=urgent):
        order.append(name)
        await asyncio.sleep(0)


async def queued(slots: PrioritySlots, order: list[str], *names: str) -> list[asyncio.Task[None]]:
    """A task per name taking a slot (urgent if it names a verdict), in line in that order."""
    tasks = [
        asyncio.create_task(taking(slots, name, order, urgent=name.startswith("verdict")))
        for name in names
    ]
    await asyncio.sleep(0)
    return tasks


async def test_urgent_waiters_are_served_first_each_kind_in_its_order() -> None:
    slots = PrioritySlots(1)
    order: list[str] = []
    async with slots.slot(urgent=False):  # the only slot is taken: everyone below waits
        tasks = await queued(slots, order, "refresh 1", "verdict 1", "refresh 2", "verdict 2")
    await asyncio.gather(*tasks)
    assert order == ["verdict 1", "verdict 2", "refresh 1", "refresh 2"]
    assert slots.free == 1


async def test_a_slot_handed_to_an_urgent_waiter_is_not_taken_by_a_newcomer() -> None:
    slots = PrioritySlots(1)
    order: list[str] = []
    async with slots.slot(urgent=False):
        [verdict] = await queued(slots, order, "verdict")
    # The slot went to the waiting verdict as it came free: a refresh arriving now waits.
    await taking(slots, "refresh", order, urgent=False)
    await verdict
    assert order == ["verdict", "refresh"]


async def test_a_cancelled_waiter_loses_no_slot() -> None:
    slots = PrioritySlots(1)
    order: list[str] = []
    async with slots.slot(urgent=True):
        [gone] = await queued(slots, order, "verdict gone")
        gone.cancel()  # while waiting
        [handed] = await queued(slots, order, "verdict handed")
    # The slot was handed to `handed` as it is cancelled: it passes on to the next waiter.
    handed.cancel()
    [after] = await queued(slots, order, "refresh after")
    async with asyncio.timeout(5):
        await asyncio.gather(gone, handed, after, return_exceptions=True)
    assert order == ["refresh after"]
    assert slots.free == 1
