"""The operator's RSS over time under a steady fleet: idle, once the fleet registered, then every
``--every`` seconds, each beside the idle operator (same exchanges, before any heartbeat), with the
broker's backlog on the exchanges' queues and the workers judged inactive or offline so far (a
steady fleet must show neither growing).

``benchmarks.run`` reads the RSS once, at the end of its steady window; this shows *when* memory
grows: at registration, or later, e.g. at the Manager reconciliations (every ``inactiveAfter / 2``,
at most 5 minutes, so the default run lasts past the first two). Same test bed, pinning and
processes as ``benchmarks.run``.

    python -m benchmarks.memory                                  # 10 x 1,000 workers, 11 minutes
    python -m benchmarks.memory --exchanges 100 --minutes 10     # 100,000 workers
    python -m benchmarks.memory --env MALLOC_MMAP_THRESHOLD_=131072   # the operator with a variant
"""

from __future__ import annotations

import argparse
import re
import time
from pathlib import Path

from benchmarks.run import (
    Bed,
    Exchanges,
    Operator,
    broker_pinned,
    depths,
    metric_sum,
    testbed_session,
    wait_until,
)


def status_line(pid: int, idle_rss: int, workers: int) -> str:
    status = Path(f"/proc/{pid}/status").read_text(encoding="utf-8")

    def kib(key: str) -> int:
        return int(re.search(rf"^{key}:\s+(\d+)", status, re.MULTILINE).group(1))  # type: ignore[union-attr]

    rss = kib("VmRSS") * 1024
    return (
        f"RSS {rss / 2**20:6.1f} MiB, anonymous {kib('RssAnon') / 1024:6.1f} MiB, "
        f"beyond idle {(rss - idle_rss) / workers:6,.0f} B per worker"
    )


def fleet_line(bed: Bed, exchanges: Exchanges, operator: Operator) -> str:
    backlog = sum(messages for messages, _ in depths(bed, exchanges.queues))
    text = operator.metrics() or ""
    judged = sum(
        metric_sum(text, "overseer_worker_transitions_total", state=state)
        for state in ("inactive", "offline")
    )
    return f"backlog {backlog:7,} messages, judged inactive/offline {judged:,.0f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.memory", description=__doc__)
    parser.add_argument("--exchanges", type=int, default=10)
    parser.add_argument("--workers-per-exchange", type=int, default=1000)
    parser.add_argument("--interval", type=float, default=30.0, help="heartbeat interval (s)")
    parser.add_argument("--minutes", type=float, default=11.0, help="after the registration")
    parser.add_argument("--every", type=float, default=30.0, help="seconds between readings")
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE for the operator")
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")
    args = parser.parse_args(argv)
    variant = dict(setting.split("=", 1) for setting in args.env)
    workers = args.exchanges * args.workers_per_exchange
    with testbed_session(not args.no_pin) as bed, broker_pinned(not args.no_pin):
        exchanges = bed.provision(args.exchanges)
        bed.apply(exchanges, "5m", ("10m", "20m"))
        operator = bed.operator(exchanges.namespace, **variant)
        wait_until(
            lambda: all(consumers for _, consumers in depths(bed, exchanges.queues)),
            120,
            "every queue consumed",
            interval=0.5,
        )
        time.sleep(3)
        idle_rss, pid = operator.rss(), operator.process.pid
        print(f"{args.exchanges} x {args.workers_per_exchange} workers at {args.interval:g} s; "
              f"operator variant {variant or 'none'}")  # fmt: skip
        print(f"idle        {status_line(pid, idle_rss, workers)}", flush=True)
        duration = args.minutes * 60 + 3 * args.interval + 300
        bed.loadgen(exchanges, args.workers_per_exchange, "--interval", str(args.interval),
                    "--duration", str(duration))  # fmt: skip
        started = time.monotonic()
        wait_until(
            lambda: bed.manager.module_count(set(exchanges.ids)) >= workers + args.exchanges,
            3 * args.interval + 300 + workers / 50,
            "the fleet registered",
            interval=1.0,
        )
        registered = time.monotonic()
        print(f"registered  {status_line(pid, idle_rss, workers)} "
              f"({registered - started:.0f} s)", flush=True)  # fmt: skip
        while time.monotonic() - registered < args.minutes * 60:
            time.sleep(args.every)
            moment = time.monotonic() - registered
            fleet = fleet_line(bed, exchanges, operator)
            print(f"+{moment:5.0f} s    {status_line(pid, idle_rss, workers)}; {fleet}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
