"""The cost of one heartbeat on the hot path (decode + record), by fleet size and wire format.

A fleet of N workers is built, then every worker beats once more; the time per heartbeat is
compared with the 100-worker fleet measured in the same process (the ratio is what matters: it
stays near 1 when the cost does not grow with the fleet). Also times a sweep with nothing due.

    .venv/bin/python -m benchmarks.heartbeat_path
"""

from __future__ import annotations

import time
from collections.abc import Callable

from overseer_operator.fleet import Fleet
from overseer_operator.heartbeat import decode_message, encode_etf, encode_json
from overseer_operator.model import Heartbeat, Thresholds

WORKLOAD = [{"description": "building workflow 123"}]


def best_of(repeats: int, run: Callable[[], float]) -> float:
    return min(run() for _ in range(repeats))


def per_heartbeat(size: int, encode: Callable[[Heartbeat], bytes]) -> float:
    bodies = [encode(Heartbeat(f"worker-{i}", "builder", "active", WORKLOAD)) for i in range(size)]
    clock = [0.0]
    fleet = Fleet(Thresholds(600, 1200), lambda: clock[0])
    for body in bodies:  # the fleet as it is in steady state: everybody known
        fleet.observe(decode_message(body).heartbeat)

    def one_round() -> float:
        clock[0] += 30
        started = time.perf_counter()
        for body in bodies:
            fleet.observe(decode_message(body).heartbeat)
        return (time.perf_counter() - started) / size

    return best_of(5, one_round)


def idle_sweep(size: int) -> float:
    fleet = Fleet(Thresholds(600, 1200), lambda: 0.0)
    for i in range(size):
        fleet.observe(Heartbeat(f"worker-{i}", "builder", "active", []))

    def sweep() -> float:
        started = time.perf_counter()
        for _ in range(1000):
            fleet.sweep()
        return (time.perf_counter() - started) / 1000

    return best_of(5, sweep)


def main() -> None:
    sizes = (100, 1_000, 10_000, 100_000)
    print(
        f"{'workers':>8} {'ETF µs/beat':>12} {'ratio':>6} {'JSON µs/beat':>13} {'ratio':>6} "
        f"{'idle sweep µs':>14} {'ratio':>6}"
    )
    base = None
    for size in sizes:
        row = (per_heartbeat(size, encode_etf), per_heartbeat(size, encode_json), idle_sweep(size))
        base = base or row
        print(
            f"{size:>8} {row[0] * 1e6:>12.1f} {row[0] / base[0]:>6.2f} {row[1] * 1e6:>13.1f} "
            f"{row[1] / base[1]:>6.2f} {row[2] * 1e6:>14.2f} {row[2] / base[2]:>6.2f}"
        )


if __name__ == "__main__":
    main()
