"""The Argo CD health check (deploy/argocd/health.lua) run by a real Lua interpreter.

Argo CD evaluates health scripts with gopher-lua, a Lua 5.1 implementation, in a sandbox without
``os``, ``io`` or module loading, and hands the resource over as nested tables. These tests do the
same with the Lua C library embedded by lupa: every case of ``health_test.yaml`` (Argo CD's own test
format), then the rules that tie the script to the operator's condition reasons.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from overseer_operator.model import Reason
from overseer_operator.readiness import CONFIGURATION_REASONS

ROOT = Path(__file__).resolve().parents[2]
ARGOCD_DIR = ROOT / "deploy" / "argocd"
HEALTH_SCRIPT = (ARGOCD_DIR / "health.lua").read_text(encoding="utf-8")
HEALTH_CASES: list[dict[str, Any]] = yaml.safe_load(
    (ARGOCD_DIR / "health_test.yaml").read_text(encoding="utf-8")
)["tests"]

# Lua 5.1 is what gopher-lua implements; 5.4 guards against relying on one version's quirks.
LUA_VERSIONS = ("lua51", "lua54")
UNSAFE_GLOBALS = ("os", "io", "require", "package", "debug", "dofile", "loadfile", "load")

Health = Callable[[Mapping[str, Any]], dict[str, str]]


def to_lua(runtime: Any, value: Any) -> Any:
    """Nested dicts and lists as Lua tables (lists 1-based), as Argo CD converts the object."""
    if isinstance(value, Mapping):
        return runtime.table_from(
            {key: to_lua(runtime, item) for key, item in value.items() if item is not None}
        )
    if isinstance(value, list):
        return runtime.table_from([to_lua(runtime, item) for item in value])
    return value


@pytest.fixture(params=LUA_VERSIONS)
def health(request: pytest.FixtureRequest) -> Health:
    lua = importlib.import_module(f"lupa.{request.param}")

    def evaluate(obj: Mapping[str, Any]) -> dict[str, str]:
        runtime = lua.LuaRuntime(register_eval=False, register_builtins=False)
        sandbox = runtime.globals()
        for name in UNSAFE_GLOBALS:
            sandbox[name] = None
        sandbox.obj = to_lua(runtime, obj)
        result = runtime.execute(HEALTH_SCRIPT)
        return {"status": result["status"], "message": result["message"]}

    return evaluate


def load_testdata(name: str) -> dict[str, Any]:
    return yaml.safe_load((ARGOCD_DIR / name).read_text(encoding="utf-8"))


def with_ready(status: str, reason: str, message: str) -> dict[str, Any]:
    """The healthy sample with its Ready condition replaced and no Stalled condition."""
    obj = load_testdata("testdata/healthy.yaml")
    conditions = [c for c in obj["status"]["conditions"] if c["type"] not in ("Ready", "Stalled")]
    ready = {"type": "Ready", "status": status, "reason": reason, "message": message}
    obj["status"]["conditions"] = [{**conditions[0], **ready}, *conditions]
    return obj


@pytest.mark.parametrize(
    "case", HEALTH_CASES, ids=[Path(case["inputPath"]).stem for case in HEALTH_CASES]
)
def test_health_test_yaml_case(health: Health, case: dict[str, Any]) -> None:
    assert health(load_testdata(case["inputPath"])) == case["healthStatus"]


def test_every_testdata_file_is_a_case() -> None:
    listed = {case["inputPath"] for case in HEALTH_CASES}
    present = {f"testdata/{path.name}" for path in (ARGOCD_DIR / "testdata").glob("*.yaml")}
    assert listed == present


@pytest.mark.parametrize("reason", sorted(CONFIGURATION_REASONS))
def test_configuration_reason_is_degraded_even_without_stalled(health: Health, reason: str) -> None:
    obj = with_ready("False", reason, f"needs a human: {reason}")
    assert health(obj) == {"status": "Degraded", "message": f"needs a human: {reason}"}


@pytest.mark.parametrize("reason", sorted(set(Reason) - CONFIGURATION_REASONS))
def test_any_other_not_ready_reason_is_progressing(health: Health, reason: str) -> None:
    obj = with_ready("False", reason, f"retrying: {reason}")
    assert health(obj) == {"status": "Progressing", "message": f"retrying: {reason}"}


def test_degraded_without_message_names_the_reason(health: Health) -> None:
    obj = with_ready("False", Reason.QUEUE_NOT_FOUND, "")
    assert health(obj) == {"status": "Degraded", "message": "QueueNotFound"}


def test_stalled_wins_over_ready(health: Health) -> None:
    obj = load_testdata("testdata/healthy.yaml")
    stalled = next(c for c in obj["status"]["conditions"] if c["type"] == "Stalled")
    stalled.update(status="True", reason="InvalidSpec", message="spec.thresholds are invalid")
    assert health(obj) == {"status": "Degraded", "message": "spec.thresholds are invalid"}


@pytest.mark.parametrize("reason", [Reason.WORKERS_INACTIVE, Reason.WORKERS_OFFLINE])
def test_unhealthy_fleet_keeps_the_resource_healthy(health: Health, reason: str) -> None:
    obj = load_testdata("testdata/healthy.yaml")
    obj["status"]["workers"] = {"total": 9, "active": 0, "inactive": 2, "offline": 7}
    workers = next(c for c in obj["status"]["conditions"] if c["type"] == "WorkersHealthy")
    workers.update(status="False", reason=reason)
    assert health(obj) == {"status": "Healthy", "message": "0 active, 2 inactive, 7 offline"}


def test_status_without_observed_generation_is_progressing(health: Health) -> None:
    obj = load_testdata("testdata/healthy.yaml")
    del obj["status"]["observedGeneration"]
    assert health(obj)["status"] == "Progressing"


def test_operations_docs_show_this_script_for_argocd_cm() -> None:
    docs = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
    documents = [
        document
        for block in re.findall(r"```yaml\n(.*?)```", docs, re.DOTALL)
        for document in yaml.safe_load_all(block)
    ]
    (argocd_cm,) = [d for d in documents if d.get("metadata", {}).get("name") == "argocd-cm"]
    key = "resource.customizations.health.openaperture.io_MessagingExchange"
    assert argocd_cm["data"][key] == HEALTH_SCRIPT
