"""The garbage-collection policy: no full collection because of a burst, one on the timer, and
what survived it frozen until the heap grew by a quarter."""

from __future__ import annotations

import asyncio
import gc
import sys
import weakref
from collections.abc import Iterator
from typing import Any

import pytest

from overseer_operator import collector
from tests.fakes import FakeClock
from tests.metering import sample


@pytest.fixture
def policy() -> Iterator[None]:
    thresholds = gc.get_threshold()
    collector.take_over_full_collections()
    yield
    gc.set_threshold(*thresholds)


@pytest.fixture
def thawed_after() -> Iterator[None]:
    collector._thaw_requested = False
    yield
    gc.unfreeze()
    collector._thaw_requested = False


@pytest.fixture
def full_collections() -> Iterator[list[int]]:
    seen: list[int] = []

    def record(phase: str, info: dict[str, Any]) -> None:
        if phase == "start" and info["generation"] == 2:
            seen.append(info["generation"])

    gc.callbacks.append(record)
    yield seen
    gc.callbacks.remove(record)


def burst() -> list[list[int]]:
    """Enough surviving containers to trigger CPython's full collection several times."""
    return [[index] for index in range(300_000)]


def test_by_default_a_burst_triggers_full_collections(full_collections: list[int]) -> None:
    """The baseline the policy exists for (if CPython changes this, the policy needs a look)."""
    gc.collect()
    kept = burst()
    assert len(kept) == 300_000
    assert full_collections


def test_under_the_policy_a_burst_triggers_no_full_collection(
    policy: None, full_collections: list[int]
) -> None:
    gc.collect()
    full_collections.clear()
    kept = burst()
    assert len(kept) == 300_000
    assert full_collections == []


@pytest.mark.looptime
async def test_the_timer_runs_a_full_collection_each_interval(
    full_collections: list[int], thawed_after: None
) -> None:
    before = sample("overseer_gc_full_collection_seconds_count", kind="since-freeze")
    task = asyncio.create_task(collector.collect_periodically(60.0))
    await asyncio.sleep(150)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(full_collections) == 2
    assert sample("overseer_gc_full_collection_seconds_count", kind="since-freeze") - before == 2


class Node:
    """A container the collector tracks; ``cycle`` makes one that only it can free."""

    def __init__(self) -> None:
        self.me: Node | None = None

    @classmethod
    def cycle(cls) -> Node:
        node = cls()
        node.me = node
        return node


def walked(node: Node) -> bool:
    """Whether a full collection would look at ``node`` (frozen objects are not listed)."""
    return any(candidate is node for candidate in gc.get_objects())


def test_what_survives_a_timed_collection_is_not_walked_again(thawed_after: None) -> None:
    collections = collector.FullCollections()
    survivor = Node.cycle()
    assert walked(survivor)
    collections.collect()
    assert not walked(survivor)
    collections.collect()
    assert not walked(survivor)


def heap_growth_that_brings_a_thaw() -> list[Node]:
    return [Node() for _ in range(int(sys.getallocatedblocks() * (collector.THAW_GROWTH - 1)) + 1)]


def frozen_garbage(collections: collector.FullCollections) -> weakref.ref[Node]:
    """A cycle that lived through a timed collection (so it is frozen), then was let go."""
    doomed = Node.cycle()
    collections.collect()
    return weakref.ref(doomed)


def test_frozen_garbage_is_freed_once_the_heap_grew_by_a_quarter(
    thawed_after: None,
) -> None:
    collections = collector.FullCollections()
    collections.collect()  # the baseline
    gone = frozen_garbage(collections)
    collections.collect()  # the heap has not grown
    assert gone() is not None
    grown = heap_growth_that_brings_a_thaw()
    thaws = sample("overseer_gc_full_collection_seconds_count", kind="thaw")
    collections.collect()  # freezes the growth
    collections.collect()  # thaws and walks it all
    assert gone() is None
    assert sample("overseer_gc_full_collection_seconds_count", kind="thaw") - thaws == 1
    assert len(grown) > 0


def test_no_collection_counts_the_frozen_objects(
    thawed_after: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """gc.get_freeze_count walks the frozen objects one by one: at 100 exchanges that walk took
    longer than the collection it was checked for (25-30 ms against 7-30 ms), every 10 s."""

    def walk() -> int:
        raise AssertionError("the frozen heap was walked to count it")

    monkeypatch.setattr(gc, "get_freeze_count", walk)
    collections = collector.FullCollections()
    collections.collect()  # the baseline
    grown = heap_growth_that_brings_a_thaw()
    thaws = sample("overseer_gc_full_collection_seconds_count", kind="thaw")
    collections.collect()
    collections.collect()
    assert sample("overseer_gc_full_collection_seconds_count", kind="thaw") - thaws == 1
    assert len(grown) > 0


def test_what_was_let_go_is_thawed_for_once_the_last_thaw_is_old_enough(
    thawed_after: None,
) -> None:
    clock = FakeClock()
    collections = collector.FullCollections(clock)
    collections.collect()  # the baseline
    gone = frozen_garbage(collections)
    collector.request_thaw()  # a session closed, say
    clock.advance(collector.THAW_MIN_INTERVAL - 1)
    collections.collect()
    assert gone() is not None  # the last thaw (the start) is too recent
    clock.advance(1)
    collections.collect()
    assert gone() is None
    gone = frozen_garbage(collections)
    collections.collect()
    assert gone() is not None  # nothing let go since: no thaw, however old the last one
    clock.advance(collector.THAW_MIN_INTERVAL)
    collections.collect()
    assert gone() is not None
