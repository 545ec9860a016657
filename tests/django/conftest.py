"""Fixtures for the Django side: a live broker process, settings that point at it, run_coremq."""

from __future__ import annotations

import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest

from coremq_broker import BrokerProcess, start

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def live_broker() -> Iterator[BrokerProcess]:
    """A broker in its own process (``coremq_broker.start``) on a free port, for the session."""
    with start(host="127.0.0.1", port=0, log_level="WARNING", shutdown_timeout=2.0) as handle:
        yield handle


@pytest.fixture
def broker_settings(settings, live_broker: BrokerProcess) -> BrokerProcess:
    """``settings.COREMQ`` pointing at ``live_broker``; the publishing clients follow it."""
    settings.COREMQ = {**settings.COREMQ, "HOST": live_broker.host, "PORT": live_broker.port}
    return live_broker


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def free_port() -> Callable[[], int]:
    """``free_port()`` returns a TCP port on 127.0.0.1 that nothing listens on right now."""
    return _free_port


class RunCoreMQ:
    """``manage.py run_coremq`` as a real subprocess, with its output collected line by line."""

    def __init__(self, *args: str, database: Path) -> None:
        env = {**os.environ, "DJANGO_SETTINGS_MODULE": "coremq_project.settings",
               "COREMQ_DATABASE": str(database), "PYTHONUNBUFFERED": "1"}
        self.process = subprocess.Popen(
            [sys.executable, "manage.py", "run_coremq", *args],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            # Python leaves SIGINT ignored if it starts that way; the command must not rely on it.
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

    def wait_for(self, prefix: str, timeout: float = 30.0) -> str:
        """The first output line starting with ``prefix``; fail if the process ends or it is late."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail(f"no {prefix!r} within {timeout}s; output:\n{''.join(self.output)}")
            if line is None:
                pytest.fail(f"run_coremq exited {self.process.wait()} before {prefix!r}:\n{''.join(self.output)}")
            if line.startswith(prefix):
                return line

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()


@pytest.fixture
def run_coremq(tmp_path: Path) -> Iterator[Callable[..., RunCoreMQ]]:
    """Start ``run_coremq`` subprocesses with ``run_coremq(*args)``; they are killed after the test."""
    started: list[RunCoreMQ] = []

    def run(*args: str) -> RunCoreMQ:
        process = RunCoreMQ(*args, database=tmp_path / "db.sqlite3")
        started.append(process)
        return process

    yield run
    for process in started:
        process.stop()
