"""The heap a server reports about itself, where it does: a cross-check of RSS growth.

RSS growth is what ``conns`` measures, but an allocator keeps memory that
earlier connections freed, so a peer that has held many connections before
(an earlier benchmark, other users of the machine) may hardly grow at all.
Redis (``INFO memory``, ``used_memory``) and Mosquitto (the
``$SYS/broker/heap/current`` topic, refreshed every ``sys_interval``, 10 s by
default) count the bytes they have allocated, which does not depend on that.
NATS and CoreMQ report no such figure (CoreMQ always runs in a fresh process,
so its RSS growth is clean).
"""

from __future__ import annotations

import asyncio
import re

from .protocols import _mqtt_connect, _mqtt_packet, _mqtt_string, _resp
from .targets import HOST, Target

__all__ = ["HeapProbe"]

_HEAP_TOPIC = b"$SYS/broker/heap/current"


class HeapProbe:
    """A connection of its own to a server that reports its heap, opened before the benchmark.

    It is opened first because a server at its connection limit (Redis's
    ``maxclients``) would refuse it later. :meth:`read` returns the heap in
    bytes, or None when the server does not say (NATS, CoreMQ) or the probe
    failed; it never raises.
    """

    def __init__(self, target: Target, *, timeout: float = 15.0) -> None:
        self.target = target
        self.timeout = timeout
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._mqtt_buffer = b""
        self._latest: int | None = None

    async def open(self) -> "HeapProbe":
        if self.target.name not in ("redis", "mqtt"):
            return self
        try:
            self._reader, self._writer = await asyncio.wait_for(
                asyncio.open_connection(HOST, self.target.port), self.timeout)
            if self.target.name == "mqtt":
                self._writer.write(_mqtt_connect("cmqb-heap")
                                   + _mqtt_packet(0x82, b"\x00\x01" + _mqtt_string(_HEAP_TOPIC) + b"\x00"))
        except (OSError, TimeoutError):
            self.close()
        return self

    @property
    def connected(self) -> bool:
        return self._reader is not None

    async def read(self, *, fresh: bool = False) -> int | None:
        """The heap now; with ``fresh``, Mosquitto's next report (up to ``sys_interval`` away)."""
        if self._reader is None:
            return None
        try:
            if self.target.name == "redis":
                return await asyncio.wait_for(self._redis(), self.timeout)
            return await asyncio.wait_for(self._mosquitto(fresh), self.timeout)
        except (OSError, TimeoutError, ValueError):
            return None

    def close(self) -> None:
        if self._writer is not None:
            if self.target.name == "mqtt":
                self._writer.write(b"\xe0\x00")  # DISCONNECT
            self._writer.close()
        self._reader = self._writer = None

    async def _redis(self) -> int | None:
        assert self._reader is not None and self._writer is not None
        self._writer.write(_resp(b"INFO", b"memory"))
        data = b""
        while not re.search(rb"used_memory:\d+\r\n", data):
            chunk = await self._reader.read(65536)
            if not chunk:
                return None
            data += chunk
        # The rest of the reply is read and dropped: a bulk string of known length.
        size = int(data[1:data.index(b"\r\n")])
        while len(data) < data.index(b"\r\n") + 2 + size + 2:
            data += await self._reader.read(65536)
        return int(re.search(rb"used_memory:(\d+)", data).group(1))  # type: ignore[union-attr]

    async def _mosquitto(self, fresh: bool) -> int | None:
        assert self._reader is not None
        # Whatever is already buffered is older than now.
        while True:
            try:
                chunk = await asyncio.wait_for(self._reader.read(4096), 0.05)
            except TimeoutError:
                break
            if not chunk:
                return None
            self._take(chunk)
        if fresh or self._latest is None:
            self._latest = None
            while self._latest is None:
                chunk = await self._reader.read(4096)
                if not chunk:
                    return None
                self._take(chunk)
        return self._latest

    def _take(self, chunk: bytes) -> None:
        packets, self._mqtt_buffer = _mqtt_packets(self._mqtt_buffer + chunk)
        for topic, body in packets:
            if topic == _HEAP_TOPIC:
                self._latest = int(body)


def _mqtt_packets(data: bytes) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """``([(topic, payload), ...] of the complete QoS 0 PUBLISH packets, the rest)``."""
    out = []
    while len(data) >= 2:
        size, shift, i = 0, 0, 1
        while i < len(data):
            size |= (data[i] & 0x7F) << shift
            shift += 7
            i += 1
            if not data[i - 1] & 0x80:
                break
        else:
            break
        if len(data) < i + size:
            break
        body, kind = data[i:i + size], data[0] >> 4
        if kind == 3:  # PUBLISH
            n = int.from_bytes(body[:2], "big")
            out.append((body[2:2 + n], body[2 + n:]))
        data = data[i + size:]
    return out, data
