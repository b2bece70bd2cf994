"""Cancelling the operator's own-heartbeat publisher ends it, even when the AMQP library turns
the cancellation into a connection error (aiormq does when a publish races the closing of its
channel). Found by the apiserver-outage proof (tests/e2e/test_sharding.py): a fenced monitor's
shut-down waited forever on this task, so its exchange, acquired again, was never monitored."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from overseer_operator.manager_client import ExchangeRecord
from overseer_operator.registration import Publisher, own_heartbeat, publish_own_heartbeats


def publishing_every_10_ms(
    publish: Publisher, unpublished: Callable[[], None] = lambda: None
) -> asyncio.Task[None]:
    exchange = ExchangeRecord(id="1", name="aws:r", routing_key="aws.r", root_exchange_name="aws")
    return asyncio.create_task(
        publish_own_heartbeats(
            publish, exchange, own_heartbeat("op-a", "overseer"), lambda: 0.01, unpublished
        )
    )


async def test_a_cancelled_publish_ends_the_publisher() -> None:
    publishing = asyncio.Event()
    swallow = True

    async def publish_that_swallows_cancellation(target: str, key: str, body: bytes) -> None:
        publishing.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            if swallow:
                raise ConnectionError("channel closed") from None
            raise

    task = publishing_every_10_ms(publish_that_swallows_cancellation)
    await publishing.wait()
    publishing.clear()
    task.cancel()
    done, _ = await asyncio.wait([task], timeout=1.0)
    if not done:  # leave nothing running behind: a publish that honours cancellation, then cancel
        swallow = False
        await publishing.wait()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, TimeoutError):
            await asyncio.wait_for(task, 1)
    assert done, "the publisher went on after it was cancelled"
    assert task.cancelled()


async def test_each_heartbeat_that_cannot_be_published_is_vouched_for() -> None:
    async def refused(target: str, routing_key: str, body: bytes) -> None:
        raise ConnectionError("not connected to the broker")

    vouched: list[None] = []
    task = publishing_every_10_ms(refused, lambda: vouched.append(None))
    async with asyncio.timeout(5):
        while len(vouched) < 3:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
