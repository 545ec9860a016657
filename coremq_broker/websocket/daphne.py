"""The fast path under daphne: frames encoded once, written straight to each browser's socket.

Through ASGI every delivered message would cost, per browser, a coroutine
chain, a WebSocket frame built by autobahn and a UTF-8 encode. Server frames
are not masked, so one message's frame is the same bytes for every browser:
when the ASGI ``send`` is daphne's (``Server.handle_reply`` bound to the
connection's protocol), :func:`direct_writer` returns a :class:`DirectWriter`
that writes those bytes to the protocol's Twisted transport, and the bridge
encodes each frame once. Anything else (closing, other ASGI servers, the
test communicator) goes through ASGI as usual.

The writer also bounds what a browser may leave unread: Twisted buffers
without limit, so a browser whose socket holds more than ``max_buffer``
bytes unsent is a slow consumer and is cut off (it reconnects and catches up
from history), as the broker does with TCP clients.

Nothing here imports Twisted or daphne; it recognises their objects when
they are already loaded, so it is inert everywhere else.
"""

from __future__ import annotations

import functools
import sys
from typing import Any, Callable

__all__ = ["DirectWriter", "direct_writer"]

#: autobahn's ``WebSocketProtocol.STATE_OPEN``.
_STATE_OPEN = 3


class DirectWriter:
    """Writes whole WebSocket frames to one daphne connection's socket, within a bound.

    When Twisted holds nothing for the socket, the frame goes out at once with
    one ``send`` (as asyncio's transports do), without Twisted registering,
    polling and unregistering the socket for each message; otherwise, or for
    what the socket does not take, it joins Twisted's buffer behind the rest.
    """

    __slots__ = ("protocol", "transport", "socket", "max_buffer")

    def __init__(self, protocol: Any, max_buffer: int) -> None:
        self.protocol = protocol
        self.transport = protocol.transport
        self.socket = self.transport.socket
        self.max_buffer = max_buffer

    def write(self, frame: bytes) -> bool:
        """Send or queue ``frame``; False once the browser is a slow consumer."""
        if self.protocol.state != _STATE_OPEN:
            return True  # closing: daphne finishes that
        transport = self.transport
        pending = transport._tempDataLen + len(transport.dataBuffer) - transport.offset
        if not pending and not transport.disconnecting:
            try:
                sent = self.socket.send(frame)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                return True  # the connection is failing; Twisted tells daphne
            if sent == len(frame):
                return True
            frame = frame[sent:]
        transport.write(frame)
        return pending + len(frame) <= self.max_buffer

    def abort(self) -> None:
        """Drop the connection at once, discarding what it has not read."""
        self.transport.abortConnection()


def direct_writer(send: Callable[..., Any], max_buffer: int) -> DirectWriter | None:
    """A :class:`DirectWriter` when ``send`` is daphne's own, else None (use ASGI)."""
    if not isinstance(send, functools.partial) or len(send.args) != 1:
        return None
    if getattr(send.func, "__qualname__", "") != "Server.handle_reply":
        return None
    protocol = send.args[0]
    ws_protocol = sys.modules.get("daphne.ws_protocol")
    if ws_protocol is None or not isinstance(protocol, ws_protocol.WebSocketProtocol):
        return None
    transport = protocol.transport
    if getattr(transport, "TLS", True) or not all(hasattr(transport, name) for name in _TRANSPORT_ATTRIBUTES):
        return None  # TLS, or not the Twisted TCP transport this was written for: ASGI still works
    return DirectWriter(protocol, max_buffer)


#: What :class:`DirectWriter` uses of a ``twisted.internet.tcp`` connection.
_TRANSPORT_ATTRIBUTES = ("socket", "write", "abortConnection", "disconnecting", "_tempDataLen", "dataBuffer", "offset")
