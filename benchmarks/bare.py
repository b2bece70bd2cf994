"""The baseline: a bare aio-pika consumer that acks each message, nothing else.

One connection per queue (as the operator has), at most ``BROKER_CONNECT_CONCURRENCY`` connecting
at once (the operator's bound on broker connects), prefetch 200 (the operator's default), an async
callback that awaits ``message.ack()`` for every delivery. It writes how many messages it has
consumed to ``--count-file`` every 0.1 s, until SIGTERM.

    python -m benchmarks.bare --amqp-url URL --queue Q [--queue Q2 ...] --count-file F
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys

import aio_pika
from aio_pika.abc import AbstractConnection, AbstractIncomingMessage

from overseer_operator.defaults import BROKER_CONNECT_CONCURRENCY

PREFETCH = 200


async def run(options: argparse.Namespace) -> None:
    count = 0

    async def on_message(message: AbstractIncomingMessage) -> None:
        nonlocal count
        await message.ack()
        count += 1

    slots = asyncio.Semaphore(BROKER_CONNECT_CONCURRENCY)

    async def consume(queue_name: str) -> AbstractConnection:
        async with slots:
            connection = await aio_pika.connect(options.amqp_url)
            channel = await connection.channel()
            await channel.set_qos(prefetch_count=PREFETCH)
            queue = await channel.declare_queue(queue_name, passive=True)
            await queue.consume(on_message)
        return connection

    connections = await asyncio.gather(*(consume(queue_name) for queue_name in options.queue))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    while not stop.is_set():
        write_count(options.count_file, count)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.1)
    write_count(options.count_file, count)
    for connection in connections:
        await connection.close()


def write_count(path: str, count: int) -> None:
    with open(path + ".tmp", "w") as file:
        file.write(str(count))
    os.replace(path + ".tmp", path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bare", description=__doc__)
    parser.add_argument("--amqp-url", required=True)
    parser.add_argument("--queue", action="append", required=True)
    parser.add_argument("--count-file", required=True)
    asyncio.run(run(parser.parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
