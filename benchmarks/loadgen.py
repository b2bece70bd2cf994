"""A load generator for fleets of up to 100,000 simulated workers, from one process.

devtools/simulator.py publishes one message at a time through aio-pika; this one encodes every
worker's heartbeat once (half ETF, half JSON, each worker its own workload) together with its
AMQP frames (``basic.publish``, header, body), then writes the frames of every worker due in a
tick as one buffer on an aiormq channel (the protocol layer under aio-pika), without publisher
confirms, paced so each worker beats once per ``--interval`` at its own phase (no bursts).
Messages are persistent, as the Elixir workers send them.

    python -m benchmarks.loadgen --amqp-url URL --exchange ROOT --routing-key K1 [--routing-key K2]
        --workers-per-key 1000 --interval 30 --duration 600 [--prefix w]
    python -m benchmarks.loadgen ... --burst 20000      # as fast as it can (prefill, ceiling)

Worker ``<prefix>-<k>-<i>`` beats on routing key number k. At the end it prints one JSON line:
messages published, seconds, rate, how far behind its schedule it fell at worst, and (with
``--report-last``) the monotonic time of each worker's last heartbeat.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
import time

import aiormq
from aiormq.abc import ChannelFrame
from pamqp.body import ContentBody
from pamqp.commands import Basic
from pamqp.header import ContentHeader

from overseer_operator.heartbeat import encode_etf, encode_json
from overseer_operator.model import Heartbeat

PERSISTENT = Basic.Properties(delivery_mode=2)
# Most publications written as one buffer.
WINDOW = 500


def worker_bodies(prefix: str, keys: int, per_key: int) -> list[tuple[int, str, bytes]]:
    """(routing key index, hostname, body) for every worker, keys interleaved."""
    bodies = []
    for index in range(per_key):
        for key in range(keys):
            hostname = f"{prefix}-{key:03d}-{index:06d}"
            heartbeat = Heartbeat(
                hostname, "builder", "active", [{"description": f"building workflow {index}"}]
            )
            encode = encode_etf if index % 2 else encode_json
            bodies.append((key, hostname, encode(heartbeat)))
    return bodies


async def run(options: argparse.Namespace) -> dict[str, object]:
    workers = worker_bodies(options.prefix, len(options.routing_key), options.workers_per_key)
    connection = await aiormq.connect(options.amqp_url)
    channel = await connection.channel(publisher_confirms=False)
    frames = [
        ChannelFrame.marshall(
            channel.number,
            [
                Basic.Publish(exchange=options.exchange, routing_key=options.routing_key[key]),
                ContentHeader(0, len(body), PERSISTENT),
                ContentBody(body),
            ],
        ).payload
        for key, _, body in workers
    ]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    published = 0
    late = 0.0
    last: dict[str, float] = {}

    async def write(batch: list[bytes]) -> None:
        await channel.write_queue.put(ChannelFrame(b"".join(batch), False))

    started = time.monotonic()
    if options.burst:
        while published < options.burst and not stop.is_set():
            count = min(WINDOW, options.burst - published)
            await write([frames[(published + i) % len(frames)] for i in range(count)])
            published += count
            await asyncio.sleep(0)
    else:
        spacing = options.interval / len(frames)
        deadline = started + options.duration
        while not stop.is_set():
            now = time.monotonic()
            if now >= deadline:
                break
            due = started + published * spacing
            batch = []
            while due <= now and len(batch) < WINDOW:
                position = published % len(frames)
                batch.append(frames[position])
                if options.report_last:
                    last[workers[position][1]] = now
                late = max(late, now - due)
                published += 1
                due = started + published * spacing
            if batch:
                await write(batch)
            delay = due - time.monotonic()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), min(delay, 0.1))
    # A round trip on the channel: everything written before it has reached the broker.
    await channel.basic_qos(prefetch_count=0)
    seconds = time.monotonic() - started
    await connection.close()
    result: dict[str, object] = {
        "published": published,
        "seconds": seconds,
        "rate": published / seconds if seconds else 0.0,
        "late_max": late,
        "workers": len(frames),
    }
    if options.report_last:
        result["last"] = last
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.loadgen", description=__doc__)
    parser.add_argument("--amqp-url", required=True)
    parser.add_argument("--exchange", required=True)
    parser.add_argument("--routing-key", action="append", required=True)
    parser.add_argument("--workers-per-key", type=int, required=True)
    parser.add_argument("--interval", type=float, default=30.0)
    parser.add_argument("--duration", type=float, default=float("inf"))
    parser.add_argument("--burst", type=int, default=0, help="publish N as fast as possible")
    parser.add_argument("--prefix", default="w")
    parser.add_argument("--report-last", action="store_true")
    options = parser.parse_args(argv)
    print(json.dumps(asyncio.run(run(options))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
