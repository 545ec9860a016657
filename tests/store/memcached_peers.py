"""A real memcached and the CoreMQ store's memcached server, each on a free port, and a wire helper.

Import as ``from memcached_peers import ...`` (tests/store is on sys.path under pytest's rootdir-relative
imports, like tests/brokers.py).
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import threading
import time
from typing import Any, Iterable

from coremq_broker.store import Store
from coremq_broker.transports.memcached import MemcachedServer

__all__ = ["MEMCACHED", "RealMemcached", "StoreServerThread", "exchange"]

MEMCACHED = "/usr/bin/memcached"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RealMemcached:
    """``memcached`` 1.6 on 127.0.0.1 and a free port, stopped with :meth:`stop`."""

    def __init__(self, memory_mb: int = 64) -> None:
        self.host = "127.0.0.1"
        for _ in range(5):
            self.port = _free_port()
            args = [MEMCACHED, "-l", self.host, "-p", str(self.port), "-U", "0", "-m", str(memory_mb), "-t", "1"]
            if os.geteuid() == 0:
                args += ["-u", "root"]
            self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            if self._wait():
                return
            self.process.kill()
            self.process.wait()
        raise RuntimeError("memcached did not start")

    def _wait(self) -> bool:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            try:
                socket.create_connection((self.host, self.port), timeout=1).close()
                return True
            except OSError:
                time.sleep(0.02)
        return False

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)
        if self.process.stderr is not None:
            self.process.stderr.close()


class StoreServerThread:
    """The store's :class:`MemcachedServer` on 127.0.0.1:0, served by an event loop in a thread."""

    def __init__(self, store: Store | None = None, **options: Any) -> None:
        self.store = store or Store()
        self.server = MemcachedServer(self.store, **options)
        self.host, self.port = self.server.bind("127.0.0.1", 0)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="coremq-test-store", daemon=True)
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.server.serve(), self.loop).result(10)

    def call(self, function: Any) -> Any:
        async def run() -> Any:
            return function()

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(10)

    def stop(self) -> None:
        self.call(self.server.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def exchange(port: int, chunks: Iterable[bytes], *, pause: float = 0.0, end: bytes = b"mn\r\n",
             timeout: float = 10.0) -> bytes:
    """Send ``chunks`` (``pause`` seconds apart, so they arrive as separate packets), then ``end``;
    return everything answered up to the answer to ``end`` (``MN``) or until the server closes."""
    chunks = list(chunks)
    marks = b"".join(chunks).count(b"mn\r\n") + 1  # MN answers to wait for (no case stores "MN\r\n")
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            for chunk in [*chunks, end]:
                sock.sendall(chunk)
                if pause:
                    time.sleep(pause)
        except OSError:  # closed by the server (quit, a line too long): read what it said
            pass
        answer = b""
        deadline = time.monotonic() + timeout
        while not (end and answer.endswith(b"MN\r\n") and answer.count(b"MN\r\n") >= marks) and time.monotonic() < deadline:
            try:
                data = sock.recv(1 << 20)
            except ConnectionResetError:
                answer += b"<closed>"
                break
            except TimeoutError:
                answer += b"<no answer>"
                break
            if not data:
                answer += b"<closed>"
                break
            answer += data
        return answer
