"""What a steady fleet costs in API writes: Manager calls and Kubernetes status patches a minute.

Runs against the local test bed (``scripts/testbed up``): the operator as a process, 100 simulated
workers beating every 30 s (real heartbeats through RabbitMQ), the Manager emulator in this process.
For each ``manager.refreshInterval`` (``0s`` is the legacy Overseer: one POST per heartbeat, the
baseline), it waits until every worker is registered, then counts writes over a window.

    .venv/bin/python -m benchmarks.steady_fleet [--workers 100] [--window 60]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import aio_pika
import httpx

from devtools.manager_emulator import ManagerEmulator
from tests.fixtures.operator import free_port
from tests.fixtures.testbed import parse_env

REPO = Path(__file__).resolve().parents[1]


def testbed_env() -> dict[str, str]:
    printed = subprocess.run(
        [str(REPO / "scripts" / "testbed"), "env"], capture_output=True, text=True, check=True
    ).stdout
    return parse_env(printed)


async def provision(amqp_url: str, root: str, queue: str, key: str) -> None:
    async with await aio_pika.connect(amqp_url) as connection:
        channel = await connection.channel()
        exchange = await channel.declare_exchange(root, aio_pika.ExchangeType.TOPIC, durable=True)
        declared = await channel.declare_queue(queue, durable=True)
        await declared.bind(exchange, key)


def metric(port: int, name: str, **labels: str) -> float:
    total = 0.0
    for line in httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def run_one(env: dict[str, str], refresh: str, workers: int, window: float) -> dict[str, float]:
    kubectl = str(Path(env["TESTBED_BIN_DIR"]) / "kubectl")
    tag = secrets.token_hex(3)
    namespace, root, queue = f"bench-{tag}", f"bench-{tag}", f"bench-{tag}.system_modules"
    key = f"bench.{queue}"
    manager = ManagerEmulator(clients={"bench": "bench-secret"})
    manager.add_exchange("2", root, "bench")
    manager.add_exchange("1", f"{root}:x", "x", parent_id="2")
    broker = httpx.URL(env["AMQP_URL"])
    manager.add_broker("1", "testbed")
    manager.add_broker_connection("1", "guest", "guest", broker.host, broker.port, "/")
    key = f"bench.x.{queue}"
    asyncio.run(provision(env["AMQP_URL"], root, queue, key))
    resource = {
        "apiVersion": "openaperture.io/v1alpha1",
        "kind": "MessagingExchange",
        "metadata": {"name": "bench", "namespace": namespace},
        "spec": {
            "exchangeId": "1",
            "brokerId": "1",
            "queues": {"systemModules": queue},
            "manager": {"refreshInterval": refresh},
        },
    }
    run_env = {**os.environ, **env}
    subprocess.run(
        [kubectl, "create", "namespace", namespace], check=True, env=run_env, capture_output=True
    )
    subprocess.run(
        [kubectl, "apply", "-f", "-"],
        input=json.dumps(resource),
        text=True,
        check=True,
        env=run_env,
        capture_output=True,
    )
    with manager:
        metrics_port = free_port()
        operator = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "overseer_operator",
                "run",
                "-n",
                namespace,
                "--liveness-port",
                str(free_port()),
                "--metrics-port",
                str(metrics_port),
            ],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={
                **run_env,
                "MANAGER_URL": manager.url,
                "OAUTH_LOGIN_URL": manager.login_url,
                "OAUTH_CLIENT_ID": "bench",
                "OAUTH_CLIENT_SECRET": "bench-secret",
                "POD_NAME": "overseer-bench",
            },
        )
        simulator = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "devtools.simulator",
                "--amqp-url",
                env["AMQP_URL"],
                "--exchange",
                root,
                "--routing-key",
                key,
                "--workers",
                str(workers),
                "--interval",
                "30",
                "--format",
                "mixed",
            ],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 120
            while len(manager.modules("1")) < workers + 1:
                if time.monotonic() > deadline:
                    raise RuntimeError("the fleet did not register in 120 s")
                time.sleep(0.5)
            time.sleep(5)  # the last coalesced status patch
            manager_before = len(manager.module_writes("1"))
            status_before = metric(metrics_port, "overseer_kubernetes_writes_total", kind="status")
            beats_before = metric(metrics_port, "overseer_heartbeats_received_total")
            time.sleep(window)
            per_minute = 60.0 / window
            return {
                "heartbeats": (
                    metric(metrics_port, "overseer_heartbeats_received_total") - beats_before
                )
                * per_minute,
                "manager": (len(manager.module_writes("1")) - manager_before) * per_minute,
                "status": (
                    metric(metrics_port, "overseer_kubernetes_writes_total", kind="status")
                    - status_before
                )
                * per_minute,
            }
        finally:
            for process in (simulator, operator):
                process.send_signal(signal.SIGTERM)
                process.wait(60)
            subprocess.run(
                [kubectl, "delete", "namespace", namespace, "--wait=false"],
                env=run_env,
                capture_output=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=100)
    parser.add_argument("--window", type=float, default=60.0, help="seconds measured")
    parser.add_argument("--refresh", nargs="+", default=["0s", "5m", "1m"])
    options = parser.parse_args()
    env = testbed_env()
    subprocess.run(
        [str(Path(env["TESTBED_BIN_DIR"]) / "kubectl"), "apply", "-f", str(REPO / "crds")],
        check=True,
        env={**os.environ, **env},
        capture_output=True,
    )
    results = {
        refresh: run_one(env, refresh, options.workers, options.window)
        for refresh in options.refresh
    }
    baseline = results.get("0s")
    print(f"{options.workers} workers, heartbeat every 30 s, {options.window:.0f} s window:")
    print(
        f"{'refreshInterval':>16} {'heartbeats/min':>15} {'Manager writes/min':>19} "
        f"{'status patches/min':>19} {'Manager vs legacy':>18}"
    )
    for refresh, counts in results.items():
        ratio = (
            f"{counts['manager'] / baseline['manager']:.3f}"
            if baseline and baseline["manager"]
            else "-"
        )
        print(
            f"{refresh:>16} {counts['heartbeats']:>15.0f} {counts['manager']:>19.0f} "
            f"{counts['status']:>19.1f} {ratio:>18}"
        )


if __name__ == "__main__":
    main()
