"""``scripts/testbed`` itself: one up/up/env/down cycle of a second, private test bed (its own state
dir and ports), so the session's test bed is untouched."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.testbed import REPO_ROOT, TESTBED_SCRIPT

pytestmark = pytest.mark.testbed

DAEMONS = ("etcd", "kube-apiserver", "epmd", "rabbitmq-server", "beam")
PORT_VARIABLES = (
    "TESTBED_APISERVER_PORT",
    "TESTBED_ETCD_CLIENT_PORT",
    "TESTBED_ETCD_PEER_PORT",
    "TESTBED_AMQP_PORT",
    "TESTBED_AMQPS_PORT",
    "TESTBED_RABBITMQ_DIST_PORT",
    "TESTBED_RABBITMQ_MANAGEMENT_PORT",
    "TESTBED_EPMD_PORT",
)


def free_ports(count: int) -> list[int]:
    probes = [socket.socket() for _ in range(count)]
    try:
        for probe in probes:
            probe.bind(("127.0.0.1", 0))
        return [probe.getsockname()[1] for probe in probes]
    finally:
        for probe in probes:
            probe.close()


@pytest.fixture
def private_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    """The environment of a second test bed: its own state dir and free ports."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("TESTBED_")}
    env["OVERSEER_TESTBED_DIR"] = str(tmp_path / "bed")
    env.update(zip(PORT_VARIABLES, map(str, free_ports(len(PORT_VARIABLES))), strict=True))
    yield env
    run_private(env, "down")  # also when the test failed half-way


def run_private(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(TESTBED_SCRIPT), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=REPO_ROOT,
    )


def recorded_pids(state: Path) -> dict[str, int]:
    return {name: int((state / "pids" / f"{name}.pid").read_text()) for name in DAEMONS}


def running(pid: int) -> bool:
    """Alive and not a zombie (nothing reaps orphans in some containers)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


def finished_pid() -> int:
    """The PID of a process that has exited (and been reaped)."""
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def live_processes() -> list[str]:
    table = subprocess.run(
        ["ps", "-eo", "stat=,args="], capture_output=True, text=True, check=True
    ).stdout
    return [line.split(None, 1)[-1] for line in table.splitlines() if not line.startswith("Z")]


def test_up_reuses_env_evaluates_holds_and_down_leaves_nothing(
    private_env: dict[str, str],
) -> None:
    env = private_env
    state = Path(env["OVERSEER_TESTBED_DIR"])

    first = run_private(env, "up")
    assert first.returncode == 0, first.stderr
    assert "started: etcd kube-apiserver rabbitmq" in first.stderr
    pids = recorded_pids(state)
    assert all(running(pid) for pid in pids.values()), pids

    started = time.monotonic()
    second = run_private(env, "up")
    assert second.returncode == 0, second.stderr
    assert time.monotonic() - started < 5
    assert "started: nothing" in second.stderr
    assert recorded_pids(state) == pids

    shell = subprocess.run(
        [
            "bash",
            "-euc",
            'eval "$("$0" env)"; printf "%s\\n" "$KUBECONFIG" "$AMQP_URL" '
            '"$RABBITMQ_MANAGEMENT_URL" "$(command -v kubectl)"; kubectl get --raw /readyz',
            str(TESTBED_SCRIPT),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert shell.returncode == 0, shell.stderr
    kubeconfig, amqp_url, management_url, kubectl, readyz = shell.stdout.splitlines()
    assert kubeconfig == str(state / "kubeconfig")
    assert amqp_url == f"amqp://guest:guest@127.0.0.1:{env['TESTBED_AMQP_PORT']}/"
    assert management_url == f"http://127.0.0.1:{env['TESTBED_RABBITMQ_MANAGEMENT_PORT']}"
    built = subprocess.run(
        [str(REPO_ROOT / "scripts" / "build-control-plane")],
        capture_output=True,
        text=True,
        check=True,
    )
    assert kubectl == f"{built.stdout.strip()}/kubectl"  # ours, not the machine's
    assert readyz == "ok"  # over TLS, verified against the test bed's CA
    assert "insecure-skip-tls-verify" not in Path(kubeconfig).read_text()

    # A session that started the test bed leaves it up while another live process holds it.
    ours = str(os.getpid())
    assert run_private(env, "hold", ours).returncode == 0
    kept = run_private(env, "release", str(finished_pid()), "--down")
    assert kept.returncode == 0, kept.stderr
    assert f"process {ours} still holds it" in kept.stderr
    assert recorded_pids(state) == pids
    assert all(running(pid) for pid in pids.values())

    down = run_private(env, "release", ours, "--down")
    assert down.returncode == 0, down.stderr
    assert not any(running(pid) for pid in pids.values())
    assert [args for args in live_processes() if str(state) in args] == []
    epmd_port = env["TESTBED_EPMD_PORT"]
    assert [args for args in live_processes() if f"epmd -port {epmd_port}" in args] == []
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", int(epmd_port)), timeout=2).close()
    assert list((state / "pids").iterdir()) == []
    assert run_private(env, "status").returncode != 0
