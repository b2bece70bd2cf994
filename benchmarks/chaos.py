"""The chaos run of issue 10: sharded replicas under a heartbeating fleet, an owner SIGKILLed
every so often, zero false transitions and every exchange always back within the crash bound.

Runs against the local test bed (``scripts/testbed up``) like ``benchmarks.run``: the replicas
as processes (``SHARDING=on``, each its own OAuth client so the Manager emulator tells whose
write each one was), the real broker fed by the load generator (``benchmarks.loadgen``), the
Manager emulator in this process. Lease timings are scaled down as in tests/e2e/test_sharding.py
(lease 8 s, renew deadline 6 s, retry 1 s): the crash bound is LD + f + 5 s (seeding,
connecting) = 13.5 s. Every ``--every`` seconds a random replica that owns an exchange is
SIGKILLed and a new one (a new pod: a new identity) is started at once, as a Deployment would.

    python -m benchmarks.chaos              # 3 replicas, a kill every minute for 15 minutes
    python -m benchmarks.chaos --quick      # CI smoke check: 2 kills, about a minute and a half

It prints a table (kills, takeover max and median, false transitions, lost Manager writes,
fenced writes, the longest an exchange was without a live holder) and exits 1 unless the
verdict is "pass". ``--json FILE`` also writes the figures.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import random
import signal
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.run import (
    CLIENT_SECRET,
    Bed,
    Exchanges,
    Operator,
    apiserver_client,
    loadgen_result,
    seconds,
    testbed_session,
    wait_until,
)

LEASES = "/apis/coordination.k8s.io/v1/namespaces/{}/leases"
EXCHANGE_LEASES = {"labelSelector": "overseer.openaperture.io/lease=exchange"}
TIMINGS = {  # as tests/e2e/test_sharding.py scales them
    "LEASE_DURATION": "8s",
    "LEASE_RENEW_DEADLINE": "6s",
    "LEASE_RETRY_PERIOD": "1s",
    "LEASE_FAILURE_RETRY": "500ms",
    "LEASE_REQUEST_TIMEOUT": "2s",
    "MEMBER_LEASE_DURATION": "3s",
    "MEMBER_ELIGIBLE_AFTER": "2s",
    "HANDOVER_INTERVAL": "300ms",
    "CLOCK_SKEW_BOUND": "1s",
    "ORPHAN_LEASE_AFTER": "30s",
}
# LD + f, plus seeding and connecting (docs/sharding.md "Crash takeover").
CRASH_BOUND = seconds(TIMINGS["LEASE_DURATION"]) + 0.5 + 5.0


@dataclass(frozen=True)
class Scale:
    replicas: int = 3
    every: float = 60.0  # seconds between kills
    duration: float = 900.0
    exchanges: int = 6
    workers_per_exchange: int = 50
    interval: float = 2.0  # each worker's heartbeat
    refresh: str = "5s"  # the Manager rows' refreshInterval
    thresholds: tuple[str, str] = ("20s", "40s")


QUICK = Scale(every=20.0, duration=40.0, exchanges=4, workers_per_exchange=10, interval=1.0)


@dataclass
class Kill:
    victim: str
    at: float
    exchanges: list[str]
    takeovers: dict[str, float] = field(default_factory=dict)  # exchange -> seconds


class Holders:
    """Who holds each exchange Lease, read from the apiserver every 0.2 s (a thread)."""

    def __init__(self, bed: Bed, namespace: str) -> None:
        self._client = apiserver_client(bed.env["KUBECONFIG"])
        self._path = LEASES.format(namespace)
        self.samples: list[tuple[float, dict[str, str]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="holders", daemon=True)
        self._thread.start()

    def read(self) -> dict[str, str]:
        """Exchange (resource name) -> holder ("" if released)."""
        items = self._client.get(self._path, params=EXCHANGE_LEASES).raise_for_status().json()
        result = {}
        for lease in items["items"]:
            annotations = lease["metadata"].get("annotations") or {}
            name = annotations.get("overseer.openaperture.io/exchange", "").partition("/")[2]
            result[name] = lease["spec"].get("holderIdentity") or ""
        return result

    def _run(self) -> None:
        while not self._stop.is_set():
            moment = time.monotonic()  # before the read: the state read is at least this recent
            try:
                self.samples.append((moment, self.read()))
            except Exception as error:  # the apiserver is shared: a missed sample, not a failure
                print(f"holders not read: {error}", file=sys.stderr)
            time.sleep(0.2)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._client.close()

    def taken_over(self, name: str, victim: str, since: float) -> float | None:
        """When a sample first named another holder than ``victim`` after ``since``."""
        for moment, seen in self.samples:
            if moment >= since and seen.get(name) not in (None, "", victim):
                return moment
        return None

    def longest_gap(self, dead: dict[str, float], until: float) -> float:
        """The longest any exchange went without a holder that was alive (``dead``: replica ->
        when it was killed), by the samples."""
        longest, since = 0.0, dict[str, float]()
        for moment, seen in self.samples:
            for name, holder in seen.items():
                live = holder and (holder not in dead or moment < dead[holder])
                if not live:
                    since.setdefault(name, moment)
                elif name in since:
                    longest = max(longest, moment - since.pop(name))
        for moment in since.values():
            longest = max(longest, until - moment)
        return longest


class Replicas:
    """Sharded operator processes, each with its own identity and OAuth client."""

    def __init__(self, bed: Bed, namespace: str) -> None:
        self._bed, self._namespace = bed, namespace
        self.alive: dict[str, Operator] = {}
        self.killed: dict[str, float] = {}  # identity -> when
        self.fenced = 0.0  # overseer_fenced_writes_total of the replicas killed so far
        self._next = 0

    def start(self) -> str:
        identity = f"op-{self._next}"
        self._next += 1
        self._bed.manager.set_client_secret(identity, CLIENT_SECRET)
        self.alive[identity] = self._bed.operator(
            self._namespace,
            identity,
            SHARDING="on",
            POD_NAMESPACE=self._namespace,
            OAUTH_CLIENT_ID=identity,
            LOG_LEVEL="INFO",  # every acquisition, release and loss in the log
            **TIMINGS,
        )
        return identity

    def kill(self, identity: str) -> float:
        operator = self.alive.pop(identity)
        self.fenced += operator.metric("overseer_fenced_writes_total")  # it can write no more
        operator.process.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        operator.process.wait(10)
        self.killed[identity] = killed_at
        return killed_at

    def fenced_writes(self) -> float:
        return self.fenced + sum(
            operator.metric("overseer_fenced_writes_total") for operator in self.alive.values()
        )


def fleet_rows(bed: Bed, exchanges: Exchanges, prefix: str) -> dict[str, dict[str, Any]]:
    """hostname -> the fleet's rows in the Manager."""
    return {
        row["hostname"]: row
        for exchange_id in exchanges.ids
        for row in bed.manager.modules(exchange_id)
        if row["hostname"].startswith(f"{prefix}-")
    }


def false_transitions(
    bed: Bed, exchanges: Exchanges, prefix: str, since: float
) -> list[dict[str, Any]]:
    """Manager writes other than "active" about the fleet's workers (none of them ever stops):
    which exchange, whose write, when (seconds after ``since``)."""
    wrong = []
    for name, exchange_id in zip(exchanges.names, exchanges.ids, strict=True):
        for write in bed.manager.module_writes(exchange_id):
            body = write.body or {}
            if write.method == "DELETE":
                hostname, status = write.path.rsplit("/", 1)[1], "DELETE"
            else:
                hostname, status = str(body.get("hostname", "")), str(body.get("status"))
            if hostname.startswith(f"{prefix}-") and status != "active":
                at = round(write.time - since, 1)
                wrong.append({"exchange": name, "host": hostname, "status": status,
                              "by": write.client, "after_s": at})  # fmt: skip
    return wrong


def row_gaps(
    bed: Bed, exchanges: Exchanges, prefix: str, since: float
) -> dict[str, tuple[float, float]]:
    """hostname -> (the longest its Manager row went unwritten after ``since``, until now;
    when that began, after ``since``); a row not "active" at the end is never written again."""
    times: dict[str, list[float]] = {}
    for exchange_id in exchanges.ids:
        for write in bed.manager.module_writes(exchange_id):
            hostname = str((write.body or {}).get("hostname", ""))
            if write.method == "POST" and hostname.startswith(f"{prefix}-"):
                times.setdefault(hostname, []).append(write.time)
    now = time.monotonic()
    gaps = {}
    for hostname, row in fleet_rows(bed, exchanges, prefix).items():
        moments = [since, *sorted(t for t in times.get(hostname, []) if t >= since), now]
        gap, began = max((b - a, a - since) for a, b in itertools.pairwise(moments))
        gaps[hostname] = (math.inf if row["status"] != "active" else gap, began)
    return gaps


def run(bed: Bed, scale: Scale, rng: random.Random) -> dict[str, Any]:
    exchanges = bed.provision(scale.exchanges)
    bed.apply(exchanges, scale.refresh, scale.thresholds)
    workers = scale.exchanges * scale.workers_per_exchange
    prefix = "w"
    load = bed.loadgen(exchanges, scale.workers_per_exchange, "--interval", str(scale.interval),
                       "--duration", str(scale.duration + 300), prefix=prefix)  # fmt: skip
    replicas = Replicas(bed, exchanges.namespace)
    holders = Holders(bed, exchanges.namespace)
    try:
        for _ in range(scale.replicas):
            replicas.start()
        wait_until(
            lambda: (
                len(fleet_rows(bed, exchanges, prefix)) >= workers
                and all(holders.read().get(name) for name in exchanges.names)
            ),
            120,
            "every exchange owned and the fleet registered",
            interval=0.5,
        )
        started = time.monotonic()
        kills: list[Kill] = []
        count = max(1, int(scale.duration // scale.every))
        for number in range(1, count + 1):
            time.sleep(max(0.0, started + number * scale.every - time.monotonic()))
            held = holders.read()
            owners = sorted({holder for holder in held.values() if holder in replicas.alive})
            victim = rng.choice(owners)
            kill = Kill(victim, 0.0, sorted(name for name, h in held.items() if h == victim))
            kill.at = replicas.kill(victim)
            replicas.start()  # the replacement pod
            kills.append(kill)
            print(f"kill {number}/{count}: {victim} ({', '.join(kill.exchanges)})", flush=True)
        time.sleep(CRASH_BOUND + 2)  # the last takeover, within the bound
        ended = time.monotonic()
        for kill in kills:
            for name in kill.exchanges:
                taken = holders.taken_over(name, kill.victim, kill.at)
                kill.takeovers[name] = math.inf if taken is None else taken - kill.at
        takeovers = [taken for kill in kills for taken in kill.takeovers.values()]
        longest = holders.longest_gap(replicas.killed, ended)
        wrong = false_transitions(bed, exchanges, prefix, started)
        gaps = row_gaps(bed, exchanges, prefix, started)
        # Across a crash a row goes unwritten for at most: the refresh interval before it, the
        # takeover, and one more interval (the successor counts a row it lists as just written).
        bound = 2 * seconds(scale.refresh) + CRASH_BOUND
        late = {host: gap for host, gap in gaps.items() if gap[0] > bound}
        final = holders.read()
        one_each = all(final.get(name) in replicas.alive for name in exchanges.names)
    finally:
        holders.close()
    loadgen_result(load)
    worst = max(takeovers, default=0.0)
    passed = not wrong and not late and max(worst, longest) <= CRASH_BOUND and one_each
    return {
        "replicas": scale.replicas,
        "kills": len(kills),
        "every_s": scale.every,
        "duration_s": ended - started,
        "exchanges": scale.exchanges,
        "workers": workers,
        "takeover_max_s": worst,
        "takeover_median_s": statistics.median(takeovers) if takeovers else 0.0,
        "takeovers": len(takeovers),
        "crash_bound_s": CRASH_BOUND,
        "longest_without_live_holder_s": longest,
        "false_transitions": len(wrong),
        "false_transition_log": wrong,
        "lost_writes": len(late),
        "lost_write_log": {host: [round(g, 1), round(b, 1)] for host, (g, b) in late.items()},
        "longest_row_unwritten_s": max((gap for gap, _ in gaps.values()), default=0.0),
        "fenced_writes": replicas.fenced_writes(),
        "one_live_owner_each": one_each,
        "kill_log": [
            {"victim": kill.victim, "after_s": kill.at - started, "takeovers": kill.takeovers}
            for kill in kills
        ],
        "verdict": "pass" if passed else "FAIL",
    }


def table(figures: dict[str, Any], header: str) -> str:
    rows = [
        ("kills", f"{figures['kills']} (one every {figures['every_s']:g} s)"),
        ("takeover max / median (s)", f"{figures['takeover_max_s']:.1f} / "
         f"{figures['takeover_median_s']:.1f} over {figures['takeovers']} exchanges "
         f"(bound {figures['crash_bound_s']:.1f})"),
        ("longest without a live holder (s)", f"{figures['longest_without_live_holder_s']:.1f}"),
        ("false transitions", f"{figures['false_transitions']}"),
        ("lost Manager writes", f"{figures['lost_writes']} (longest a row went unwritten: "
         f"{figures['longest_row_unwritten_s']:.1f} s)"),
        ("fenced writes", f"{figures['fenced_writes']:.0f}"),
        ("verdict", figures["verdict"]),
    ]  # fmt: skip
    lines = [header, "", "| figure | value |", "|---|---|"]
    lines += [f"| {name} | {value} |" for name, value in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.chaos", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--quick", action="store_true", help="2 kills, small fleet: a smoke check")
    parser.add_argument("--every", type=float, help="seconds between kills")
    parser.add_argument("--duration", type=float, help="seconds of killing")
    parser.add_argument("--seed", type=int, default=None, help="which owners are killed")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--logs", type=Path, help="keep every process's log here")
    options = parser.parse_args(argv)
    scale = QUICK if options.quick else Scale()
    overrides = {"every": options.every, "duration": options.duration}
    scale = Scale(**{**scale.__dict__, **{k: v for k, v in overrides.items() if v is not None}})
    seed = options.seed if options.seed is not None else random.randrange(2**32)
    with testbed_session(pin=False, keep_logs=options.logs) as bed:
        figures = run(bed, scale, random.Random(seed))
    figures["seed"] = seed
    header = (
        f"{'quick' if options.quick else 'full'} chaos run: {scale.replicas} replicas, "
        f"{scale.exchanges} exchanges x {scale.workers_per_exchange} workers at "
        f"{scale.interval:g} s, {figures['duration_s']:.0f} s, seed {seed}"
    )
    print(table(figures, header), flush=True)
    if options.json:
        options.json.write_text(json.dumps(figures, indent=2))
    return 0 if figures["verdict"] == "pass" else 1


if __name__ == "__main__":
    sys.exit(main())
