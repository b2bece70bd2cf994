"""Cancelling the consumer ends it, even when the AMQP library turns the cancellation into a
connection error (aiormq does when a refused connect races the cancel: the connect runs in an
inner task, and the outer await raises the inner task's AMQPConnectionError instead)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import aiormq
import pytest

from overseer_operator import consumer as consumer_module
from overseer_operator.consumer import HeartbeatConsumer
from overseer_operator.model import BrokerState, BrokerStatus


async def connect_that_swallows_cancellation(*args: Any, **kwargs: Any) -> None:
    try:
        await asyncio.sleep(3600)
    except asyncio.CancelledError:
        raise aiormq.exceptions.AMQPConnectionError(111, "Connect call failed") from None


async def test_a_cancelled_connect_ends_the_consumer(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(consumer_module.aio_pika, "connect", connect_that_swallows_cancellation)
    states: list[BrokerStatus] = []
    consumer = HeartbeatConsumer(
        ["amqp://guest:guest@127.0.0.1:9/"],
        "system_modules",
        10,
        lambda body: None,
        states.append,
        lambda reading: None,
        retry_interval=0.05,
    )
    task = asyncio.create_task(consumer.run())
    await asyncio.sleep(0.05)
    assert [s.state for s in states] == [BrokerState.CONNECTING]
    task.cancel()
    done, _ = await asyncio.wait([task], timeout=1.0)
    if not done:  # leave nothing running behind: a connect that honours cancellation, then cancel
        monkeypatch.setattr(
            consumer_module.aio_pika, "connect", lambda *a, **k: asyncio.Event().wait()
        )
        await asyncio.sleep(0.2)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, TimeoutError):
            await asyncio.wait_for(task, 5)
    assert done, "the consumer went on reconnecting after it was cancelled"
    assert task.cancelled()
