"""End to end through the container image: the Dockerfile built here by buildah
(scripts/build-image), run by runc as the Deployment runs it (uid 65532 with no passwd entry,
read-only root, /tmp a tmpfs, no capabilities), against the real test bed.

What differs from a Docker build and a kubelet is listed in docs/operations.md ("The image without
Docker"): a Debian stand-in for python:3.11-slim, host networking, no seccomp profile or cgroup
limits.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from tests.e2e import test_worker_health as worker_health
from tests.fixtures.image import OperatorImage, container_state
from tests.fixtures.operator import apply_exchange, condition, eventually, get_exchange

pytestmark = [
    pytest.mark.testbed,
    pytest.mark.operator_image,
    pytest.mark.usefixtures("crd_installed"),
]

ROOT = Path(__file__).resolve().parents[2]
IMAGE_UID = 65532


def test_the_image_is_what_the_dockerfile_says(operator_image: OperatorImage) -> None:
    config = json.loads((operator_image.bundle / "config.json").read_text(encoding="utf-8"))
    process = config["process"]
    assert (process["user"]["uid"], process["user"]["gid"]) == (IMAGE_UID, IMAGE_UID)
    assert process["args"] == ["overseer-operator", "run", "--all-namespaces"]
    assert "HOME=/tmp" in process["env"]

    rootfs = operator_image.rootfs
    passwd = (rootfs / "etc" / "passwd").read_text(encoding="utf-8")
    assert not re.search(rf"^[^:]*:[^:]*:{IMAGE_UID}:", passwd, re.MULTILINE), "65532 has an entry"
    site = rootfs / operator_image.facts["SITE_PACKAGES"].lstrip("/")
    installed = {path.name.lower() for path in site.iterdir()}
    assert "kopf" in installed and "overseer_operator" in installed
    assert "kubernetes" not in installed, "the image still carries the kubernetes package"
    assert not (rootfs / "usr" / "local" / "bin" / "pip").exists(), "pip left in the final stage"
    assert not (rootfs / "wheels").exists()
    wanted = re.search(r"python:(\d+\.\d+)", (ROOT / "Dockerfile").read_text(encoding="utf-8"))
    assert wanted and operator_image.facts["PYTHON"] == f"python{wanted.group(1)}"


def test_the_image_runs_as_65532_on_a_read_only_root_and_gets_ready(
    kubectl, namespace, manager, exchange, workers, start_operator, operator_image
):
    apply_exchange(kubectl, namespace, "imaged", exchange, manager={"refreshInterval": "1h"})
    workers.alive["builder-1"] = "builder"
    started = time.monotonic()
    # No POD_NAME and no USER/LOGNAME: the identity the operator finds itself, as uid 65532
    # without a passwd entry (kopf's default, getpass.getuser(), raises there).
    operator = start_operator(namespace, identity=None)
    live = time.monotonic() - started
    resource = eventually(
        lambda: (
            (r := get_exchange(kubectl, namespace, "imaged"))
            and (condition(r, "Ready") or {}).get("status") == "True"
            and r["status"]["workers"]["active"] == 2
            and r
        ),
        timeout=60,
        what="Ready=True with the worker and the operator active",
    )
    ready = time.monotonic() - started
    print(f"\nimage start-up: liveness after {live:.1f} s, exchange Ready after {ready:.1f} s")

    assert operator.containers
    for container in operator.containers:
        check_confinement(container_state(container)["pid"])

    # The operator registered itself in the Manager under the container's host name.
    # (With several replicas, ``pytest --replicas``: the owner's.)
    own = resource["status"].get("owner", "overseer-operator")
    rows = {row["hostname"]: row["type"] for row in manager.modules(exchange.exchange_id)}
    assert rows == {"builder-1": "builder", own: "overseer"}
    assert resource["status"]["workers"]["total"] == 2
    assert "getuser" not in operator.logs()


def check_confinement(pid: int) -> None:
    """The process runs as 65532, without capabilities, on a read-only root with a tmpfs /tmp."""
    status = Path(f"/proc/{pid}/status").read_text(encoding="utf-8")
    uids = re.search(r"^Uid:\s+(.*)$", status, re.MULTILINE).group(1).split()
    assert set(uids) == {str(IMAGE_UID)}, uids
    capabilities = re.search(r"^CapEff:\s+(\w+)$", status, re.MULTILINE).group(1)
    assert int(capabilities, 16) == 0
    mounts = Path(f"/proc/{pid}/mountinfo").read_text(encoding="utf-8").splitlines()
    (root,) = [line.split() for line in mounts if line.split()[4] == "/"]
    assert "ro" in root[5].split(","), root
    (tmp,) = [line.split(" - ")[1].split() for line in mounts if line.split()[4] == "/tmp"]
    assert tmp[0] == "tmpfs"


def test_worker_health_through_the_image(
    kubectl, namespace, manager, exchange, workers, start_operator
):
    """The worker-health e2e test, unchanged, with the operator running from the image."""
    worker_health.test_workers_go_active_inactive_offline_and_come_back(
        kubectl, namespace, manager, exchange, workers, start_operator
    )
