"""``manage.py run_coremq`` serves the store over the memcached protocol beside the broker."""

from __future__ import annotations

import os
import re
import sys

from pymemcache.client.base import Client

from servers import ServerProcess


def _run_coremq(tmp_path, *args: str) -> ServerProcess:
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "coremq_project.settings",
           "COREMQ_DATABASE": str(tmp_path / "db.sqlite3"), "PYTHONUNBUFFERED": "1"}
    return ServerProcess([sys.executable, "manage.py", "run_coremq", *args], env)


def test_run_coremq_serves_memcached_on_an_ephemeral_port(tmp_path):
    """--memcached-port 0 binds a free port on the broker's host, prints it, and answers memcached clients."""
    server = _run_coremq(tmp_path, "--port", "0", "--no-web", "--memcached-port", "0")
    try:
        line = server.wait_for("CoreMQ store (memcached protocol) listening on")
        server.wait_for("CoreMQ broker listening on")
        host, port = re.search(r"on (\S+):(\d+)", line).groups()
        assert host == "127.0.0.1"
        client = Client((host, int(port)), default_noreply=False)
        assert client.set("k", b"v") is True and client.get("k") == b"v"
        assert client.version() == b"1.6.18"
        client.close()
    finally:
        server.stop()
    assert server.process.returncode == 0


def test_run_coremq_no_memcached(tmp_path):
    """--no-memcached serves the broker alone."""
    server = _run_coremq(tmp_path, "--port", "0", "--no-web", "--no-memcached")
    try:
        server.wait_for("CoreMQ broker listening on")
    finally:
        server.stop()
    assert not any("memcached protocol" in line for line in server.output)
