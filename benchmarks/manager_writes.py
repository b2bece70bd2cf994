"""The operator's CPU for one Manager write, by transport and by writes in flight.

The same ``ManagerClient.upsert_module`` calls (the writer's refreshes and verdicts) go to the
Manager emulator in a process of its own, once over the client's default transport (aiohttp's
pool, ``overseer_operator.http_transport``) and once over httpx's own (httpcore), in the same
process, at 1, 4 and 12 writes in flight (the writer allows 16, refreshes 12). The figure is this
process's CPU time per write (``time.process_time``), so the emulator's work is not in it; the
ratio is httpx's own transport over the default one.

    .venv/bin/python -m benchmarks.manager_writes [--writes 3000] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Callable

import httpx

from benchmarks.manager_process import EmulatorProcess
from overseer_operator.manager_client import ManagerClient, ManagerSettings, verifying_context

CLIENT_ID, SECRET, EXCHANGE = "overseer", "benchmark-secret", "1"
WORKLOAD = [{"description": "building workflow 123"}]


async def cpu_per_write(client: ManagerClient, writes: int, in_flight: int) -> tuple[float, float]:
    """(CPU seconds per write, writes per second) for ``writes`` upserts, ``in_flight`` at once."""
    slots = asyncio.Semaphore(in_flight)

    async def write(number: int) -> None:
        async with slots:
            await client.upsert_module(
                EXCHANGE, f"worker-{number % 1000}", "builder", "active", WORKLOAD
            )

    await asyncio.gather(*(write(number) for number in range(50)))  # connections, a token
    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(write(number) for number in range(writes)))
    return (time.process_time() - cpu) / writes, writes / (time.perf_counter() - wall)


async def measure(settings: ManagerSettings, writes: int, levels: list[int]) -> None:
    transports: dict[str, Callable[[], httpx.AsyncBaseTransport | None]] = {
        "default (aiohttp)": lambda: None,
        "httpx's own (httpcore)": lambda: httpx.AsyncHTTPTransport(
            verify=verifying_context(None, None)
        ),
    }
    print(f"{'in flight':>9}  {'transport':24} {'CPU a write':>12} {'writes/s':>9} {'ratio':>6}")
    for in_flight in levels:
        baseline = 0.0
        for name, transport in transports.items():
            async with ManagerClient(settings, transport=transport()) as client:
                cpu, rate = await cpu_per_write(client, writes, in_flight)
            baseline = baseline or cpu
            ratio = cpu / baseline
            print(f"{in_flight:>9}  {name:24} {cpu * 1e6:>9.0f} us {rate:>9.0f} {ratio:>5.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writes", type=int, default=3000, help="writes per measurement")
    parser.add_argument("--quick", action="store_true", help="200 writes, 1 and 4 in flight")
    options = parser.parse_args()
    writes, levels = (200, [1, 4]) if options.quick else (options.writes, [1, 4, 12])
    emulator = EmulatorProcess({CLIENT_ID: SECRET})
    try:
        emulator.add_exchange(EXCHANGE, "benchmark", "benchmark")
        settings = ManagerSettings(emulator.url, emulator.login_url, CLIENT_ID, SECRET)
        asyncio.run(measure(settings, writes, levels))
    finally:
        emulator.close()


if __name__ == "__main__":
    main()
