"""Whether the consumer has read what the queue holds: the rule that holds verdicts (pure).

A worker's silence is evidence only if its heartbeats could have been read. Two situations say
they could not, and while either lasts no worker may turn inactive or offline:

- *Draining*: right after the queue is consumed (a start, a reconnect, a takeover) the messages
  already waiting may hold every worker's latest heartbeat. Verdicts wait until as many messages
  as were waiting have been delivered, or the broker reports the queue empty (FIFO: everything
  that was there has been read, or removed by the broker).
- *Falling behind*: the broker reports more messages waiting than the consumer reads in
  ``lag_tolerance`` seconds at its current rate (and more than ``low_water``, so a small queue on
  an idle fleet is not "behind"). It ends, with hysteresis, below half that.

Readings come from the broker every few seconds; deliveries are counted one by one (an integer
increment on the hot path).
"""

from __future__ import annotations

from collections.abc import Callable

from overseer_operator.model import Reason, Verdict

LAG_TOLERANCE = 5.0  # seconds of reading the operator may be behind before verdicts are held
LOW_WATER = 100  # messages; a backlog this small is read within milliseconds


class Backlog:
    def __init__(
        self,
        clock: Callable[[], float],
        *,
        lag_tolerance: float = LAG_TOLERANCE,
        low_water: int = LOW_WATER,
    ) -> None:
        self._clock = clock
        self._lag_tolerance = lag_tolerance
        self._low_water = low_water
        self._to_drain = 0
        self._delivered = 0
        self._read_at: tuple[float, int] | None = None  # (clock, deliveries) at the last reading
        self._rate = 0.0
        self.waiting = 0
        self.behind = False

    @property
    def draining(self) -> bool:
        return self._to_drain > 0

    @property
    def caught_up(self) -> bool:
        return not self.draining and not self.behind

    def started(self, waiting: int) -> None:
        """Consumption (re)started with ``waiting`` messages in the queue."""
        self._to_drain = waiting
        self._delivered = 0
        self._read_at = (self._clock(), 0)
        self._rate = 0.0
        self.waiting = waiting
        self.behind = False

    def delivered(self) -> bool:
        """One message delivered; True when this delivery ends the draining."""
        self._delivered += 1
        if self._to_drain and self._delivered >= self._to_drain:
            self._to_drain = 0
            return True
        return False

    def read(self, waiting: int) -> None:
        """The broker reports ``waiting`` messages in the queue now."""
        now = self._clock()
        if self._read_at is not None and now > self._read_at[0]:
            self._rate = (self._delivered - self._read_at[1]) / (now - self._read_at[0])
        self._read_at = (now, self._delivered)
        self.waiting = waiting
        if waiting == 0:
            self._to_drain = 0
        readable = self._rate * self._lag_tolerance
        limit = max(self._low_water, readable / 2 if self.behind else readable)
        self.behind = waiting > limit

    def verdict(self) -> Verdict:
        """The ``CaughtUp`` condition. Its words change only when its meaning does (a condition's
        message is part of the status, and the status is patched whenever it changes); the
        numbers are in ``overseer_queue_backlog_messages``."""
        if self.draining:
            return Verdict(
                False,
                Reason.DRAINING_BACKLOG,
                f"reading the {self._to_drain} messages queued before consuming began; "
                "inactive/offline verdicts are held until then",
            )
        if self.behind:
            return Verdict(
                False,
                Reason.FALLING_BEHIND,
                f"more messages wait in the queue than are read in {self._lag_tolerance:g} s; "
                "inactive/offline verdicts are held",
            )
        return Verdict(True, Reason.CAUGHT_UP, "the queue is read as fast as it fills")
