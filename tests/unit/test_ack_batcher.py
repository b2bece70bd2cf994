"""Batched acks: one multiple ack per batch, flushed on time, rejects never covered by an ack."""

from __future__ import annotations

import asyncio

import aiormq
import pytest

from overseer_operator.consumer import AckBatcher


class RecordingChannel:
    """The two calls the batcher makes on aiormq's channel, recorded in the order sent."""

    def __init__(self, *, closed: bool = False) -> None:
        self.frames: list[tuple[str, int, bool]] = []
        self.closed = closed

    async def basic_ack(self, delivery_tag: int, multiple: bool = False) -> None:
        if self.closed:
            raise aiormq.exceptions.ChannelInvalidStateError("closed")
        self.frames.append(("ack", delivery_tag, multiple))

    async def basic_reject(self, delivery_tag: int, requeue: bool = True) -> None:
        if self.closed:
            raise aiormq.exceptions.ChannelInvalidStateError("closed")
        self.frames.append(("reject", delivery_tag, requeue))


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_a_full_batch_is_one_multiple_ack_of_its_last_tag() -> None:
    channel = RecordingChannel()
    acks = AckBatcher(channel, batch=3, delay=60)  # type: ignore[arg-type]
    for tag in range(1, 8):
        acks.ack(tag)
    await settle()
    assert channel.frames == [("ack", 3, True), ("ack", 6, True)]
    await acks.aclose()  # what is left is flushed on close
    assert channel.frames[-1] == ("ack", 7, True)


@pytest.mark.looptime
async def test_a_partial_batch_is_acked_after_the_delay() -> None:
    channel = RecordingChannel()
    acks = AckBatcher(channel, batch=100, delay=0.05)  # type: ignore[arg-type]
    acks.ack(1)
    acks.ack(2)
    await asyncio.sleep(0.04)
    assert channel.frames == []
    await asyncio.sleep(0.02)
    assert channel.frames == [("ack", 2, True)]
    await asyncio.sleep(1)
    assert channel.frames == [("ack", 2, True)]  # nothing pending: no further frame


async def test_a_reject_first_flushes_the_acks_before_it() -> None:
    channel = RecordingChannel()
    acks = AckBatcher(channel, batch=100, delay=60)  # type: ignore[arg-type]
    acks.ack(1)
    acks.ack(2)
    acks.reject(3, requeue=False)
    acks.ack(4)
    await acks.aclose()
    assert channel.frames == [
        ("ack", 2, True),
        ("reject", 3, False),
        ("ack", 4, True),  # covers 4 only: 3 is settled already
    ]


async def test_a_closed_channel_is_not_an_error() -> None:
    acks = AckBatcher(RecordingChannel(closed=True), batch=1, delay=60)  # type: ignore[arg-type]
    acks.ack(1)
    acks.reject(2, requeue=True)
    await acks.aclose()  # the broker redelivers whatever was not settled


@pytest.mark.looptime
async def test_discarded_acks_are_never_sent_nor_any_later_one() -> None:
    channel = RecordingChannel()
    acks = AckBatcher(channel, batch=3, delay=0.05)  # type: ignore[arg-type]
    acks.ack(1)
    acks.ack(2)
    acks.discard()  # the replica lost the exchange: 1 and 2 go back to the queue
    acks.ack(3)  # a delivery handled while the discard happened
    acks.reject(4, requeue=False)
    await asyncio.sleep(1)
    await acks.aclose()
    assert channel.frames == []
