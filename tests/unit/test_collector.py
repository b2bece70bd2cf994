"""The garbage-collection policy: no full collection because of a burst, one on the timer."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator
from typing import Any

import pytest

from overseer_operator import collector
from tests.metering import sample


@pytest.fixture
def policy() -> Iterator[None]:
    thresholds = gc.get_threshold()
    collector.take_over_full_collections()
    yield
    gc.set_threshold(*thresholds)


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
    full_collections: list[int],
) -> None:
    before = sample("overseer_gc_full_collection_seconds_count")
    task = asyncio.create_task(collector.collect_periodically(60.0))
    await asyncio.sleep(150)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(full_collections) == 2
    assert sample("overseer_gc_full_collection_seconds_count") - before == 2
