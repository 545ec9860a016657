"""A real ``redis-server`` on a free port (never 6379), without persistence, that tests can kill,
restart, pause (SIGSTOP) and protect with a password. For every test directory that needs Redis.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest
import redis

__all__ = ["RedisServer", "free_port", "redis_server"]

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
sys.path.append(str(Path(__file__).resolve().parent / "client"))  # selfsigned


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RedisServer:
    """A redis-server subprocess without persistence: a restart loses everything, as a crash would."""

    def __init__(self, *args: str, password: str | None = None, tls: bool = False) -> None:
        self.args = list(args) + (["--requirepass", password] if password else [])
        self.password = password
        self.directory = tempfile.mkdtemp(prefix="coremq-redis-")
        self.port = free_port()
        #: With ``tls``: the server speaks TLS only (rediss://), with a throwaway certificate for 127.0.0.1.
        self.ca_file: str | None = None
        if tls:
            from selfsigned import tls_contexts  # tests/client: the suite's one certificate maker

            tls_contexts(Path(self.directory))
            self.ca_file = os.path.join(self.directory, "cert.pem")
            self.args += ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", self.ca_file,
                          "--tls-key-file", os.path.join(self.directory, "key.pem"), "--tls-auth-clients", "no"]
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"{'rediss' if self.ca_file else 'redis'}://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", self.directory, "--protected-mode", "no", *self.args],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                self.client().ping()
                return
            except redis.RedisError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not start on port {self.port}")
                time.sleep(0.05)

    def client(self) -> redis.Redis:
        tls = {"ssl": True, "ssl_ca_certs": self.ca_file} if self.ca_file else {}
        return redis.Redis("127.0.0.1", self.port, socket_timeout=5, password=self.password, **tls)

    def kill(self) -> None:
        """SIGKILL: connections drop, nothing is saved."""
        assert self.process is not None
        self.process.kill()
        self.process.wait()

    def restart(self) -> None:
        self.kill()
        self.start()

    def pause(self) -> None:
        """SIGSTOP: every connection stays open and nothing is answered or delivered."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGCONT)

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.resume()
            self.kill()
        shutil.rmtree(self.directory, ignore_errors=True)


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A fresh redis-server for one test, killed after it."""
    server = RedisServer()
    try:
        yield server
    finally:
        server.close()
