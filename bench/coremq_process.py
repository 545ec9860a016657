"""The CoreMQ broker under benchmark, in a process of its own.

By default it is started exactly as an operator starts it,
``python manage.py run_coremq --no-web --port 0`` from the repository root:
the same code, the same ``settings.COREMQ`` (defaults), the same event loop
(uvloop) and logging. ``mode="serve"`` runs :mod:`bench.serve` instead (no
Django; ``BrokerConfig()`` defaults), which can also run under cProfile. The
port is read from the line the broker prints once it listens.
"""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

__all__ = ["REPO", "CoreMQProcess", "resolve_mode"]

REPO = Path(__file__).resolve().parent.parent
_COMMAND = REPO / "coremq_broker" / "management" / "commands" / "run_coremq.py"
_LISTENING = re.compile(rb"CoreMQ broker listening on (\S+):(\d+) ")


def resolve_mode(mode: str) -> str:
    """``auto`` means ``command`` when ``run_coremq`` exists, else ``serve``."""
    if mode == "auto":
        return "command" if _COMMAND.exists() else "serve"
    if mode not in ("command", "serve"):
        raise ValueError(f"unknown broker mode {mode!r}: use auto, command or serve")
    return mode


class CoreMQProcess:
    """Start the broker, learn its port, stop it with SIGTERM. A context manager."""

    def __init__(self, mode: str = "auto", *, log_path: Path | None = None, profile: Path | None = None) -> None:
        self.mode = resolve_mode(mode)
        self.log_path = log_path
        self.profile = profile
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def argv(self) -> list[str]:
        if self.mode == "command":
            return [sys.executable, str(REPO / "manage.py"), "run_coremq", "--no-web", "--port", "0"]
        argv = [sys.executable, "-m", "bench.serve", "--port", "0"]
        if self.profile is not None:
            argv += ["--cprofile", str(self.profile)]
        return argv

    def start(self, timeout: float = 60.0) -> "CoreMQProcess":
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env.setdefault("DJANGO_SETTINGS_MODULE", "coremq_project.settings")
        self.process = subprocess.Popen(self.argv(), cwd=REPO, stdout=subprocess.PIPE, stderr=log, env=env)
        if log is not subprocess.DEVNULL:
            log.close()
        assert self.process.stdout is not None
        deadline = time.monotonic() + timeout
        seen = b""
        fd = self.process.stdout.fileno()
        while time.monotonic() < deadline:
            # Raw reads: a buffered readline() could take several lines at once (the store's
            # line comes first) and leave select() waiting for bytes already read.
            if not select.select([fd], [], [], max(0.0, deadline - time.monotonic()))[0]:
                break
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            seen += chunk
            match = _LISTENING.search(seen)
            if match:
                self.port = int(match.group(2))
                return self
        self.stop()
        raise RuntimeError(f"CoreMQ broker ({' '.join(self.argv())}) did not start: {seen.decode(errors='replace')!r}"
                           + (f"; see {self.log_path}" if self.log_path else ""))

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM (the broker says BYE and flushes), then SIGKILL after ``timeout``."""
        process = self.process
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if process.stdout is not None:
            process.stdout.close()
        return process.returncode

    def __enter__(self) -> "CoreMQProcess":
        return self.start() if self.process is None else self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.stop()
