"""A token bucket: lets bursts through up to ``capacity`` and counts what it holds back."""

from __future__ import annotations

from collections.abc import Callable


class RateLimiter:
    def __init__(self, capacity: int, per_seconds: float, clock: Callable[[], float]) -> None:
        self._capacity = float(capacity)
        self._rate = capacity / per_seconds
        self._clock = clock
        self._tokens = float(capacity)
        self._updated = clock()
        self.suppressed = 0

    def allow(self) -> bool:
        now = self._clock()
        self._tokens = min(self._capacity, self._tokens + (now - self._updated) * self._rate)
        self._updated = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        self.suppressed += 1
        return False

    def take_suppressed(self) -> int:
        """How many were held back since the last call (and reset the count)."""
        count, self.suppressed = self.suppressed, 0
        return count
