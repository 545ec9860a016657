"""A blocking WebSocket client on a plain socket, for tests that must control reading byte by byte."""

from __future__ import annotations

import base64
import json
import os
import socket
import ssl
import struct
import threading
from typing import Any

import pytest

from coremq_client import MessageQueue


class RawWebSocket:
    """Opens ``ws://127.0.0.1:port/path`` (``wss://`` with ``tls``) with an allowed Origin; reads JSON text frames
    only when asked."""

    def __init__(self, port: int, path: str, *, receive_buffer: int | None = None, timeout: float = 30.0,
                 tls: ssl.SSLContext | None = None) -> None:
        sock = socket.socket()
        if receive_buffer is not None:  # before connecting, so the TCP window stays small
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        sock.settimeout(timeout)
        sock.connect(("127.0.0.1", port))
        self.sock = sock if tls is None else tls.wrap_socket(sock, server_hostname="127.0.0.1")
        scheme = "http" if tls is None else "https"
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                           f"Origin: {scheme}://127.0.0.1:{port}\r\n\r\n").encode())
        self.buffer = b""
        while b"\r\n\r\n" not in self.buffer:
            self.buffer += self._recv()
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head

    def _recv(self) -> bytes:
        try:
            data = self.sock.recv(65536)
        except ssl.SSLError as exc:  # a TLS connection cut off mid-record
            raise ConnectionError(f"TLS: {exc}") from exc
        if not data:
            raise ConnectionError("closed by the server")
        return data

    def _take(self, count: int) -> bytes:
        while len(self.buffer) < count:
            self.buffer += self._recv()
        data, self.buffer = self.buffer[:count], self.buffer[count:]
        return data

    def receive(self) -> dict[str, Any]:
        """The next text frame's JSON; ConnectionError when the server closed or dropped the connection.

        daphne's pings (every 20 s) are skipped, unanswered.
        """
        while True:
            first, second = self._take(2)
            length = second & 0x7F
            if length == 126:
                length = struct.unpack("!H", self._take(2))[0]
            elif length == 127:
                length = struct.unpack("!Q", self._take(8))[0]
            payload = self._take(length)
            if first & 0x0F == 0x8:
                raise ConnectionError(f"close frame {payload[:2].hex()}")
            if first & 0x0F not in (0x9, 0xA):
                return json.loads(payload)

    def receive_type(self, kind: str) -> dict[str, Any]:
        while True:
            frame = self.receive()
            if frame["type"] == kind:
                return frame

    def close(self) -> None:
        self.sock.close()


def flood_stuck_and_reader(stuck: RawWebSocket, reader: RawWebSocket, port: int, messages: int, pad: str) -> int:
    """Publish ``messages`` on queue ``flood`` over TCP at ``port``: ``reader`` must get every one, in order,
    while ``stuck`` (which never reads) is cut off; return how many ``stuck`` still received before the cut.
    """
    received: list[int] = []

    def read_all() -> None:
        while len(received) < messages:
            received.append(reader.receive_type("message")["message"]["n"])

    thread = threading.Thread(target=read_all, daemon=True)
    thread.start()
    with MessageQueue("127.0.0.1", port) as client:
        for n in range(messages):
            client.publish("flood", {"n": n, "pad": pad})
    thread.join(60)
    assert received == list(range(messages))
    got = 0
    with pytest.raises(ConnectionError):
        while True:
            stuck.receive_type("message")
            got += 1
    assert got < messages
    return got
