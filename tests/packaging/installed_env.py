"""Helpers of the packaging tests: this repository's root, and commands run outside it."""

from __future__ import annotations

import os
import queue
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

__all__ = ["CHROMIUM", "CHROMIUM_ARGS", "PACKAGES", "ROOT", "TEST_PACKAGES", "Output", "clean_env", "run"]

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("coremq_broker", "coremq_client")
CHROMIUM = "/usr/bin/chromium"  # Debian's, which .ci/run installs
#: Packages of the tests and benchmarks, which a runtime install must not bring.
TEST_PACKAGES = {"pytest", "pytest-django", "hypothesis", "playwright", "matplotlib", "psutil"}
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]


def clean_env(**extra: str) -> dict[str, str]:
    """The environment of a process that must not see this repository (no PYTHONPATH, no settings module)."""
    env = {key: value for key, value in os.environ.items()
           if key not in ("PYTHONPATH", "DJANGO_SETTINGS_MODULE", "VIRTUAL_ENV") and not key.startswith("COREMQ_")}
    return {**env, "PYTHONUNBUFFERED": "1", **extra}


def run(args: list[Any], cwd: Path, timeout: float = 300, **env: str) -> subprocess.CompletedProcess[str]:
    """Run a command to its end; fail with its output if it does not exit 0."""
    result = subprocess.run([str(arg) for arg in args], cwd=cwd, env=clean_env(**env), capture_output=True,
                            text=True, timeout=timeout)
    assert result.returncode == 0, f"{args} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    return result


class Output:
    """A process's output lines, read by a thread so that the test can wait for one."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, args=(process,), daemon=True).start()

    def _read(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            self.seen.append(line)
            self.lines.put(line)
        self.lines.put(None)

    def wait_for(self, text: str, timeout: float = 120) -> str:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                line = None
            if line is None:
                pytest.fail(f"no {text!r} in:\n{''.join(self.seen)}")
            if text in line:
                return line
