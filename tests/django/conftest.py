"""Fixtures for the Django side: a live broker process, settings that point at it, run_coremq."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path
from typing import Callable, Iterator

import pytest

from coremq_broker import BrokerProcess, start
from servers import ServerProcess

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


class RunCoreMQ(ServerProcess):
    """``manage.py run_coremq`` as a real subprocess, with its output collected line by line."""

    def __init__(self, *args: str, database: Path) -> None:
        env = {**os.environ, "DJANGO_SETTINGS_MODULE": "coremq_project.settings",
               "COREMQ_DATABASE": str(database), "PYTHONUNBUFFERED": "1"}
        super().__init__([sys.executable, "manage.py", "run_coremq", *args], env)


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
