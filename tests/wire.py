"""A raw-socket test client that speaks frames and nothing more.

Broker tests use it instead of the real clients so that they see exactly what
the broker sends, byte for byte, and can send bytes no real client would.
"""

from __future__ import annotations

import json
import socket
from typing import Any

from coremq_client.codec import Frame, FrameParser, encode_frame
from coremq_client.errors import ProtocolError


class RawClient:
    """A blocking socket plus a frame parser; ``welcome()`` has been read on return."""

    def __init__(self, host: str, port: int, *, timeout: float = 5.0, read_welcome: bool = True,
                 source: str | None = None) -> None:
        # ``source``: the local address to connect from (any 127.x.y.z reaches a loopback listener on Linux).
        self.sock = socket.create_connection((host, port), timeout=timeout,
                                             source_address=(source, 0) if source else None)
        self.parser = FrameParser(max_frame_size=2**31)
        self.pending: list[Frame] = []
        self.id = ""
        self.welcome: dict = {}
        if read_welcome:
            frame = self.read_frame()
            self.id = frame.queue
            self.welcome = json.loads(frame.body)

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send(self, queue: str, message: Any) -> None:
        self.send_raw(encode_frame(queue, json.dumps(message).encode()))

    def control(self, message: dict) -> dict:
        """Send a request to the own id queue and return the reply object."""
        self.send(self.id, message)
        return self.read()[1]

    def read_frame(self) -> Frame:
        while not self.pending:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("closed by broker")
            self.parser.receive_data(data)
            for event in self.parser.events():
                if isinstance(event, ProtocolError):
                    raise event
                self.pending.append(Frame(*event))
        return self.pending.pop(0)

    def read(self) -> tuple[str, Any]:
        frame = self.read_frame()
        return frame.queue, json.loads(frame.body)

    def read_until_closed(self) -> list[tuple[str, Any]]:
        """Every frame until the broker closes the connection."""
        frames = []
        while True:
            try:
                frames.append(self.read())
            except (ConnectionError, OSError):
                return frames

    def close(self) -> None:
        self.sock.close()
