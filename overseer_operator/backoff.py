"""Retry pacing: exponential backoff with jitter, one helper for every retry loop.

The delay after the n-th consecutive failure is drawn from ``[ceiling/2, ceiling]`` with
``ceiling = min(cap, base * 2**(n-1))``: it grows fast enough to spare a struggling peer, never
drops to zero, and the jitter keeps many monitors that failed together from retrying together.
Sleep and jitter are injected so tests run without waiting.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable

from overseer_operator import defaults

Sleep = Callable[[float], Awaitable[None]]


class Backoff:
    def __init__(
        self,
        base: float,
        cap: float = defaults.MAX_BACKOFF,
        *,
        jitter: Callable[[], float] = random.random,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if not 0 < base <= cap:
            raise ValueError("backoff needs 0 < base <= cap")
        self._base = base
        self._cap = cap
        self._jitter = jitter
        self._sleep = sleep
        self.failures = 0

    def next_delay(self) -> float:
        """Count a failure; the delay to wait before the next attempt."""
        self.failures += 1
        ceiling = min(self._cap, self._base * 2.0 ** min(self.failures - 1, 32))
        return ceiling * (0.5 + 0.5 * self._jitter())

    async def wait(self) -> float:
        """Count a failure and sleep its delay; the delay slept.

        Raises ``CancelledError`` instead if the task is being cancelled: a library that turned
        the cancellation into an error (a transport error, a closed channel) must not make the
        retry loop go on, or whoever cancelled it waits forever.
        """
        raise_if_cancelling()
        delay = self.next_delay()
        await self._sleep(delay)
        return delay

    def reset(self) -> None:
        """A success: the next failure starts from ``base`` again."""
        self.failures = 0


def raise_if_cancelling() -> None:
    """Raise ``CancelledError`` if the current task has a cancellation request pending."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
