"""Waiting on an ``asyncio.Event`` with a timeout, without ever losing a cancellation; bounds
shared by the whole operator (one semaphore per event loop), one of them with a priority.

On Python 3.11, ``asyncio.wait_for`` returns normally, swallowing the cancellation, when what it
awaits completes in the same loop iteration as its task is cancelled (gh-86296, fixed in 3.12).
A monitor that loses its exchange sets its sweeper's and status writer's events and cancels
them at once: with ``wait_for`` their loops went on and the shutdown waited for them forever.
``asyncio.timeout`` has no such window.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import TypeVar

LoopSemaphores = weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore]
_Shared = TypeVar("_Shared")


async def wait_event(event: asyncio.Event, timeout: float | None) -> bool:  # noqa: ASYNC109
    """Until ``event`` is set (True) or ``timeout`` seconds have passed (False)."""
    if event.is_set():
        return True
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
    except TimeoutError:
        return False
    return True


def per_loop(
    instances: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Shared],
    make: Callable[[], _Shared],
) -> _Shared:
    """The running loop's entry in ``instances``, made by ``make`` the first time."""
    loop = asyncio.get_running_loop()
    instance = instances.get(loop)
    if instance is None:
        instance = instances[loop] = make()
    return instance


def loop_semaphore(semaphores: LoopSemaphores, size: int) -> asyncio.Semaphore:
    """The running loop's semaphore in ``semaphores``, made with ``size`` slots the first time."""
    return per_loop(semaphores, lambda: asyncio.Semaphore(size))


class PrioritySlots:
    """A bound on work in flight whose urgent waiters are always served before the others (each
    kind first come, first served). ``asyncio.Semaphore`` has one line: Manager refreshes queued
    for a write slot went before the verdicts that queued after them."""

    def __init__(self, size: int) -> None:
        self._free = size
        self._urgent: deque[asyncio.Future[None]] = deque()
        self._others: deque[asyncio.Future[None]] = deque()

    @property
    def free(self) -> int:
        return self._free

    @contextlib.asynccontextmanager
    async def slot(self, *, urgent: bool) -> AsyncIterator[None]:
        await self._acquire(urgent)
        try:
            yield
        finally:
            self._release()

    async def _acquire(self, urgent: bool) -> None:
        if self._free:  # then nobody waits: a slot coming free goes to a waiter first
            self._free -= 1
            return
        waiter = asyncio.get_running_loop().create_future()
        (self._urgent if urgent else self._others).append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._release()  # handed a slot as it was cancelled: pass it on
            raise  # a cancelled waiter stays in its line, skipped by _release

    def _release(self) -> None:
        """Hand the slot to the first live waiter, urgent first, or keep it free."""
        for line in (self._urgent, self._others):
            while line:
                waiter = line.popleft()
                if not waiter.done():
                    waiter.set_result(None)
                    return
        self._free += 1
