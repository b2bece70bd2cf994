"""The package's shape: pure modules stay pure, imports never go round in a circle, every
import resolves, and the CRD's defaults are the ones ``defaults.py`` applies."""

from __future__ import annotations

import ast
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from overseer_operator import defaults
from overseer_operator.times import DURATION_PATTERN, parse_duration

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "overseer_operator"
CRD = ROOT / "crds" / "openaperture.io_messagingexchanges.yaml"

# What the model, the health rules and the readiness rules may be read and run without.
PURE_MODULES = ("model", "fleet", "backlog", "readiness", "conditions", "times", "defaults")
IO_LIBRARIES = ("aio_pika", "aiormq", "aiohttp", "httpx", "erlang", "kopf", "kubernetes")


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts)


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, anywhere in it (function-local imports included)."""
    return imports_in(path.read_text(encoding="utf-8"), module_name(path).rpartition(".")[0])


def imports_in(source: str, package: str) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            names.add(base)
            # ``from overseer_operator import defaults`` imports a module, not a name.
            names.update(
                f"{base}.{alias.name}"
                for alias in node.names
                if base == "overseer_operator" and (PACKAGE / f"{alias.name}.py").exists()
            )
    return names


def package_graph() -> dict[str, set[str]]:
    modules = {module_name(path): path for path in sorted(PACKAGE.glob("*.py"))}
    return {
        name: {
            imported
            for imported in imported_modules(path)
            if imported in modules and imported != name and imported != "overseer_operator"
        }
        for name, path in modules.items()
    }


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as the list of modules around it, or None (iterative DFS)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for root in sorted(graph):
        if root in state:
            continue
        path = [root]
        stack = [iter(sorted(graph[root]))]
        state[root] = 1
        while stack:
            following = next(stack[-1], None)
            if following is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(following) == 1:
                return [*path[path.index(following) :], following]
            elif following not in state:
                state[following] = 1
                path.append(following)
                stack.append(iter(sorted(graph[following])))
    return None


def test_the_cycle_finder_finds_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_import_parser_sees_every_import_form():
    source = (
        "import overseer_operator.fleet\n"
        "from overseer_operator import defaults, __version__\n"
        "from . import metrics\n"
        "from .model import Heartbeat\n"
        "def later():\n"
        "    from overseer_operator.kube import KubeApi\n"
    )
    assert imports_in(source, "overseer_operator") == {
        "overseer_operator",
        "overseer_operator.fleet",
        "overseer_operator.defaults",
        "overseer_operator.metrics",
        "overseer_operator.model",
        "overseer_operator.kube",
    }


def test_no_import_cycle_among_the_package_modules():
    assert find_cycle(package_graph()) is None


def io_libraries_loaded_by(*modules: str) -> list[str]:
    """The I/O libraries a fresh interpreter has loaded after importing ``modules``."""
    probe = (
        "import json, sys\n"
        + "".join(f"import {module}\n" for module in modules)
        + f"roots = {IO_LIBRARIES!r}\n"
        + "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in roots)))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return sorted({name.split(".")[0] for name in json.loads(result.stdout)})


def test_pure_modules_load_no_io_library():
    # One interpreter for all of them: if together they load none, none of them does.
    assert io_libraries_loaded_by(*(f"overseer_operator.{m}" for m in PURE_MODULES)) == []


def test_the_purity_probe_sees_an_io_library():
    """The probe above is able to fail: a module that does I/O shows its libraries."""
    assert "erlang" in io_libraries_loaded_by("overseer_operator.heartbeat")


def unresolved_imports() -> list[str]:
    unresolved = []
    for path in sorted(PACKAGE.glob("*.py")):
        for name in sorted(imported_modules(path)):
            if name.startswith("overseer_operator") and importlib.util.find_spec(name) is None:
                unresolved.append(f"{path.name}: {name}")
    return unresolved


def test_every_import_in_the_package_resolves():
    """Including imports inside functions, which only run on a rarely used path."""
    assert unresolved_imports() == []


# The CRD's defaults


def crd_spec_schema() -> dict:
    crd = yaml.safe_load(CRD.read_text(encoding="utf-8"))
    (version,) = [v for v in crd["spec"]["versions"] if v.get("storage")]
    return version["schema"]["openAPIV3Schema"]["properties"]["spec"]


def test_crd_defaults_agree_with_defaults_py():
    spec = crd_spec_schema()["properties"]
    thresholds = spec["thresholds"]["properties"]
    assert {
        "moduleType": spec["moduleType"]["default"],
        "queue": spec["queues"]["properties"]["systemModules"]["default"],
        "prefetch": spec["amqp"]["properties"]["prefetch"]["default"],
        "refreshInterval": spec["manager"]["properties"]["refreshInterval"]["default"],
        "inactiveAfter": thresholds["inactiveAfter"]["default"],
        "offlineAfter": thresholds["offlineAfter"]["default"],
        "forgetAfter": thresholds["forgetAfter"]["default"],
    } == {
        "moduleType": defaults.MODULE_TYPE,
        "queue": defaults.QUEUE,
        "prefetch": defaults.PREFETCH,
        "refreshInterval": defaults.REFRESH_INTERVAL_TEXT,
        "inactiveAfter": defaults.INACTIVE_AFTER_TEXT,
        "offlineAfter": defaults.OFFLINE_AFTER_TEXT,
        "forgetAfter": defaults.FORGET_AFTER_TEXT,
    }


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        (defaults.INACTIVE_AFTER_TEXT, defaults.INACTIVE_AFTER),
        (defaults.OFFLINE_AFTER_TEXT, defaults.OFFLINE_AFTER),
        (defaults.FORGET_AFTER_TEXT, defaults.FORGET_AFTER),
        (defaults.REFRESH_INTERVAL_TEXT, defaults.REFRESH_INTERVAL),
    ],
)
def test_default_texts_say_the_same_as_the_seconds(text, seconds):
    assert parse_duration(text) == seconds


def test_crd_duration_fields_use_the_parsers_pattern():
    spec = crd_spec_schema()["properties"]
    fields = [
        spec["manager"]["properties"]["refreshInterval"],
        *spec["thresholds"]["properties"].values(),
    ]
    assert [field["pattern"] for field in fields] == [DURATION_PATTERN] * len(fields)
