"""``manage.py run_coremq`` with its web side, as a user runs it, for the documented examples."""

from __future__ import annotations

import os
import socket
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from servers import ServerProcess, migrate

__all__ = ["started_servers"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def started_servers(directory: Path) -> Iterator[tuple[int, int]]:
    """A broker and its web side on free ports, their database and durable file in ``directory``.

    Yields ``(tcp_port, web_port)``. The project's development settings: the
    default policy is open, every limit at its default.
    """
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "coremq_project.settings", "PYTHONUNBUFFERED": "1",
           "COREMQ_DATABASE": str(directory / "db.sqlite3"),
           "COREMQ_DURABLE_PATH": str(directory / "history.sqlite3")}
    migrate(env)
    tcp, web = _free_port(), _free_port()
    server = ServerProcess([sys.executable, "manage.py", "run_coremq", "--port", str(tcp), "--web-port", str(web),
                            "--memcached-port", "0"], env)
    try:
        server.wait_for("CoreMQ web app on")
        yield tcp, web
    finally:
        server.stop()
