"""Simulated workers: real heartbeats over AMQP, published as the Elixir overseer_api does.

    python -m devtools.simulator --amqp-url amqp://guest:guest@localhost/ \\
        --exchange aws --routing-key aws.us-east-1.system_modules --workers 5 \\
        --stop-after worker-2=60 --stop-after worker-3=5m

Workers are named ``<prefix>-1`` to ``<prefix>-N``. Each round publishes one heartbeat per worker,
then sleeps ``--interval`` seconds (the legacy workers beat every 30 s). ``--stop-after
HOSTNAME=DELAY`` silences a worker that long after the start, so a demo shows it go active, then
inactive, then offline. ``--format mixed`` gives odd-numbered workers ETF and even ones JSON.

Like the legacy publisher it sends persistent messages to the exchange (``root_exchange_name``)
with the routing key verbatim (``<routing_key>.<queue>``) and declares nothing, unless
``--declare-exchange`` asks for a durable topic exchange. The exchange ``""`` publishes straight
to the queue named by the routing key.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Sequence
from typing import Literal

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractExchange

from overseer_operator.heartbeat import encode_etf, encode_json
from overseer_operator.model import Heartbeat
from overseer_operator.times import parse_duration

Format = Literal["etf", "json", "mixed"]

logger = logging.getLogger("overseer_operator.simulator")


def simulated_heartbeat(hostname: str, module_type: str = "builder") -> Heartbeat:
    """The heartbeat a simulated worker sends: active, with a one-entry workload."""
    return Heartbeat(hostname, module_type, "active", [{"description": f"simulated {module_type}"}])


async def publish_heartbeats(
    amqp_url: str,
    exchange: str,
    routing_key: str,
    heartbeats: list[Heartbeat],
    fmt: Format = "etf",
) -> None:
    """Publish each heartbeat once and wait for the broker's confirms.

    Raises ``aio_pika.exceptions.PublishError`` if the broker cannot route a message, so a test
    whose queue is not bound fails loudly instead of waiting for heartbeats that never arrive.
    """
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        target = await _exchange(channel, exchange, declare=False)
        await asyncio.gather(
            *(
                _publish(target, routing_key, heartbeat, _format_of(fmt, index))
                for index, heartbeat in enumerate(heartbeats, start=1)
            )
        )


async def simulate(options: argparse.Namespace, stop: asyncio.Event) -> int:
    """Publish rounds of heartbeats until ``stop`` is set or ``--count`` rounds are done.

    Returns how many publications failed (they are logged per round, and the rounds go on).
    """
    loop = asyncio.get_running_loop()
    started = loop.time()
    workers = [
        (
            simulated_heartbeat(f"{options.prefix}-{index}", options.type),
            _format_of(options.format, index),
        )
        for index in range(1, options.workers + 1)
    ]
    connection = await aio_pika.connect_robust(options.amqp_url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        target = await _exchange(channel, options.exchange, declare=options.declare_exchange)
        rounds = failed = 0
        while not stop.is_set() and (options.count is None or rounds < options.count):
            elapsed = loop.time() - started
            beating = [
                (heartbeat, fmt)
                for heartbeat, fmt in workers
                if elapsed < options.stop_after.get(heartbeat.hostname, float("inf"))
            ]
            results = await asyncio.gather(
                *(_publish(target, options.routing_key, hb, fmt) for hb, fmt in beating),
                return_exceptions=True,
            )
            failures = [result for result in results if isinstance(result, BaseException)]
            rounds += 1
            failed += len(failures)
            logger.info(
                "round %d at %.1fs: %d of %d workers beat%s",
                rounds,
                elapsed,
                len(beating) - len(failures),
                len(workers),
                f"; {len(failures)} failed: {failures[0]!r}" if failures else "",
            )
            if options.count is not None and rounds >= options.count:
                break
            with contextlib.suppress(TimeoutError):  # the interval passed: next round
                await asyncio.wait_for(stop.wait(), options.interval)
    return failed


async def _exchange(channel: AbstractChannel, name: str, *, declare: bool) -> AbstractExchange:
    if declare and name:
        return await channel.declare_exchange(name, aio_pika.ExchangeType.TOPIC, durable=True)
    return await channel.get_exchange(name, ensure=False)


async def _publish(
    target: AbstractExchange, routing_key: str, heartbeat: Heartbeat, fmt: Literal["etf", "json"]
) -> None:
    if fmt == "json":
        message = aio_pika.Message(
            encode_json(heartbeat),
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        )
    else:
        message = aio_pika.Message(
            encode_etf(heartbeat), delivery_mode=aio_pika.DeliveryMode.PERSISTENT
        )
    await target.publish(message, routing_key=routing_key)


def _format_of(fmt: Format, index: int) -> Literal["etf", "json"]:
    if fmt == "mixed":
        return "etf" if index % 2 else "json"
    return fmt


def _stop_after(text: str) -> tuple[str, float]:
    hostname, separator, delay = text.partition("=")
    if not hostname or not separator:
        raise argparse.ArgumentTypeError(f"expected HOSTNAME=DELAY, got {text!r}")
    try:
        return hostname, float(delay)
    except ValueError:
        pass
    try:
        return hostname, parse_duration(delay)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _positive(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text!r}")
    return value


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m devtools.simulator",
        description="Publish heartbeats of simulated OpenAperture workers over AMQP.",
    )
    parser.add_argument("--amqp-url", required=True, help="amqp:// or amqps:// URL of the broker")
    parser.add_argument("--exchange", required=True, help="AMQP exchange (root_exchange_name)")
    parser.add_argument("--routing-key", required=True, help="routing key, used verbatim")
    parser.add_argument("--workers", type=int, required=True, help="number of workers")
    parser.add_argument("--prefix", default="worker", help="hostname prefix (default: worker)")
    parser.add_argument("--type", default="builder", help="module type (default: builder)")
    parser.add_argument("--format", choices=["etf", "json", "mixed"], default="etf")
    parser.add_argument("--interval", type=_positive, default=30.0, help="seconds between rounds")
    parser.add_argument(
        "--stop-after",
        type=_stop_after,
        action="append",
        default=[],
        metavar="HOSTNAME=DELAY",
        help="silence a worker this long after the start (seconds, or a duration such as 5m)",
    )
    parser.add_argument("--count", type=int, help="stop after this many rounds")
    parser.add_argument(
        "--declare-exchange", action="store_true", help="declare the exchange (durable, topic)"
    )
    options = parser.parse_args(argv)
    if options.workers < 0 or (options.count is not None and options.count < 1):
        parser.error("--workers must be 0 or more and --count 1 or more")
    hostnames = {f"{options.prefix}-{index}" for index in range(1, options.workers + 1)}
    unknown = sorted(hostname for hostname, _ in options.stop_after if hostname not in hostnames)
    if unknown:
        parser.error(f"--stop-after names workers that are not simulated: {', '.join(unknown)}")
    options.stop_after = dict(options.stop_after)
    return options


async def _main(options: argparse.Namespace) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    return await simulate(options, stop)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the simulator; the exit status is 1 if any heartbeat could not be published."""
    options = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    return 1 if asyncio.run(_main(options)) else 0


if __name__ == "__main__":
    sys.exit(main())
