"""The load generator's WebSocket client: as little of RFC 6455 as a browser-protocol benchmark needs.

:class:`FrameReader` is sans-I/O (bytes in, ``(opcode, payload)`` out);
:func:`client_frame` makes a masked frame; :class:`WebSocket` is one asyncio
connection that does the opening handshake (with an ``Origin``, as browsers
do) and hands every text frame's payload to a callback, unparsed, so that the
same generator drives CoreMQ's endpoint and its peers alike. Once set up, a
connection can hand its raw bytes to ``raw`` instead, unparsed
(:mod:`bench.wsverify` checks them against the other subscribers').
"""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import struct
from typing import Callable

__all__ = ["FrameReader", "WebSocket", "client_frame", "connect"]

TEXT, BINARY, CLOSE, PING, PONG, CONTINUATION = 0x1, 0x2, 0x8, 0x9, 0xA, 0x0


def client_frame(payload: bytes, opcode: int = TEXT) -> bytes:
    """One masked frame from the client (clients must mask; the key is random)."""
    length = len(payload)
    if length < 126:
        header = struct.pack("!BB", 0x80 | opcode, 0x80 | length)
    elif length < 65536:
        header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, length)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, length)
    key = os.urandom(4)
    repeated = (key * (length // 4 + 1))[:length]
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")).to_bytes(length, "big")
    return header + key + masked


class FrameReader:
    """Split the server's byte stream into ``(opcode, payload)`` frames (servers do not mask)."""

    def __init__(self) -> None:
        self._buffer = b""
        self._fragments: list[bytes] = []
        self._fragment_opcode = 0

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        buffer = self._buffer + data if self._buffer else data
        frames: list[tuple[int, bytes]] = []
        pos, end = 0, len(buffer)
        while end - pos >= 2:
            first, second = buffer[pos], buffer[pos + 1]
            length = second & 0x7F
            start = pos + 2
            if length == 126:
                if end - start < 2:
                    break
                length = int.from_bytes(buffer[start:start + 2], "big")
                start += 2
            elif length == 127:
                if end - start < 8:
                    break
                length = int.from_bytes(buffer[start:start + 8], "big")
                start += 8
            if second & 0x80:
                raise ValueError("the server masked a frame")
            if end - start < length:
                break
            payload = buffer[start:start + length]
            pos = start + length
            opcode = first & 0x0F
            if first & 0x80 and opcode != CONTINUATION:
                frames.append((opcode, payload))
            elif opcode != CONTINUATION:  # the first of a fragmented message
                self._fragment_opcode, self._fragments = opcode, [payload]
            else:
                self._fragments.append(payload)
                if first & 0x80:
                    frames.append((self._fragment_opcode, b"".join(self._fragments)))
                    self._fragments = []
        self._buffer = buffer[pos:]
        return frames


class WebSocket(asyncio.Protocol):
    """One client connection: ``opened`` resolves after the handshake; ``on_text(payload)`` gets text frames."""

    def __init__(self, host: str, port: int, path: str, origin: str, on_text: Callable[[bytes], None]) -> None:
        self.request = _handshake(host, port, path, origin)
        self.on_text = on_text
        self.opened: asyncio.Future[WebSocket] = asyncio.get_running_loop().create_future()
        self.closed: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None
        self.reader = FrameReader()
        self.raw: Callable[[bytes], None] | None = None
        self._head = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        transport.write(self.request)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        if not self.opened.done():
            self._head += data
            head, sep, rest = self._head.partition(b"\r\n\r\n")
            if not sep:
                return
            if not head.startswith(b"HTTP/1.1 101"):
                status = head.split(b"\r\n", 1)[0]
                self.opened.set_exception(ConnectionError(f"handshake refused: {status!r}"))
                self.transport.close()  # type: ignore[union-attr]
                return
            self.opened.set_result(self)
            data = rest
            if not data:
                return
        if self.raw is not None:
            self.raw(data)
        else:
            self.dispatch(data)

    def dispatch(self, data: bytes) -> None:
        """Parse received bytes into frames: text to ``on_text``, pings answered, a close noted."""
        on_text = self.on_text
        for opcode, payload in self.reader.feed(data):
            if opcode == TEXT:
                on_text(payload)
            elif opcode == PING:
                self.transport.write(client_frame(payload, PONG))  # type: ignore[union-attr]
            elif opcode == CLOSE:
                self._close(f"closed by the server: {payload[:2].hex()} {payload[2:]!r}")

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(ConnectionError(f"connection lost during the handshake: {exc}"))
        self._close(f"connection lost: {exc}")

    def _close(self, why: str) -> None:
        if not self.closed.done():
            self.closed.set_result(why)

    def send_text(self, payload: bytes) -> None:
        self.transport.write(client_frame(payload))  # type: ignore[union-attr]

    def send_many(self, payloads: list[bytes]) -> None:
        self.transport.write(b"".join(map(client_frame, payloads)))  # type: ignore[union-attr]

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(client_frame(struct.pack("!H", 1000), CLOSE))
            self.transport.close()


def _handshake(host: str, port: int, path: str, origin: str) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nOrigin: {origin}\r\n\r\n").encode()


async def connect(host: str, port: int, path: str, on_text: Callable[[bytes], None], *,
                  origin: str | None = None, timeout: float = 30.0,
                  local_addr: tuple[str, int] | None = None) -> WebSocket:
    """Open a WebSocket to ``ws://host:port/path`` (from ``local_addr`` if given) and finish its handshake."""
    loop = asyncio.get_running_loop()
    origin = origin or f"http://{host}:{port}"
    _, protocol = await asyncio.wait_for(
        loop.create_connection(lambda: WebSocket(host, port, path, origin, on_text), host, port,
                               local_addr=local_addr), timeout)
    return await asyncio.wait_for(protocol.opened, timeout)
