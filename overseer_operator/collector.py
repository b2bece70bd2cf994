"""The operator's garbage-collection policy: CPython's cyclic collector on the operator's terms.

By default CPython runs a full collection whenever the oldest generation has grown by a quarter
since the last one. A burst (a mass transition, a mass registration) allocates enough to do that
several times a second, and a full collection stalls the event loop for as long as it takes to
traverse the heap: with the 100,000 workers of a mass transition, 60-80 ms each, on top of the
burst's own work. So:

- the start-up heap (modules, classes, kopf's registry) is frozen once: it lives as long as the
  process, and no collection needs to look at it again;
- the young generations are collected as CPython does it (cheap: only new objects);
- the full collection runs on a timer, every ``FULL_COLLECTION_INTERVAL``, never because of a
  burst, and what survives it is frozen: it has outlived a full collection (the sessions, the
  connections, the fleet's containers), and the next one looks only at what is newer. At 100
  exchanges the whole heap is about 200,000 objects, and a walk of all of it took 0.5 s under
  load; a walk of what survived the last 10 s takes tens of milliseconds.
- a frozen object that later becomes cyclic garbage waits for a thaw, in which the timed
  collection unfreezes everything and walks it all once: when the heap has grown by a quarter
  since the last thaw (CPython's own rule for its oldest generation; frozen garbage counts as
  growth), or when something long-lived was let go (``request_thaw``: a session or a broker
  connection closed) and the last thaw is ``THAW_MIN_INTERVAL`` old. So such garbage is held
  for a while, never for good, and a flapping connection does not bring back a full walk every
  10 s. Everything else is freed by reference counting as always. The heap is measured in
  pymalloc's allocated blocks, a count over its pools (under a millisecond): counting the frozen
  objects instead walks them one by one, 25-30 ms at 100 exchanges, on every collection.

Its cost is in ``overseer_gc_full_collection_seconds``. The records of the fleet and of the
writes owed are plain tuples the collector does not track (see ``fleet`` and ``manager_writer``),
which keeps that cost to the traversal of a few large containers.
"""

from __future__ import annotations

import asyncio
import gc
import sys
import time
from collections.abc import Callable

from overseer_operator import metrics

FULL_COLLECTION_INTERVAL = 10.0
# The young generations' thresholds are CPython's defaults; the oldest's is out of reach, so that
# only the timer collects it.
_YOUNG_THRESHOLDS = (700, 10)
_NEVER = 2**31 - 1
# The heap grown by this factor since the last thaw: the next collection walks it all.
THAW_GROWTH = 1.25
# A thaw requested because something long-lived was let go waits until the last one is this old.
THAW_MIN_INTERVAL = 300.0
_thaw_requested = False


def freeze_startup_heap() -> None:
    """Collect once, then move everything allocated so far out of the collector's sight."""
    gc.collect()
    gc.freeze()


def take_over_full_collections() -> None:
    """From now on a full collection runs only when ``collect_periodically`` runs one."""
    gc.set_threshold(*_YOUNG_THRESHOLDS, _NEVER)


def request_thaw() -> None:
    """Something long-lived was let go (a session, a broker connection): its objects may be
    frozen cyclic garbage now, for a thaw to find."""
    global _thaw_requested
    _thaw_requested = True


class FullCollections:
    """The timed full collections, and when and at what heap size the last thaw was."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        # None until the first collection: the start-up heap and the exchanges started since are
        # the baseline, not growth.
        self._heap_at_thaw: int | None = None
        self._thawed_at = clock()

    def _thaw_due(self) -> bool:
        baseline = self._heap_at_thaw
        if baseline is None:
            return False
        if sys.getallocatedblocks() > baseline * THAW_GROWTH:
            return True
        return _thaw_requested and self._clock() - self._thawed_at >= THAW_MIN_INTERVAL

    def collect(self) -> float:
        """One full collection of what is not frozen (of everything, if a thaw is due), then
        freeze what survived; the seconds it took (also observed in the metric)."""
        global _thaw_requested
        started = time.perf_counter()
        thaw = self._thaw_due()
        if thaw:
            gc.unfreeze()
            _thaw_requested = False
            self._thawed_at = self._clock()
        gc.collect()
        gc.freeze()
        if thaw or self._heap_at_thaw is None:
            self._heap_at_thaw = sys.getallocatedblocks()
        took = time.perf_counter() - started
        metrics.GC_FULL_COLLECTION.labels("thaw" if thaw else "since-freeze").observe(took)
        return took


async def collect_periodically(interval: float = FULL_COLLECTION_INTERVAL) -> None:
    """Run a full collection every ``interval`` seconds, until cancelled."""
    collections = FullCollections()
    while True:
        await asyncio.sleep(interval)
        collections.collect()
