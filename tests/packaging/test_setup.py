"""The repository's own setup: `make run` installs the runtime only, pins agree with pyproject.toml, screenshots."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from installed_env import PACKAGES, ROOT, TEST_PACKAGES, Output, clean_env, run

pytestmark = pytest.mark.timeout(600)


def pins(path: Path) -> dict[str, Requirement]:
    """The requirements of a requirements file, by normalised name (``-r`` lines and comments skipped)."""
    found = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            requirement = Requirement(line)
            found[requirement.name.lower().replace("_", "-")] = requirement
    return found


def declared() -> tuple[dict[str, Requirement], dict[str, dict[str, Requirement]]]:
    """pyproject.toml's dependencies and its extras (without the self-reference ``coremq[...]``), by name."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]

    def by_name(lines: list[str]) -> dict[str, Requirement]:
        return {r.name.lower().replace("_", "-"): r for r in map(Requirement, lines) if r.name != "coremq"}

    extras = {name: by_name(lines) for name, lines in project["optional-dependencies"].items()}
    return by_name(project["dependencies"]), extras


def test_requirements_files_and_pyproject_agree() -> None:
    """Each pin in requirements*.txt is in pyproject.toml with the same versions, and back; no test tool at run time."""
    runtime, dev = pins(ROOT / "requirements.txt"), pins(ROOT / "requirements-dev.txt")
    dependencies, extras = declared()
    everywhere = {**dependencies, **{name: r for extra in extras.values() for name, r in extra.items()}}
    for name, requirement in {**runtime, **dev}.items():
        assert name in everywhere, f"{name} is pinned in requirements but not in pyproject.toml"
        assert everywhere[name].specifier == requirement.specifier, name
        assert everywhere[name].marker == requirement.marker, name
    assert set(everywhere) <= set(runtime) | set(dev), "pyproject.toml names a package the requirements do not pin"
    assert not (set(runtime) | set(dependencies)) & TEST_PACKAGES
    assert set(dependencies) <= set(runtime) and set(extras["fast"]) <= set(runtime)
    assert {"orjson", "uvloop"} == set(extras["fast"]) and "redis" in extras["redis"]
    assert TEST_PACKAGES <= set(extras["dev"]) and TEST_PACKAGES <= set(dev)


def test_screenshots_go_to_a_temporary_directory_unless_asked(tmp_path: Path) -> None:
    """Tests save pictures outside the repository; only COREMQ_SAVE_SCREENSHOTS=1 (make screenshots) means docs/img/."""
    code = "import screenshots; print(screenshots.screenshot_path('x.png'))"
    plain = run([sys.executable, "-c", code], cwd=ROOT / "tests")
    assert not Path(plain.stdout.strip()).is_relative_to(ROOT), plain.stdout
    asked = run([sys.executable, "-c", code], cwd=ROOT / "tests", COREMQ_SAVE_SCREENSHOTS="1")
    assert Path(asked.stdout.strip()) == ROOT / "docs" / "img" / "x.png"
    makefile = (ROOT / "Makefile").read_text()
    assert "COREMQ_SAVE_SCREENSHOTS=1" in makefile.split("\nscreenshots:", 1)[1]
    assert "COREMQ_SAVE_SCREENSHOTS" not in makefile.split("\ntest:", 1)[1].split("\nscreenshots:", 1)[0]


def test_make_run_installs_the_runtime_only_and_says_what_it_does(tmp_path: Path) -> None:
    """`make run` from a copy of the project: a new venv without test packages, a line per step, then the servers."""
    copy = tmp_path / "project"
    copy.mkdir()
    for name in ("Makefile", "requirements.txt", "requirements-dev.txt", "manage.py"):
        shutil.copy(ROOT / name, copy / name)
    for package in (*PACKAGES, "coremq_project"):
        shutil.copytree(ROOT / package, copy / package, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    venv = tmp_path / "venv"
    env = clean_env(COREMQ_DATABASE=str(tmp_path / "db.sqlite3"),
                    COREMQ_DURABLE_PATH=str(tmp_path / "history.sqlite3"))
    for inherited in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL"):  # under `make test`, the outer make's variables
        env.pop(inherited, None)
    make = subprocess.Popen(
        ["make", "run", f"VENV={venv}", "ARGS=--port 0 --web-port 0"], cwd=copy, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        output = Output(make)
        output.wait_for("CoreMQ web app on", timeout=400)
    finally:
        if make.poll() is None:
            os.killpg(make.pid, signal.SIGTERM)  # make and run_coremq: their own session, started here
        try:
            make.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(make.pid, signal.SIGKILL)
            make.wait()
    said = "".join(output.seen)
    steps = ["== Creating the virtual environment", "== Installing the runtime packages of requirements.txt",
             "== Migrating the database", "== Starting the broker and the web app"]
    assert [said.find(step) for step in steps] == sorted(said.find(step) for step in steps) and -1 not in [
        said.find(step) for step in steps], said
    assert "requirements-dev.txt" not in said.split("== Starting", 1)[0].split("== Installing the runtime", 1)[1]
    listed = run([venv / "bin" / "python", "-m", "pip", "list", "--format", "freeze"], cwd=tmp_path).stdout
    installed = {line.split("==")[0].lower() for line in listed.split()}
    assert {"django", "channels", "daphne", "orjson"} <= installed
    assert not installed & (TEST_PACKAGES | {"pytest-asyncio", "pytest-timeout"}), installed
