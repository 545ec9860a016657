"""A server subprocess (``manage.py run_coremq``, ``daphne``) whose output tests wait on.

One class for every test directory that starts the project's servers as real
processes.
"""

from __future__ import annotations

import queue
import sys
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

__all__ = ["ROOT", "ServerProcess"]

ROOT = Path(__file__).resolve().parents[1]


def migrate(env: dict[str, str]) -> None:
    """Create the project's tables in the database ``env`` names (``COREMQ_DATABASE``), quietly."""
    subprocess.run([sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=ROOT, env=env, check=True,
                   capture_output=True, timeout=120)


class ServerProcess:
    """A server subprocess whose output is read line by line."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        self.output: list[str] = []
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.output.append(line)
            self._lines.put(line)
        self._lines.put(None)

    def wait_for(self, text: str, timeout: float = 60.0) -> str:
        """The first output line containing ``text``; fail if the process ends first."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail(f"no {text!r} within {timeout}s:\n{''.join(self.output)}")
            if line is None:
                pytest.fail(f"{self.process.args} exited {self.process.wait()} before {text!r}:\n{''.join(self.output)}")
            if text in line:
                return line

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
