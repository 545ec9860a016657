"""Helpers of the status tests: server subprocesses, the site they serve, logging in.

The end-to-end tests run ``manage.py run_coremq`` (and, for the separate-process
path, ``--no-web`` beside ``daphne``) as real subprocesses on free ports, with
``status_settings`` as their settings module: the project's settings plus a
status token and the broker port from the environment.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from servers import ServerProcess as Server  # noqa: F401  (the status tests' name for it)

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent

STAFF = ("staff", "staff-password-1")
PLAIN = ("plain", "plain-password-1")
TOKEN = "test-status-token-0123456789"

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def process_env(database: Path, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "status_settings",
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(HERE), str(HERE.parent), os.environ.get("PYTHONPATH", "")]),
        "COREMQ_DATABASE": str(database),
        "COREMQ_TEST_STATUS_TOKEN": TOKEN,
        "PYTHONUNBUFFERED": "1",
        **extra,
    }


def manage(database: Path, *args: str, **env: str) -> str:
    """Run a management command to completion; return its output."""
    done = subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=process_env(database, **env),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"manage.py {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@dataclass
class Site:
    """Where a running site's broker and web app listen."""

    broker_port: int
    web_port: int
    database: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.web_port}"

    def get(self, path: str, *, token: str | None = None) -> tuple[int, str, str]:
        """``(status, content type, body)`` of a GET, optionally with the bearer token."""
        request = urllib.request.Request(self.url + path)
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, response.headers["Content-Type"], response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.headers["Content-Type"], error.read().decode()

    def status(self) -> dict:
        status, _, body = self.get("/coremq/status.json", token=TOKEN)
        assert status == 200, body
        return json.loads(body)


def port_of(line: str) -> int:
    return int(line.rstrip().rstrip("/").split()[-2 if "(TCP)" in line else -1].rsplit(":", 1)[1])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, server: Server, timeout: float = 60.0) -> None:
    """Return once something accepts on ``port``; fail if ``server`` exits or it takes too long."""
    deadline = time.monotonic() + timeout
    while True:
        if server.process.poll() is not None:
            pytest.fail(f"{server.process.args} exited {server.process.returncode}:\n{''.join(server.output)}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                pytest.fail(f"nothing listens on {port} after {timeout}s:\n{''.join(server.output)}")
            time.sleep(0.05)


#: ms: the longest any expect() waits for the status page to catch up.
WAIT = 20_000


def cell(page, table: str, row_id: str, key: str):
    """A cell of the status page's tables: row ``row_id`` of ``table``, column ``key``."""
    return page.locator(f'#cmq-{table} tr[data-id="{row_id}"] td[data-key="{key}"]')


def log_in(page, site: Site, user: tuple[str, str], next_path: str = "/admin/coremq/status/") -> None:
    """Log in through the admin's login form, landing on ``next_path``."""
    page.goto(f"{site.url}/admin/login/?next={next_path}")
    page.fill("#id_username", user[0])
    page.fill("#id_password", user[1])
    page.click("input[type=submit]")
