"""A real ``redis-server`` on a free port (never 6379) that tests can kill, restart and pause, and engines on it."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from typing import AsyncIterator, Iterator

import pytest
import redis

from coremq_broker.cluster import ClusterSettings, RedisEngine

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RedisServer:
    """A redis-server subprocess without persistence: a restart loses everything, as a crash would."""

    def __init__(self, *args: str, password: str | None = None) -> None:
        self.args = list(args) + (["--requirepass", password] if password else [])
        self.password = password
        self.directory = tempfile.mkdtemp(prefix="coremq-redis-")
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

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
        return redis.Redis(port=self.port, socket_timeout=5, password=self.password)

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


def settings_for(server: RedisServer, name: str, **options: object) -> ClusterSettings:
    """Quick timings for tests: heartbeats, probes and reconnects within a second or two."""
    quick = dict(heartbeat_interval=0.2, node_timeout=1.0, probe_interval=0.2, probe_timeout=0.5,
                 command_timeout=1.0, connect_timeout=1.0, reconnect_max=0.5)
    quick.update(options)
    return ClusterSettings(redis_url=server.url, key_prefix="test:", node_name=name).with_options(**quick)


class Node:
    """A RedisEngine with what it delivered, per queue, as (epoch, id, body, stamps, reset, missing)."""

    def __init__(self, server: RedisServer, name: str, **options: object) -> None:
        self.received: list[tuple[str, int, int, bytes, bytes]] = []
        self.deliveries: list = []
        self.arrived = asyncio.Event()
        self.engine = RedisEngine(settings_for(server, name, **options), address=name, on_delivery=self._on)

    def _on(self, delivery) -> None:
        self.deliveries.append(delivery)
        for index, body in enumerate(delivery.bodies):
            self.received.append((delivery.queue, delivery.epoch, delivery.first_id + index, body, delivery.stamps))
        self.arrived.set()

    def ids(self, queue: str) -> list[int]:
        return [message_id for name, _, message_id, _, _ in self.received if name == queue]

    async def wait_for(self, predicate, timeout: float = 20.0) -> None:
        """Until ``predicate()`` holds (deliveries are asynchronous); fail after ``timeout`` seconds."""
        deadline = asyncio.get_running_loop().time() + timeout
        while not predicate():
            if asyncio.get_running_loop().time() > deadline:
                pytest.fail(f"condition not met within {timeout}s; received {len(self.received)}")
            self.arrived.clear()
            try:
                await asyncio.wait_for(self.arrived.wait(), 0.05)
            except asyncio.TimeoutError:
                pass
