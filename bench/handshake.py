"""Sans-I/O connection set-ups: bytes to send, bytes expected back, then hand over.

A :class:`Handshake` is driven by the connection that owns it: send
:meth:`Handshake.initial`, pass every received chunk to :meth:`Handshake.feed`
and send what it returns, until :attr:`Handshake.done`; whatever arrived after
the set-up is in :attr:`Handshake.leftover` and belongs to the benchmark
traffic. A reply that is not the expected one sets :attr:`Handshake.error`.
"""

from __future__ import annotations

from typing import Callable

__all__ = ["HandshakeError", "Handshake", "ExpectExact", "ExpectUntil", "Steps"]


class HandshakeError(ConnectionError):
    """The server answered a set-up request with something unexpected."""


class Handshake:
    """Base class: a fixed request and a reply checked by :meth:`_parse`."""

    def __init__(self, send: bytes = b"") -> None:
        self.done = False
        self.leftover = b""
        self.error: HandshakeError | None = None
        self.info: bytes = b""  # the reply, for callers that read something from it
        self._send = send
        self._buffer = b""

    def initial(self) -> bytes:
        """Bytes to send as soon as the connection is made."""
        return self._send

    def feed(self, data: bytes) -> bytes:
        """Take received bytes; return bytes to send now (often none)."""
        if self.done or self.error is not None:
            self.leftover += data
            return b""
        self._buffer += data
        try:
            used, reply = self._parse(self._buffer)
        except HandshakeError as exc:
            self.error = exc
            return b""
        if used >= 0:
            self.info = self._buffer[:used]
            self.leftover = self._buffer[used:]
            self._buffer = b""
            self.done = True
        return reply

    def _parse(self, buffer: bytes) -> tuple[int, bytes]:
        """``(bytes used, bytes to send)``; ``used`` is -1 while the reply is incomplete."""
        raise NotImplementedError


class ExpectExact(Handshake):
    """Send ``send``; the reply must be exactly ``expect`` (Redis SUBSCRIBE, MQTT CONNACK/SUBACK)."""

    def __init__(self, send: bytes, expect: bytes) -> None:
        super().__init__(send)
        self.expect = expect

    def _parse(self, buffer: bytes) -> tuple[int, bytes]:
        n = len(self.expect)
        if not self.expect.startswith(buffer[:n]):
            raise HandshakeError(f"expected {self.expect!r}, got {buffer[:n + 40]!r}")
        return (n if len(buffer) >= n else -1), b""


class ExpectUntil(Handshake):
    """Send ``send``; the reply ends with ``marker`` and must not contain ``refuse`` (NATS PONG)."""

    def __init__(self, send: bytes, marker: bytes, *, starts: bytes = b"", refuse: bytes = b"-ERR") -> None:
        super().__init__(send)
        self.marker = marker
        self.starts = starts
        self.refuse = refuse

    def _parse(self, buffer: bytes) -> tuple[int, bytes]:
        if not buffer[:len(self.starts)] == self.starts[:len(buffer)]:
            raise HandshakeError(f"expected {self.starts!r}..., got {buffer[:80]!r}")
        at = buffer.find(self.marker)
        if self.refuse and self.refuse in buffer[:at if at >= 0 else len(buffer)]:
            raise HandshakeError(f"refused: {buffer[:200]!r}")
        return (at + len(self.marker) if at >= 0 else -1), b""


class Steps(Handshake):
    """A set-up that needs what the server said first (CoreMQ: the connection id).

    ``step(buffer)`` returns ``(used, reply, finished)``; it is called with the
    unparsed input whenever bytes arrive, until ``finished``.
    """

    def __init__(self, step: Callable[[bytes], tuple[int, bytes, bool]], send: bytes = b"") -> None:
        super().__init__(send)
        self._step = step
        self._used = 0
        self._info = b""

    def _parse(self, buffer: bytes) -> tuple[int, bytes]:
        out = b""
        while True:
            used, reply, finished = self._step(buffer[self._used:])
            out += reply
            if used <= 0 and not finished:
                return -1, out
            self._used += used
            if finished:
                used_total, self._used = self._used, 0
                return used_total, out
