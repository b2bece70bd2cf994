"""The whole performance table of issue 9, each figure beside its baseline from the same run.

Runs against the local test bed (``scripts/testbed up``): the operator as a process (RSS read from
/proc), the real broker, the Manager emulator (``benchmarks.manager_process``), the load generator
(``benchmarks.loadgen``) and the bare aio-pika consumer (``benchmarks.bare``) as processes. By
default the broker and the load generator are pinned to CPU 0 and the consumer under test (the
operator or the bare client) to CPU 1, so they do not share a core (the broker's affinity is put
back at the end). While the mass-silence rows read the operator's event loop, the rest of the
test bed (apiserver, etcd, the Manager emulator, this runner) joins the broker on CPU 0.

    python -m benchmarks.run            # the full table (about 20 minutes)
    python -m benchmarks.run --quick    # every row at a tiny scale: a smoke check (CI), no figures

Rows (goals from the issue; every ratio against a baseline measured in the same run):

1. ingest: N queued heartbeats (half ETF, half JSON) drained by the operator vs by the bare client.
2. capacity: the rate each consumer sustains while the load generator publishes flat out; the
   largest fleet at a 30 s heartbeat each can carry; the load generator's own ceiling.
3. steady fleet: E exchanges x W workers through the broker for a window: backlog growth, false
   transitions, RSS beyond the idle operator; Kubernetes writes per exchange per minute; Manager
   writes vs the legacy one-per-heartbeat rate, and how evenly the refreshes are spread.
4. restart with that fleet: time until every queue is consumed again; false flips after it. The
   baseline: the bare client started the same way (the operator stopped while the fleet beats,
   the bare client started on every queue, 10 connects at a time as the operator's).
5. mass silence: S workers stop at once: detection lag (Manager and status, p99 after the
   threshold) and the largest event-loop lag during the transition. The Manager lag's baseline is
   the emulator's own: a bare httpx client posting the same rows at the same times.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import json
import math
import os
import platform
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aio_pika
import httpx

from benchmarks.manager_process import EmulatorProcess
from overseer_operator.defaults import MANAGER_WRITE_CONCURRENCY
from overseer_operator.kube import KubeApi
from overseer_operator.kubeconfig import load_credentials
from tests.fixtures.operator import free_port
from tests.fixtures.testbed import parse_env

REPO = Path(__file__).resolve().parents[1]
CLIENT_ID, CLIENT_SECRET = "bench", "bench-secret"
WORKLOAD = [{"description": "building workflow"}]  # the load generator's, as the writer posts it


@dataclass(frozen=True)
class Scale:
    ingest_messages: int = 20_000
    ingest_hosts: int = 2_000
    capacity_seconds: float = 15.0
    exchanges: int = 100
    workers_per_exchange: int = 1_000
    interval: float = 30.0
    window: float = 600.0
    refresh: str = "5m"
    thresholds: tuple[str, str] = ("10m", "20m")
    restart_watch: float = 60.0
    silent_exchanges: int = 10
    silent_workers: int = 10_000
    silent_interval: float = 30.0
    silent_thresholds: tuple[str, str] = ("60s", "120s")
    # The steady fleet is already in the Manager (an earlier Overseer registered it), so the
    # window does not wait for a registration bound by how fast the Manager takes POSTs.
    registered: bool = False


QUICK = Scale(
    ingest_messages=1_000,
    ingest_hosts=100,
    capacity_seconds=1.0,
    exchanges=2,
    workers_per_exchange=20,
    interval=1.0,
    window=3.0,
    refresh="10s",
    thresholds=("10s", "20s"),
    restart_watch=2.0,
    silent_exchanges=2,
    silent_workers=40,
    silent_interval=0.5,
    silent_thresholds=("2s", "4s"),
)


def seconds(duration: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600}
    return float(duration[:-1]) * units[duration[-1]]


# --- the test bed --------------------------------------------------------------------------


@dataclass
class Exchanges:
    """E exchanges known to the Manager, provisioned on the broker, as MessagingExchanges."""

    namespace: str
    root: str
    queues: list[str]
    keys: list[str]
    ids: list[str]
    names: list[str]


@dataclass
class Bed:
    env: dict[str, str]
    pin: bool
    manager: EmulatorProcess
    log_dir: Path
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    namespaces: list[str] = field(default_factory=list)
    next_id: int = 1000

    @property
    def amqp_url(self) -> str:
        return self.env["AMQP_URL"]

    def kubectl(self, *args: str, input: str | None = None) -> str:
        return subprocess.run(
            [str(Path(self.env["TESTBED_BIN_DIR"]) / "kubectl"), *args],
            input=input,
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, **self.env},
        ).stdout

    def spawn(self, name: str, args: list[str], cpu: int | None, **env: str) -> subprocess.Popen:
        prefix = ["taskset", "-c", str(cpu)] if self.pin and cpu is not None else []
        log = open(self.log_dir / f"{name}-{len(self.processes)}.log", "wb")  # noqa: SIM115
        process = subprocess.Popen(
            [*prefix, sys.executable, *args],
            cwd=REPO,
            stdout=subprocess.PIPE if name == "loadgen" else log,
            stderr=log,
            env={**os.environ, **self.env, "PYTHONPATH": str(REPO), **env},
        )
        self.processes.append(process)
        return process

    def provision(self, count: int, namespace: str | None = None, prefix: str = "x") -> Exchanges:
        """``count`` exchanges in the Manager and on the broker, in a new namespace or this one."""
        tag = secrets.token_hex(3)
        root = f"bench-{tag}"
        root_id = str(self.next_id)
        self.manager.add_exchange(root_id, root, "bench")
        queues, keys, ids = [], [], []
        for index in range(count):
            exchange_id = str(self.next_id + 1 + index)
            self.manager.add_exchange(exchange_id, f"{root}:x{index}", f"x{index}", root_id)
            queues.append(f"{root}:x{index}.system_modules")
            keys.append(f"bench.x{index}.system_modules")
            ids.append(exchange_id)
        self.next_id += count + 1
        asyncio.run(declare(self.amqp_url, root, queues, keys))
        if namespace is None:
            namespace = root
            self.kubectl("create", "namespace", namespace)
            self.namespaces.append(namespace)
        names = [f"{prefix}{index}" for index in range(count)]
        return Exchanges(namespace, root, queues, keys, ids, names)

    def apply(self, exchanges: Exchanges, refresh: str, thresholds: tuple[str, str]) -> None:
        items = [
            {
                "apiVersion": "openaperture.io/v1alpha1",
                "kind": "MessagingExchange",
                "metadata": {"name": exchanges.names[index], "namespace": exchanges.namespace},
                "spec": {
                    "exchangeId": exchange_id,
                    "brokerId": "1",
                    "queues": {"systemModules": exchanges.queues[index]},
                    "manager": {"refreshInterval": refresh},
                    "thresholds": {"inactiveAfter": thresholds[0], "offlineAfter": thresholds[1]},
                },
            }
            for index, exchange_id in enumerate(exchanges.ids)
        ]
        self.kubectl(
            "apply",
            "-f",
            "-",
            input=json.dumps({"apiVersion": "v1", "kind": "List", "items": items}),
        )

    def operator(self, namespace: str, identity: str | None = None, **env: str) -> Operator:
        """The operator as a process watching ``namespace``; ``env`` adds or overrides settings."""
        metrics_port, liveness_port = free_port(), free_port()
        process = self.spawn(
            "operator",
            [
                "-m",
                "overseer_operator",
                "run",
                "-n",
                namespace,
                "--metrics-port",
                str(metrics_port),
                "--liveness-port",
                str(liveness_port),
            ],
            cpu=1,
            **{
                "MANAGER_URL": self.manager.url,
                "OAUTH_LOGIN_URL": self.manager.login_url,
                "OAUTH_CLIENT_ID": CLIENT_ID,
                "OAUTH_CLIENT_SECRET": CLIENT_SECRET,
                "POD_NAME": identity or f"overseer-{namespace}",
                "LOG_LEVEL": "WARNING",
                **env,
            },
        )
        operator = Operator(process, metrics_port, time.monotonic())
        wait_until(lambda: operator.metrics() is not None, 90, "the operator's metrics endpoint")
        return operator

    def loadgen(self, exchanges: Exchanges, workers: int, *extra: str, prefix: str = "w") -> Any:
        args = ["-m", "benchmarks.loadgen", "--amqp-url", self.amqp_url]
        args += [
            "--exchange",
            exchanges.root,
            "--workers-per-key",
            str(workers),
            "--prefix",
            prefix,
        ]
        for key in exchanges.keys:
            args += ["--routing-key", key]
        return self.spawn("loadgen", [*args, *extra], cpu=0)

    def bare(self, queues: list[str]) -> tuple[subprocess.Popen, Path]:
        count_file = self.log_dir / f"bare-{len(self.processes)}.count"
        args = [
            "-m",
            "benchmarks.bare",
            "--amqp-url",
            self.amqp_url,
            "--count-file",
            str(count_file),
        ]
        for queue in queues:
            args += ["--queue", queue]
        return self.spawn("bare", args, cpu=1), count_file

    def close(self) -> None:
        for process in self.processes:
            stop(process)
        for namespace in self.namespaces:
            with contextlib.suppress(subprocess.CalledProcessError):
                self.kubectl("delete", "namespace", namespace, "--wait=false")


@dataclass
class Operator:
    process: subprocess.Popen[bytes]
    metrics_port: int
    started: float

    def metrics(self) -> str | None:
        try:
            return httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).text
        except httpx.HTTPError:
            return None

    def metric(self, name: str, **labels: str) -> float:
        return metric_sum(self.metrics() or "", name, **labels)

    def rss(self) -> int:
        """Resident memory of the operator process (not of the taskset wrapper: it execs)."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")


def metric_sum(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if (line.startswith(name + "{") or line.startswith(name + " ")) and all(
            f'{key}="{value}"' in line for key, value in labels.items()
        ):
            total += float(line.rsplit(" ", 1)[1])
    return total


def stop(process: subprocess.Popen, timeout: float = 30) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_until(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(interval)


async def declare(amqp_url: str, root: str, queues: list[str], keys: list[str]) -> None:
    async with await aio_pika.connect(amqp_url) as connection:
        channel = await connection.channel()
        exchange = await channel.declare_exchange(root, aio_pika.ExchangeType.TOPIC, durable=True)
        for queue, key in zip(queues, keys, strict=True):
            declared = await channel.declare_queue(queue, durable=True)
            await declared.bind(exchange, key)


async def _depths(amqp_url: str, queues: list[str]) -> list[tuple[int, int]]:
    async with await aio_pika.connect(amqp_url) as connection:
        channel = await connection.channel()
        result = []
        for queue in queues:
            declared = await channel.declare_queue(queue, passive=True)
            reading = declared.declaration_result
            result.append((reading.message_count or 0, reading.consumer_count or 0))
        return result


def depths(bed: Bed, queues: list[str]) -> list[tuple[int, int]]:
    """(messages, consumers) of each queue, as the broker says now."""
    return asyncio.run(_depths(bed.amqp_url, queues))


async def _purge(amqp_url: str, queues: list[str]) -> None:
    async with await aio_pika.connect(amqp_url) as connection:
        channel = await connection.channel()
        for queue in queues:
            await (await channel.declare_queue(queue, passive=True)).purge()


def loadgen_result(process: subprocess.Popen, *, finish: bool = False) -> dict[str, Any]:
    """What the load generator printed: after it finished (a burst), or once stopped."""
    if process.poll() is None and not finish:
        process.send_signal(signal.SIGTERM)
    # communicate(): its report (10,000 last-heartbeat times) is larger than a pipe's buffer.
    output, _ = process.communicate(timeout=600)
    return json.loads(output.decode().strip().splitlines()[-1])


def timed_rate(read: Callable[[], float], total: float, timeout: float) -> float:
    """Messages per second between 10 % and 90 % of ``total`` consumed (start-up excluded)."""
    low = high = None
    started = time.monotonic()
    deadline = started + timeout
    while time.monotonic() < deadline:
        count, now = read(), time.monotonic()
        if low is None and count >= 0.1 * total:
            low = (now, count)
        if count >= 0.9 * total:
            high = (now, count)
            break
        time.sleep(0.05)
    if high is None:
        raise RuntimeError(f"the consumer did not drain the queue in {timeout:.0f} s")
    if low is None or high[0] <= low[0]:  # all read between two polls (a tiny queue)
        low = (started, 0.0)
    return (high[1] - low[1]) / (high[0] - low[0])


def window_rate(read: Callable[[], float], duration: float) -> float:
    time.sleep(1.0)  # the load generator gets going
    first, started = read(), time.monotonic()
    time.sleep(duration)
    return (read() - first) / (time.monotonic() - started)


def read_count(path: Path) -> float:
    try:
        return float(path.read_text() or 0)
    except (FileNotFoundError, ValueError):
        return 0.0


# --- the rows ------------------------------------------------------------------------------


def ingest_and_capacity(bed: Bed, scale: Scale, rows: list[Row]) -> float:
    """Rows 1 and 2; returns the operator's sustained rate (for sizing the steady fleet)."""
    exchanges = bed.provision(1)
    queue = exchanges.queues[0]
    burst = str(int(scale.capacity_seconds * 9000) + 1000)

    def prefill() -> dict[str, Any]:
        asyncio.run(_purge(bed.amqp_url, [queue]))
        load = bed.loadgen(exchanges, scale.ingest_hosts, "--burst", str(scale.ingest_messages))
        return loadgen_result(load, finish=True)

    # The bare client: drain, then consume while the load generator publishes flat out.
    ceiling = prefill()
    bare, count_file = bed.bare([queue])
    bare_rate = timed_rate(lambda: read_count(count_file), scale.ingest_messages, 600)
    wait_until(lambda: read_count(count_file) >= scale.ingest_messages, 120, "the bare drain")
    load = bed.loadgen(exchanges, scale.ingest_hosts, "--burst", burst)
    bare_capacity = window_rate(lambda: read_count(count_file), scale.capacity_seconds)
    loadgen_result(load)
    stop(bare)

    # The operator, restarted with the same backlog waiting: as after a real restart, the hosts
    # are known (one round was read and registered by a first run), so the drain is heartbeats,
    # not 2,000 first registrations.
    asyncio.run(_purge(bed.amqp_url, [queue]))
    bed.apply(exchanges, scale.refresh, scale.thresholds)
    first = bed.operator(exchanges.namespace)
    bed.loadgen(exchanges, scale.ingest_hosts, "--burst", str(scale.ingest_hosts)).wait(120)
    ids = {exchanges.ids[0]}
    wait_until(
        lambda: bed.manager.module_count(ids) > scale.ingest_hosts, 120, "the hosts registered"
    )
    stop(first.process)
    prefill()
    operator = bed.operator(exchanges.namespace)

    def received() -> float:
        return operator.metric("overseer_heartbeats_received_total")

    operator_rate = timed_rate(received, scale.ingest_messages, 600)
    wait_until(lambda: received() >= scale.ingest_messages, 120, "the operator's drain")
    load = bed.loadgen(exchanges, scale.ingest_hosts, "--burst", burst)
    operator_capacity = window_rate(received, scale.capacity_seconds)
    loadgen_result(load)
    held = operator.metric("overseer_verdicts_held")
    stop(operator.process)
    asyncio.run(_purge(bed.amqp_url, [queue]))

    rows.append(
        Row(
            "ingest: queued heartbeats drained (msg/s)",
            operator_rate,
            bare_rate,
            ">= 0.8x the bare rate",
            operator_rate >= 0.8 * bare_rate,
            f"{scale.ingest_messages} queued, {scale.ingest_hosts} hosts (known: the operator "
            "restarts behind the backlog), half ETF half JSON; rate between 10 % and 90 % drained",
        )
    )
    rows.append(
        Row(
            "capacity while publishing flat out (msg/s)",
            operator_capacity,
            bare_capacity,
            "carry 3,333/s (100,000 workers at 30 s)",
            operator_capacity >= 3333,
            f"largest fleet at 30 s: operator {operator_capacity * 30:,.0f}, bare "
            f"{bare_capacity * 30:,.0f} workers; load generator ceiling "
            f"{ceiling['rate']:,.0f} msg/s publishing alone; verdicts held during the "
            f"overload: {held:.0f} (1 = held)",
        )
    )
    return operator_capacity


def steady_fleet_and_restart(
    bed: Bed, scale: Scale, rows: list[Row], capacity: float
) -> tuple[Operator, Exchanges]:
    """Rows 3 to 7; returns the restarted operator, still running, and its exchanges."""
    exchanges_count, per_exchange = scale.exchanges, scale.workers_per_exchange
    wanted = exchanges_count * per_exchange / scale.interval
    if capacity and wanted > 0.8 * capacity:  # the largest fleet this machine carries
        per_exchange = max(1, int(0.8 * capacity * scale.interval / exchanges_count))
    workers = exchanges_count * per_exchange
    exchanges = bed.provision(exchanges_count)
    bed.apply(exchanges, scale.refresh, scale.thresholds)
    operator = bed.operator(exchanges.namespace)
    consumed_at = every_queue_consumed(bed, exchanges, "at the first start")
    time.sleep(min(3.0, scale.interval))
    idle_rss = operator.rss()
    first_start = consumed_at - operator.started
    if scale.registered:  # the rows are read at start: a new process reads them
        stop(operator.process)
        bed.manager.put_fleet(exchanges.ids, "w", per_exchange)
        operator = bed.operator(exchanges.namespace)
        every_queue_consumed(bed, exchanges, "with the fleet registered")
    # Run long enough for registration, the window, the restart and the bare client's.
    duration = 3 * scale.interval + 60 + scale.window + scale.restart_watch + 180
    load = bed.loadgen(exchanges, per_exchange, "--interval", str(scale.interval),
                       "--duration", str(duration))  # fmt: skip

    ids = set(exchanges.ids)
    wait_until(
        lambda: bed.manager.module_count(ids) >= workers + exchanges_count,  # + the operator
        3 * scale.interval + 300 + workers / 50,
        "the fleet registered",
        interval=1.0,
    )
    time.sleep(scale.interval)  # one full round after the last registration
    text = operator.metrics() or ""
    before = snapshot(bed, operator, exchanges, text)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        watch_end = before["time"] + scale.window + min(30.0, scale.window)  # past the last depths
        watched = pool.submit(watch_writes, bed, exchanges, watch_end)
        peak_backlog = 0
        samples = max(1, int(scale.window / 5))
        for sample in range(1, samples + 1):  # on a schedule: reading the depths takes time
            time.sleep(
                max(0.0, before["time"] + sample * scale.window / samples - time.monotonic())
            )
            peak_backlog = max(peak_backlog, sum(m for m, _ in depths(bed, exchanges.queues)))
        after = snapshot(bed, operator, exchanges, operator.metrics() or "")
        object_writes = [
            [moment for moment in times if before["time"] <= moment <= after["time"]]
            for times in watched.result()
        ]
    rss = operator.rss()
    minutes = (after["time"] - before["time"]) / 60
    heartbeats = (after["heartbeats"] - before["heartbeats"]) / minutes
    manager_writes = [
        request.time
        for exchange_id in exchanges.ids
        for request in bed.manager.module_writes(exchange_id)
        if before["time"] <= request.time <= after["time"]
    ]
    manager_rate = len(manager_writes) / minutes
    false_transitions = after["left_active"] - before["left_active"]
    false_since_start = after["left_active"]  # registration and the round after it included
    growth = after["backlog"] - before["backlog"]
    kube_writes = (after["kube"] - before["kube"]) / exchanges_count  # per exchange
    events = after["events"] - before["events"]
    # Each exchange's writes as the apiserver saw them, counted as intervals over the time they
    # span: writes a minute apart fit floor(minutes) + 1 times in the window (a writer at exactly
    # one a minute read 12 / 10.97 = 1.09 counted as writes), and n - 1 over the whole window
    # read a writer a little faster than that as slower. A few writes close together (a span
    # under half the window) are counted over the window instead.
    object_rates = [
        (len(times) - 1) / ((times[-1] - times[0]) / 60)
        if len(times) > 1 and times[-1] - times[0] >= scale.window / 2
        else len(times) / minutes
        for times in object_writes
    ]
    kube = max(object_rates) + events / exchanges_count / minutes
    buckets = [0] * 10
    for moment in manager_writes:
        index = int((moment - before["time"]) / (after["time"] - before["time"]) * 10)
        buckets[min(index, 9)] += 1
    spread = max(buckets) / (sum(buckets) / 10) if sum(buckets) else float("nan")
    per_worker = (rss - idle_rss) / workers
    behind = manager_behind(bed, exchanges)
    fleet = f"{exchanges_count} x {per_exchange} workers at {scale.interval:g} s"
    rows.append(
        Row(
            "steady fleet: backlog growth (messages)",
            growth,
            None,
            "zero growth, zero false transitions",
            growth <= 0.01 * workers and false_since_start == 0 and after["held"] == 0,
            f"{fleet} ({workers / scale.interval:,.0f} msg/s; received {heartbeats / 60:,.0f}/s) "
            f"over {minutes:.1f} min: peak backlog {peak_backlog}, false transitions "
            f"{false_transitions:.0f} ({false_since_start:.0f} since the operator started), "
            f"exchanges holding verdicts at the end {after['held']:.0f}",
        )
    )
    rows.append(
        Row(
            "steady fleet: RSS (MiB) / beyond idle per worker (B)",
            rss / 2**20,
            idle_rss / 2**20,
            "<= 200 MiB; <= 1 KiB per worker",
            rss <= 200 * 2**20 * workers / 100_000 + idle_rss and per_worker <= 1024,
            f"baseline = the idle operator with the {exchanges_count} exchanges, before any "
            f"heartbeat; {per_worker:,.0f} B per worker beyond it",
        )
    )
    rows.append(
        Row(
            "Kubernetes writes per exchange per minute",
            kube,
            None,
            "<= 1",
            kube <= 1.0,
            f"the busiest exchange: writes to it as a watch saw them (status patches, kopf's "
            "patches), n - 1 intervals over the minutes from the first to the last, plus Events "
            f"per exchange per minute ({events:,.0f} in all); the mean exchange "
            f"{sum(object_rates) / len(object_rates):.2f}, "
            f"{sum(map(len, object_writes)) / exchanges_count:.2f} writes in {minutes:.2f} min "
            f"(the operator counted {kube_writes:.2f} status patches and Events)",
        )
    )
    rows.append(
        Row(
            "Manager writes per minute",
            manager_rate,
            heartbeats,
            "<= 1/10 of the legacy rate; spread evenly",
            manager_rate <= heartbeats / 10
            and (math.isnan(spread) or spread <= 2.0)
            and behind == 0,
            f"baseline = legacy, one POST per heartbeat; refreshInterval {scale.refresh}; "
            f"busiest tenth of the window / mean tenth = {spread:.2f} (1 = perfectly even); "
            f"writes owed at the start / end of the window {before['pending']:,.0f} / "
            f"{after['pending']:,.0f}; exchanges saying ManagerBehind at the end {behind}",
        )
    )

    # Restart: a new operator process while the fleet keeps beating.
    stop(operator.process)
    flips_before = sum(
        1
        for exchange_id in exchanges.ids
        for request in bed.manager.module_writes(exchange_id)
        if request.method == "DELETE" or (request.body or {}).get("status") == "inactive"
    )
    restarted = bed.operator(exchanges.namespace)
    consumed = every_queue_consumed(bed, exchanges, "after the restart") - restarted.started
    time.sleep(scale.restart_watch)
    flips = (
        sum(
            1
            for exchange_id in exchanges.ids
            for request in bed.manager.module_writes(exchange_id)
            if request.method == "DELETE" or (request.body or {}).get("status") == "inactive"
        )
        - flips_before
    )
    flips += restarted.metric("overseer_worker_transitions_total", state="inactive")
    flips += restarted.metric("overseer_worker_transitions_total", state="offline")

    # The baseline: the bare client in the operator's place, after the same kind of stop.
    stop(restarted.process)
    bare_started = time.monotonic()
    bare, _ = bed.bare(exchanges.queues)
    bare_consumed = every_queue_consumed(bed, exchanges, "by the bare client") - bare_started
    stop(bare)
    restarted = bed.operator(exchanges.namespace)
    every_queue_consumed(bed, exchanges, "after the bare client")
    rows.append(
        Row(
            "restart: every queue consumed again (s)",
            consumed,
            bare_consumed,
            "<= 10 s; zero false flips in the minute after",
            consumed <= 10 and flips == 0,
            f"{exchanges_count} exchanges, {workers:,} known workers, beating throughout; "
            f"baseline = the bare client started on every queue after the same kind of stop; "
            f"the operator's first start (no workers known) {first_start:.1f} s; false flips in "
            f"{scale.restart_watch:g} s after: {flips:.0f}",
        )
    )
    loadgen_result(load)
    return restarted, exchanges


def every_queue_consumed(bed: Bed, exchanges: Exchanges, what: str) -> float:
    """The monotonic time at which the broker first lists a consumer on every queue."""
    return float(
        wait_until(
            lambda: (
                all(consumers for _, consumers in depths(bed, exchanges.queues))
                and time.monotonic()
            ),
            120,
            f"every queue consumed {what}",
            interval=0.2,
        )
    )


def manager_behind(bed: Bed, exchanges: Exchanges) -> int:
    """Exchanges whose status says the Manager's rows are stale (ManagerSynced=False,
    ManagerBehind): writes owed for longer than the operator allows."""
    listed = json.loads(bed.kubectl("get", "mx", "-n", exchanges.namespace, "-o", "json"))
    return sum(
        1
        for item in listed["items"]
        for condition in (item.get("status") or {}).get("conditions") or ()
        if condition["type"] == "ManagerSynced" and condition.get("reason") == "ManagerBehind"
    )


def snapshot(bed: Bed, operator: Operator, exchanges: Exchanges, text: str) -> dict[str, float]:
    return {
        "time": time.monotonic(),
        "heartbeats": metric_sum(text, "overseer_heartbeats_received_total"),
        "left_active": metric_sum(text, "overseer_worker_transitions_total", state="inactive")
        + metric_sum(text, "overseer_worker_transitions_total", state="offline"),
        "kube": metric_sum(text, "overseer_kubernetes_writes_total"),
        "events": metric_sum(text, "overseer_kubernetes_writes_total", kind="event"),
        "held": metric_sum(text, "overseer_verdicts_held"),
        "pending": metric_sum(text, "overseer_manager_pending_writes"),
        "backlog": sum(m for m, _ in depths(bed, exchanges.queues)),
    }


def mass_silence(
    bed: Bed, scale: Scale, rows: list[Row], operator: Operator, namespace: str
) -> None:
    """Rows 8 to 10, on the running operator (its steady fleet, stopped, is still known)."""
    count = scale.silent_exchanges
    per_exchange = scale.silent_workers // count
    workers = per_exchange * count
    inactive_after = seconds(scale.silent_thresholds[0])
    exchanges = bed.provision(count, namespace, prefix="silent")
    bed.apply(exchanges, "5m", scale.silent_thresholds)
    load = bed.loadgen(exchanges, per_exchange, "--interval", str(scale.silent_interval),
                       "--report-last", prefix="s")  # fmt: skip
    ids = set(exchanges.ids)
    wait_until(
        lambda: bed.manager.module_count(ids) >= workers + count,  # + the operator
        3 * scale.silent_interval + 300 + workers / 50,
        "the silent fleet registered",
        interval=1.0,
    )
    time.sleep(scale.silent_interval)
    # From here to the last reading, the operator's CPU is its own (see the loop-lag row).
    with operator_cpu_to_itself(bed):
        lag_buckets_before = lag_histogram(operator.metrics() or "")
        stall_max_before = operator.metric("overseer_event_loop_lag_max_seconds")
        last = loadgen_result(load)["last"]  # every worker falls silent now
        silenced = time.monotonic()
        status_times = watch_inactive(bed, exchanges, workers, silenced + inactive_after + 60)
        # The Manager's writes trail the status: wait for every POST inactive (or a deadline).
        manager_deadline = silenced + inactive_after + 60 + workers / 50
        while True:
            posts = bed.manager.inactive_posts(exchanges.ids, silenced)
            if len(posts.keys() & last.keys()) >= workers or time.monotonic() > manager_deadline:
                break
            time.sleep(1.0)
        lag_buckets_after = lag_histogram(operator.metrics() or "")
        stall_max_after = operator.metric("overseer_event_loop_lag_max_seconds")
    stop(operator.process)
    due = sorted(moment + inactive_after for moment in last.values())
    manager_lags = sorted(
        posts[host] - (last[host] + inactive_after) for host in posts.keys() & last.keys()
    )
    manager_p99 = percentile(manager_lags, 0.99) if len(manager_lags) >= workers else math.inf
    target = math.ceil(0.99 * workers)
    reached = next((moment for moment, inactive in status_times if inactive >= target), math.inf)
    status_p99 = reached - due[target - 1]
    stall_bucket = next(
        (
            bound
            for bound in sorted(lag_buckets_after)
            if lag_buckets_after[bound] - lag_buckets_before.get(bound, 0)
            == lag_buckets_after[math.inf] - lag_buckets_before.get(math.inf, 0)
        ),
        math.inf,
    )
    stall = stall_max_after if stall_max_after > stall_max_before else stall_bucket

    # The emulator's side alone, the operator stopped: a bare client with the writer's
    # concurrency posts the same rows at the same due times (shifted to now), then all at once;
    # it takes the operator's CPU, the emulator the CPU it had in the operator's run.
    def exchange_of(hostname: str) -> str:  # the load generator's "<prefix>-<key>-<index>"
        return exchanges.ids[int(hostname.split("-")[1])]

    shift = time.monotonic() + 1.0 - due[0]
    scheduled = sorted(
        (last[host] + inactive_after + shift, exchange_of(host), host) for host in last
    )
    affinity = os.sched_getaffinity(0)
    with pinned([bed.manager.pid], "0") if bed.pin else contextlib.nullcontext():
        if bed.pin:
            os.sched_setaffinity(0, {1})
        try:
            started = time.monotonic()
            asyncio.run(post_inactive(bed.manager, scheduled))
            bare_posts = bed.manager.inactive_posts(exchanges.ids, started)
            started = time.monotonic()
            everyone_now = [(0.0, exchange, host) for _, exchange, host in scheduled]
            asyncio.run(post_inactive(bed.manager, everyone_now))
            burst = sorted(bed.manager.inactive_posts(exchanges.ids, started).values())
        finally:
            os.sched_setaffinity(0, affinity)
    bare_lags = sorted(bare_posts[host] - at for at, _, host in scheduled if host in bare_posts)
    bare_p99 = percentile(bare_lags, 0.99) if len(bare_lags) >= workers else math.inf
    ceiling = len(burst) / (burst[-1] - started)
    rows.append(
        Row(
            "detection lag p99 after the threshold (s): Manager",
            manager_p99,
            bare_p99,
            "<= 1 s",
            manager_p99 <= 1.0,
            f"{workers:,} workers on {count} exchanges silent at once; from each worker's last "
            f"publish + inactiveAfter ({scale.silent_thresholds[0]}) to its POST inactive "
            f"({len(manager_lags)} seen; max {max(manager_lags, default=math.inf):.2f} s); "
            f"baseline = a bare httpx client, {MANAGER_WRITE_CONCURRENCY} in flight as the "
            "operator's writer, on the operator's CPU, posting the same rows at the same due "
            "times to the emulator (its own process, on the CPU it had in the operator's run): "
            "a ratio >> 1 says the operator is the bound; the emulator alone "
            f"takes {ceiling:,.0f} POST/s ({workers:,} at once)",
        )
    )
    rows.append(
        Row(
            "detection lag p99 after the threshold (s): status",
            status_p99,
            None,
            "<= 1 s",
            status_p99 <= 1.0,
            "time the status counts first showed 99 % inactive (a watch on the exchanges: each "
            "status patch as the apiserver serves it) minus the 99th percentile threshold",
        )
    )
    rows.append(
        Row(
            "event-loop lag during the mass transition (ms)",
            stall * 1000,
            None,
            "<= 100 ms",
            stall <= 0.1,
            "overseer_event_loop_lag_max_seconds if it rose, else the histogram bucket that "
            "holds every tick of the transition; the rest of the test bed (broker, apiserver, "
            "etcd, emulator, runner) on the other CPU meanwhile",
        )
    )


async def post_inactive(manager: EmulatorProcess, scheduled: list[tuple[float, str, str]]) -> None:
    """POST each (monotonic time, exchange id, hostname) row ``inactive`` at its time, at most
    the operator's ``MANAGER_WRITE_CONCURRENCY`` in flight (a time passed: at once)."""
    async with httpx.AsyncClient(base_url=manager.url, timeout=60) as client:
        login = {"grant_type": "client_credentials", "client_id": CLIENT_ID}
        answer = await client.post(
            manager.login_url, json={**login, "client_secret": CLIENT_SECRET}
        )
        client.headers["Authorization"] = (
            f"Bearer {answer.raise_for_status().json()['access_token']}"
        )
        rows = iter(scheduled)

        async def writer() -> None:
            for at, exchange_id, hostname in rows:  # one iterator: each row taken once
                await asyncio.sleep(at - time.monotonic())
                row = {"hostname": hostname, "type": "builder", "status": "inactive"}
                path = f"/messaging/exchanges/{exchange_id}/modules"
                (await client.post(path, json={**row, "workload": WORKLOAD})).raise_for_status()

        await asyncio.gather(*(writer() for _ in range(MANAGER_WRITE_CONCURRENCY)))


def apiserver_client(kubeconfig: str) -> httpx.Client:
    """A plain client with the kubeconfig's credentials (the operator's own loader)."""
    os.environ["KUBECONFIG"] = kubeconfig
    credentials = load_credentials()
    return httpx.Client(
        base_url=credentials.server,
        verify=credentials.as_ssl_context(),
        headers=credentials.as_http_headers(),
    )


def watch_exchanges(
    bed: Bed,
    exchanges: Exchanges,
    deadline: float,
    seen: Callable[[float, dict[str, Any]], bool],
) -> None:
    """``seen(monotonic time, object)`` for each of the exchanges as listed now, then at each
    change the apiserver reports (the operator's own ``KubeApi.watch``), until ``seen`` returns
    True or the deadline. A watch, not a poll: listing the exchanges every 0.05 s took a quarter
    of a CPU in the apiserver and a fifth in this runner, on the CPU the Manager emulator had."""
    os.environ["KUBECONFIG"] = bed.env["KUBECONFIG"]
    path, names = KubeApi.exchange_path(exchanges.namespace), set(exchanges.names)

    def ours(item: dict[str, Any]) -> bool:
        return item["metadata"].get("name") in names  # a bookmark has no name

    async def watch() -> None:
        kube = KubeApi.from_configuration()
        try:
            listed = await kube.request_json("GET", path)
            now = time.monotonic()
            if any([seen(now, item) for item in listed["items"] if ours(item)]):
                return
            version = listed["metadata"]["resourceVersion"]
            while (left := deadline - time.monotonic()) > 0:
                params = {"resourceVersion": version, "timeoutSeconds": str(math.ceil(left))}
                async for event in kube.watch(path, params, read_timeout=left + 10.0):
                    if event["type"] == "ERROR":  # e.g. 410 Gone: the version is too old
                        raise RuntimeError(f"the watch on {path} ended: {event['object']}")
                    item = event["object"]
                    version = item["metadata"]["resourceVersion"]
                    if ours(item) and seen(time.monotonic(), item):
                        return
        finally:
            await kube.aclose()

    asyncio.run(watch())


def watch_inactive(
    bed: Bed, exchanges: Exchanges, enough: int, deadline: float
) -> list[tuple[float, int]]:
    """(monotonic time, inactive workers summed over the exchanges) at the start and at each
    change of their statuses, until ``enough`` are inactive or the deadline."""
    counts: dict[str, int] = {}
    times: list[tuple[float, int]] = []

    def seen(moment: float, item: dict[str, Any]) -> bool:
        workers = (item.get("status") or {}).get("workers", {})
        counts[item["metadata"]["name"]] = int(workers.get("inactive", 0))
        times.append((moment, sum(counts.values())))
        return times[-1][1] >= enough

    watch_exchanges(bed, exchanges, deadline, seen)
    return times


def watch_writes(bed: Bed, exchanges: Exchanges, deadline: float) -> list[list[float]]:
    """For each exchange, the monotonic times of the writes to it until the deadline: every new
    resourceVersion the watch reports (status patches, and kopf's own patches of the object)."""
    writes: dict[str, list[float]] = {name: [] for name in exchanges.names}

    def seen(moment: float, item: dict[str, Any]) -> bool:
        writes[item["metadata"]["name"]].append(moment)
        return False

    watch_exchanges(bed, exchanges, deadline, seen)
    return [times[1:] for times in writes.values()]  # the first one is the listing


def lag_histogram(text: str) -> dict[float, float]:
    buckets = {}
    for line in text.splitlines():
        if line.startswith("overseer_event_loop_lag_seconds_bucket{"):
            bound = line.split('le="', 1)[1].split('"', 1)[0]
            buckets[math.inf if bound == "+Inf" else float(bound)] = float(line.rsplit(" ", 1)[1])
    return buckets


def percentile(values: list[float], fraction: float) -> float:
    return values[min(len(values) - 1, math.ceil(fraction * len(values)) - 1)]


# --- the table -----------------------------------------------------------------------------


@dataclass
class Row:
    name: str
    value: float
    baseline: float | None
    goal: str
    met: bool
    how: str

    def cells(self) -> list[str]:
        ratio = (
            f"{self.value / self.baseline:.2f}x"
            if self.baseline not in (None, 0) and math.isfinite(self.value)
            else "-"
        )
        baseline = "-" if self.baseline is None else f"{self.baseline:,.1f}"
        return [
            self.name,
            f"{self.value:,.1f}",
            baseline,
            ratio,
            self.goal,
            "met" if self.met else "MISSED",
            self.how,
        ]


def markdown(rows: list[Row], header: str) -> str:
    lines = [
        header,
        "",
        "| row | figure | baseline | ratio | goal | | how |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += ["| " + " | ".join(row.cells()) + " |" for row in rows]
    return "\n".join(lines)


def testbed_pids() -> dict[str, int]:
    """The running test bed's processes by name (``scripts/testbed status``)."""
    status = subprocess.run(
        [str(REPO / "scripts" / "testbed"), "status"],
        capture_output=True,
        text=True,
        env={**os.environ},
    ).stdout
    pids = {}
    for line in status.splitlines():
        words = line.split()
        if words[1:2] == ["running"] and "pid" in words:
            pids[words[0]] = int(words[words.index("pid") + 1])
    return pids


@contextlib.contextmanager
def pinned(pids: list[int], cpus: str) -> Iterator[None]:
    """Every thread of each process on ``cpus`` (taskset's list) meanwhile; affinities put back
    afterwards (threads started meanwhile inherit the pinning)."""
    before = {}
    try:
        for pid in pids:
            shown = subprocess.run(
                ["taskset", "-p", "-c", str(pid)], capture_output=True, text=True, check=True
            )
            before[pid] = shown.stdout.rsplit(":", 1)[1].strip()
            subprocess.run(["taskset", "-a", "-p", "-c", cpus, str(pid)], capture_output=True)
        yield
    finally:
        for pid, cpu_list in before.items():
            subprocess.run(["taskset", "-a", "-p", "-c", cpu_list, str(pid)], capture_output=True)


@contextlib.contextmanager
def broker_pinned(pin: bool) -> Iterator[str]:
    """The broker on CPU 0 for the run; its affinity is put back afterwards."""
    pid = testbed_pids().get("beam") if pin else None
    if pid is None:
        yield "not pinned"
        return
    with pinned([pid], "0"):
        yield f"broker (beam {pid}) and load generator on CPU 0, consumer under test on CPU 1"


def operator_cpu_to_itself(bed: Bed) -> contextlib.AbstractContextManager[None]:
    """The rest of the test bed (apiserver, etcd, the Manager emulator, this runner) on CPU 0
    too, beside the broker: for the rows that read the operator's event loop, whose ticks are
    then late for the operator's own work, not for a neighbour's time slice on its CPU."""
    if not bed.pin:
        return contextlib.nullcontext()
    testbed = testbed_pids()
    neighbours = [testbed[name] for name in ("etcd", "kube-apiserver") if name in testbed]
    return pinned([*neighbours, bed.manager.pid, os.getpid()], "0")


@contextlib.contextmanager
def testbed_session(pin: bool, keep_logs: Path | None = None) -> Iterator[Bed]:
    """The running test bed (``scripts/testbed env``), the CRD applied, a Manager emulator whose
    broker "1" is the test bed's; every process started is stopped at the end, and on a failure
    the tail of each log is shown."""
    printed = subprocess.run(
        [str(REPO / "scripts" / "testbed"), "env"], capture_output=True, text=True, check=True
    ).stdout
    env = parse_env(printed)
    env.pop("PATH", None)  # kubectl is called by its full path
    subprocess.run(
        [str(Path(env["TESTBED_BIN_DIR"]) / "kubectl"), "apply", "-f", str(REPO / "crds")],
        check=True, env={**os.environ, **env}, capture_output=True,
    )  # fmt: skip
    with (
        tempfile.TemporaryDirectory(prefix="overseer-bench-") as temporary,
        EmulatorProcess({CLIENT_ID: CLIENT_SECRET}) as manager,
    ):
        broker = httpx.URL(env["AMQP_URL"])
        manager.add_broker("1", "testbed")
        manager.add_broker_connection("1", "guest", "guest", broker.host, broker.port, "/")
        logs = keep_logs or Path(temporary)
        logs.mkdir(parents=True, exist_ok=True)
        bed = Bed(env, pin, manager, logs)
        try:
            yield bed
        except BaseException:
            for log in sorted(Path(logs).glob("*.log")):
                sys.stderr.write(f"--- {log.name}\n{log.read_text(errors='replace')[-3000:]}\n")
            raise
        finally:
            bed.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--quick", action="store_true", help="tiny scale: checks the runner")
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")
    parser.add_argument("--exchanges", type=int)
    parser.add_argument("--workers-per-exchange", type=int)
    parser.add_argument("--window", type=float, help="seconds of the steady-fleet window")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument(
        "--registered",
        action="store_true",
        help="the steady fleet is in the Manager before the operator starts",
    )
    options = parser.parse_args(argv)
    scale = QUICK if options.quick else Scale()
    overrides = {
        "exchanges": options.exchanges,
        "workers_per_exchange": options.workers_per_exchange,
        "window": options.window,
        "registered": options.registered or None,
    }
    scale = Scale(**{**scale.__dict__, **{k: v for k, v in overrides.items() if v is not None}})
    pin = not options.no_pin and (os.cpu_count() or 1) >= 2
    rows: list[Row] = []
    load_before = os.getloadavg()
    with testbed_session(pin) as bed:
        try:
            with broker_pinned(pin) as pinning:
                capacity = ingest_and_capacity(bed, scale, rows)
                operator, steady = steady_fleet_and_restart(
                    bed, scale, rows, 0 if options.quick else capacity
                )
                mass_silence(bed, scale, rows, operator, steady.namespace)
        except Exception:
            print(markdown(rows, "rows measured before the failure:"), flush=True)
            raise
    load_after = os.getloadavg()
    header = (
        f"{'quick (smoke check: figures meaningless)' if options.quick else 'full'} run on "
        f"{os.cpu_count()} CPUs, {platform.python_implementation()} {platform.python_version()}; "
        f"{pinning}; load average {load_before[0]:.2f} before, {load_after[0]:.2f} after"
    )
    print(markdown(rows, header))
    if options.json:
        options.json.write_text(json.dumps([row.__dict__ for row in rows], indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
