"""Waiting on an ``asyncio.Event`` with a timeout, without ever losing a cancellation; bounds
shared by the whole operator (one semaphore per event loop).

On Python 3.11, ``asyncio.wait_for`` returns normally, swallowing the cancellation, when what it
awaits completes in the same loop iteration as its task is cancelled (gh-86296, fixed in 3.12).
A monitor that loses its exchange sets its sweeper's and status writer's events and cancels
them at once: with ``wait_for`` their loops went on and the shutdown waited for them forever.
``asyncio.timeout`` has no such window.
"""

from __future__ import annotations

import asyncio
import weakref

LoopSemaphores = weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore]


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


def loop_semaphore(semaphores: LoopSemaphores, size: int) -> asyncio.Semaphore:
    """The running loop's semaphore in ``semaphores``, made with ``size`` slots the first time."""
    loop = asyncio.get_running_loop()
    semaphore = semaphores.get(loop)
    if semaphore is None:
        semaphore = semaphores[loop] = asyncio.Semaphore(size)
    return semaphore
