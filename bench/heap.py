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

__all__ = ["server_heap"]

_HEAP_TOPIC = b"$SYS/broker/heap/current"


async def server_heap(target: Target, *, fresh: bool = False, timeout: float = 15.0) -> int | None:
    """Bytes the server says it has allocated now; None if it cannot say.

    With ``fresh``, Mosquitto's figure is the first one it publishes after
    this call (up to ``sys_interval`` later), not the retained older one.
    """
    probe = {"redis": _redis_heap, "mqtt": _mosquitto_heap}.get(target.name)
    if probe is None:
        return None
    try:
        return await asyncio.wait_for(probe(target.port, fresh), timeout)
    except (OSError, TimeoutError, ValueError):
        return None


async def _redis_heap(port: int, fresh: bool) -> int | None:
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        writer.write(_resp(b"INFO", b"memory"))
        data = b""
        while b"used_memory:" not in data or not re.search(rb"used_memory:\d+\r\n", data):
            chunk = await reader.read(65536)
            if not chunk:
                return None
            data += chunk
        return int(re.search(rb"used_memory:(\d+)", data).group(1))  # type: ignore[union-attr]
    finally:
        writer.close()


async def _mosquitto_heap(port: int, fresh: bool) -> int | None:
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        writer.write(_mqtt_connect("cmqb-heap") + _mqtt_packet(0x82, b"\x00\x01" + _mqtt_string(_HEAP_TOPIC) + b"\x00"))
        data = b""
        values: list[int] = []
        while len(values) < (2 if fresh else 1):
            chunk = await reader.read(4096)
            if not chunk:
                return None
            data += chunk
            packets, data = _mqtt_packets(data)
            values += [int(body) for topic, body in packets if topic == _HEAP_TOPIC]
        return values[-1]
    finally:
        writer.write(b"\xe0\x00")  # DISCONNECT
        writer.close()


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
