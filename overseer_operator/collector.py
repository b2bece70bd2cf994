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
  exchanges the whole heap is about 200,000 objects and a full walk of it took 0.5 s under load;
  the walk of a minute's survivors is a fraction of that.
- a frozen object that later becomes cyclic garbage (a closed session, a replaced connection)
  waits for a thaw: once the frozen heap has grown by a quarter since the last one (CPython's
  own rule for its oldest generation), the timed collection thaws everything and walks it all
  once. Nothing is leaked: such garbage waits, at worst, until the frozen heap grew by a quarter;
  everything else is freed by reference counting as always.

Its cost is in ``overseer_gc_full_collection_seconds``. The records of the fleet and of the
writes owed are plain tuples the collector does not track (see ``fleet`` and ``manager_writer``),
which keeps that cost to the traversal of a few large containers.
"""

from __future__ import annotations

import asyncio
import gc
import time

from overseer_operator import metrics

FULL_COLLECTION_INTERVAL = 10.0
# The young generations' thresholds are CPython's defaults; the oldest's is out of reach, so that
# only the timer collects it.
_YOUNG_THRESHOLDS = (700, 10)
_NEVER = 2**31 - 1
# The frozen heap grown by this factor since the last thaw: the next collection walks it all.
THAW_GROWTH = 1.25


def freeze_startup_heap() -> None:
    """Collect once, then move everything allocated so far out of the collector's sight."""
    gc.collect()
    gc.freeze()


def take_over_full_collections() -> None:
    """From now on a full collection runs only when ``collect_periodically`` runs one."""
    gc.set_threshold(*_YOUNG_THRESHOLDS, _NEVER)


class FullCollections:
    """The timed full collections, and the frozen heap's size at the last thaw."""

    def __init__(self) -> None:
        # None until the first collection: the start-up heap and the exchanges started since are
        # the baseline, not growth.
        self._frozen_at_thaw: int | None = None

    def collect(self) -> float:
        """One full collection of what is not frozen (of everything, if a thaw is due), then
        freeze what survived; the seconds it took (also observed in the metric)."""
        started = time.perf_counter()
        baseline = self._frozen_at_thaw
        thaw = baseline is not None and gc.get_freeze_count() > baseline * THAW_GROWTH
        if thaw:
            gc.unfreeze()
        gc.collect()
        gc.freeze()
        if thaw or baseline is None:
            self._frozen_at_thaw = gc.get_freeze_count()
        took = time.perf_counter() - started
        metrics.GC_FULL_COLLECTION.labels("thaw" if thaw else "since-freeze").observe(took)
        return took


async def collect_periodically(interval: float = FULL_COLLECTION_INTERVAL) -> None:
    """Run a full collection every ``interval`` seconds, until cancelled."""
    collections = FullCollections()
    while True:
        await asyncio.sleep(interval)
        collections.collect()
