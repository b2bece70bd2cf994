"""The distribution and the container image recipe.

There is no container engine on the build machines, so the image is checked in two halves: the
wheel is built and installed into a fresh virtualenv exactly as the Dockerfile does it (wheel only,
``--no-deps``, entry point from the wheel's metadata), and the Dockerfile itself is checked
statically for what makes the image safe to run under the Deployment in ``deploy/manager``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
DOCKERFILE = (ROOT / "Dockerfile").read_text(encoding="utf-8")
DEPLOYMENT = yaml.safe_load((ROOT / "deploy/manager/deployment.yaml").read_text(encoding="utf-8"))
COMPILERS = re.compile(r"\b(gcc|g\+\+|cc|clang|make|build-essential|apt-get|apk)\b")


def run(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    # Without PYTHONPATH: a checkout on it would shadow the installed wheel.
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    return subprocess.run(
        [str(arg) for arg in args], cwd=cwd, capture_output=True, text=True, timeout=180, env=env
    )


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project's wheel, built the way the Dockerfile's builder stage builds it."""
    dist = tmp_path_factory.mktemp("dist")
    # No build isolation: hatchling comes from the test environment, so no network is needed.
    built = run(
        sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
        "--wheel-dir", dist, ROOT, cwd=dist,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr
    (wheel_path,) = dist.glob("overseer_operator-*.whl")
    return wheel_path


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv holding only the wheel; dependencies resolve from the test environment
    through a .pth file, so nothing is downloaded and the checkout is not importable."""
    venv = tmp_path_factory.mktemp("venv")
    assert run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=venv).returncode == 0
    python = venv / "bin" / "python"
    install = run(
        sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index",
        wheel, cwd=venv,
    )  # fmt: skip
    assert install.returncode == 0, install.stderr
    site = run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", cwd=venv)
    (Path(site.stdout.strip()) / "test-dependencies.pth").write_text(
        sysconfig.get_paths()["purelib"] + "\n", encoding="utf-8"
    )
    return venv


def test_wheel_holds_the_package_and_its_entry_point(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        scripts = archive.read(entry_points).decode()
    assert "overseer_operator/__init__.py" in names
    assert "overseer_operator/cli.py" in names
    assert not [name for name in names if name.startswith(("tests/", "devtools/"))]
    # The Manager emulator and the worker simulator are development tools, not the product.
    assert not [name for name in names if "emulator" in name or "simulator" in name]
    assert "overseer-operator = overseer_operator.cli:main" in scripts


def test_installed_entry_point_runs_from_the_wheel(installed: Path) -> None:
    where = run(installed / "bin/python", "-c", "import overseer_operator as o; print(o.__file__)",
                cwd=installed)  # fmt: skip
    assert Path(where.stdout.strip()).is_relative_to(installed), where.stderr

    usage = run(installed / "bin/overseer-operator", "--help", cwd=installed)
    assert usage.returncode == 0, usage.stderr
    commands = re.findall(r"^    (\S+)\s{2,}", usage.stdout, re.MULTILINE)
    assert commands == ["run"], usage.stdout  # the one command the image offers


def test_run_accepts_the_flags_the_deployment_passes(installed: Path) -> None:
    usage = run(installed / "bin/overseer-operator", "run", "--help", cwd=installed)
    assert usage.returncode == 0, usage.stderr
    (container,) = DEPLOYMENT["spec"]["template"]["spec"]["containers"]
    for flag in [arg for arg in container["args"] if arg.startswith("--")] + ["--namespace"]:
        assert flag in usage.stdout, f"{flag} missing from `overseer-operator run --help`"


def dockerfile_stages() -> list[list[str]]:
    """Instructions per stage, continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE)
    lines = [line.strip() for line in text.splitlines()]
    instructions = [line for line in lines if line and not line.startswith("#")]
    stages: list[list[str]] = []
    for instruction in instructions:
        if instruction.upper().startswith("FROM "):
            stages.append([])
        if stages:
            stages[-1].append(instruction)
    return stages


def instruction(stage: list[str], keyword: str) -> list[str]:
    return [line[len(keyword) :].strip() for line in stage if line.upper().startswith(keyword)]


def test_dockerfile_is_multi_stage_on_python_slim() -> None:
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim$", DOCKERFILE, re.MULTILINE)
    stages = dockerfile_stages()
    assert len(stages) == 2
    assert all(stage[0].startswith("FROM ${PYTHON_IMAGE}") for stage in stages)
    builder_runs = " ".join(instruction(stages[0], "RUN "))
    assert "pip wheel --no-deps" in builder_runs


def test_final_stage_installs_wheels_only_and_has_no_build_tools() -> None:
    final = dockerfile_stages()[-1]
    runs = " ".join(instruction(final, "RUN "))
    assert "pip install --no-index" in runs
    assert "PIP_NO_CACHE_DIR=1" in " ".join(instruction(final, "ENV "))
    assert not COMPILERS.search(runs), runs
    assert not instruction(final, "COPY "), "the final stage takes wheels by bind mount only"


def test_final_stage_runs_as_the_deployments_non_root_user() -> None:
    (user,) = instruction(dockerfile_stages()[-1], "USER ")
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) != 0, "a numeric non-root UID lets runAsNonRoot verify it"
    pod = DEPLOYMENT["spec"]["template"]["spec"]["securityContext"]
    assert pod["runAsNonRoot"] is True
    assert (pod["runAsUser"], pod["runAsGroup"]) == (int(uid), int(gid or uid))


def test_entrypoint_is_the_console_script() -> None:
    final = dockerfile_stages()[-1]
    (entrypoint,) = instruction(final, "ENTRYPOINT ")
    (command,) = instruction(final, "CMD ")
    assert json.loads(entrypoint) == ["overseer-operator"]
    assert "overseer-operator" in PYPROJECT["project"]["scripts"]
    assert json.loads(command) == ["run", "--all-namespaces"]


def test_build_context_lets_in_what_the_dockerfile_copies() -> None:
    allowed = {
        line[1:].rstrip("/")
        for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.startswith("!")
    }
    sources = [
        source.rstrip("/")
        for copy in instruction(dockerfile_stages()[0], "COPY ")
        for source in copy.split()[:-1]
    ]
    assert sources and set(sources) <= allowed
