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
  burst. Nothing is leaked by this: cyclic garbage that reached the oldest generation waits at
  most that long, and everything else is freed by reference counting as always.

Its cost is in ``overseer_gc_full_collection_seconds``. The records of the fleet and of the
writes owed are plain tuples the collector does not track (see ``fleet`` and ``manager_writer``),
which keeps that cost to the traversal of a few large containers.
"""

from __future__ import annotations

import asyncio
import gc
import time

from overseer_operator import metrics

FULL_COLLECTION_INTERVAL = 60.0
# The young generations' thresholds are CPython's defaults; the oldest's is out of reach, so that
# only the timer collects it.
_YOUNG_THRESHOLDS = (700, 10)
_NEVER = 2**31 - 1


def freeze_startup_heap() -> None:
    """Collect once, then move everything allocated so far out of the collector's sight."""
    gc.collect()
    gc.freeze()


def take_over_full_collections() -> None:
    """From now on a full collection runs only when ``collect_periodically`` runs one."""
    gc.set_threshold(*_YOUNG_THRESHOLDS, _NEVER)


def collect_fully() -> float:
    """One full collection; the seconds it took (also observed in the metric)."""
    started = time.perf_counter()
    gc.collect()
    took = time.perf_counter() - started
    metrics.GC_FULL_COLLECTION.observe(took)
    return took


async def collect_periodically(interval: float = FULL_COLLECTION_INTERVAL) -> None:
    """Run a full collection every ``interval`` seconds, until cancelled."""
    while True:
        await asyncio.sleep(interval)
        collect_fully()
