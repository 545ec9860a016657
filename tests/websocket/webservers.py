"""Real server processes of the project for the end-to-end tests: run_coremq and daphne, on free ports."""

from __future__ import annotations

import json
import os
import socket
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from servers import ServerProcess

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server(ServerProcess):
    """A server process of the project (``run_coremq`` or daphne), waited on until it is ready."""

    def __init__(self, args: list[str], *, broker_port: int, database: Path, ready: str | None = None,
                 http_port: int | None = None, env: dict[str, str] | None = None) -> None:
        env = {**os.environ, "DJANGO_SETTINGS_MODULE": "e2e_settings", "COREMQ_DATABASE": str(database),
               "COREMQ_E2E_PORT": str(broker_port), "PYTHONUNBUFFERED": "1",
               "PYTHONPATH": os.pathsep.join([str(HERE), str(ROOT), os.environ.get("PYTHONPATH", "")]),
               **(env or {})}
        super().__init__(args, env)
        self.args = args
        if ready is not None:
            self.wait_for(ready)
        if http_port is not None:
            self._wait_for_http(http_port)

    def _wait_for_http(self, port: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not _answers(port):
            if self.process.poll() is not None:
                pytest.fail(f"{self.args[1:3]} exited {self.process.returncode}:\n{''.join(self.output)}")
            if time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"no HTTP on port {port} within {timeout}s:\n{''.join(self.output)}")
            time.sleep(0.05)


def _answers(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/static/coremq/coremq.js", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


class Servers:
    """Project servers started by one test; all stopped after it."""

    def __init__(self, database: Path) -> None:
        self.database = database
        self.started: list[Server] = []

    def run_coremq(self, port: int, web_port: int | None = None, *, max_write_buffer: int | None = None,
                   durable_path: Path | None = None, coremq: dict | None = None) -> Server:
        """``manage.py run_coremq --port P`` with ``--web-port W``, or ``--no-web`` without one.

        With ``durable_path`` every queue is durable, its history kept in that file; ``coremq``
        adds settings.COREMQ keys.
        """
        args = [sys.executable, "manage.py", "run_coremq", "--port", str(port)]
        args += ["--no-web"] if web_port is None else ["--web-port", str(web_port)]
        ready = "CoreMQ web app on" if web_port is not None else "CoreMQ broker listening on"
        env = {} if max_write_buffer is None else {"COREMQ_E2E_MAX_WRITE_BUFFER": str(max_write_buffer)}
        if durable_path is not None:
            env["COREMQ_E2E_DURABLE_PATH"] = str(durable_path)
        if coremq:
            env["COREMQ_E2E_COREMQ"] = json.dumps(coremq)
        return self._start(Server(args, broker_port=port, database=self.database, ready=ready, env=env))

    def daphne(self, port: int, web_port: int, *, coremq: dict | None = None) -> Server:
        """``daphne coremq_project.asgi:application``: a web process of its own, linked to the broker on ``port``."""
        args = [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(web_port),
                "coremq_project.asgi:application"]
        env = {"COREMQ_E2E_COREMQ": json.dumps(coremq)} if coremq else {}
        return self._start(Server(args, broker_port=port, database=self.database, http_port=web_port, env=env))

    def _start(self, server: Server) -> Server:
        self.started.append(server)
        return server

    def stop_all(self) -> None:
        for server in self.started:
            server.stop()
