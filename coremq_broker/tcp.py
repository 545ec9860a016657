"""The TCP transport: one asyncio protocol object per client connection.

Output is coalesced: :meth:`TcpConnection.send` appends to a list and the
broker flushes every connection that has output once per loop iteration, so a
burst of deliveries costs one ``write`` per connection, not one per message.
A connection whose unsent output passes ``max_write_buffer`` is a slow
consumer and is cut off; one that stops reading its replies is no longer read
from (asyncio flow control) until it drains.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import TYPE_CHECKING

from coremq_client.codec import FrameParser
from coremq_client.errors import ProtocolError

from .registry import Connection

if TYPE_CHECKING:
    from .broker import Broker

__all__ = ["TcpConnection"]

logger = logging.getLogger("coremq.broker")

# Seconds a closing connection may take to drain before it is aborted.
_CLOSE_GRACE = 5.0


class TcpConnection(asyncio.Protocol, Connection):
    transport_name = "tcp"

    def __init__(self, broker: "Broker") -> None:
        Connection.__init__(self, broker.new_connection_id())
        self.broker = broker
        self.parser = FrameParser(max_frame_size=broker.config.max_frame_size)
        self.transport: asyncio.Transport | None = None
        self._out: list[bytes] = []
        self._paused_reading = False

    # -- asyncio.Protocol --------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        config = self.broker.config
        transport.set_write_buffer_limits(high=config.write_high, low=config.write_low)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self.broker.connection_made(self)

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        self.bytes_in += len(data)
        parser = self.parser
        parser.receive_data(data)
        broker = self.broker
        for event in parser.events():
            if isinstance(event, ProtocolError):
                broker.protocol_error(self, event)
                if event.fatal:
                    self.close()
                    return
            else:
                broker.handle_frame(self, event)

    def eof_received(self) -> bool:
        if self.parser.mid_frame:
            logger.warning("connection %s (%s) closed in the middle of a frame (%d bytes pending)",
                           self.id, self.peer, self.parser.buffered)
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self._out.clear()
        self.broker.connection_lost(self, str(exc) if exc else "")

    def pause_writing(self) -> None:
        # The peer does not read fast enough: stop taking its requests, whose
        # replies would only grow our buffer.
        if self.transport is not None and not self._paused_reading:
            self._paused_reading = True
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None and self._paused_reading:
            self._paused_reading = False
            if not self.closing:
                self.transport.resume_reading()

    # -- Connection --------------------------------------------------------

    def send(self, frame: bytes) -> None:
        if self.closing:
            return
        out = self._out
        if not out:
            self.broker.schedule_flush(self)
        out.append(frame)

    def flush(self) -> None:
        """Write what :meth:`send` collected; cut off a slow consumer."""
        out = self._out
        transport = self.transport
        if not out or transport is None or transport.is_closing():
            out.clear()
            return
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        self.bytes_out += len(data)
        transport.write(data)
        if transport.get_write_buffer_size() > self.broker.config.max_write_buffer:
            self._slow_consumer()

    @property
    def buffered(self) -> int:
        size = sum(len(frame) for frame in self._out)
        if self.transport is not None:
            size += self.transport.get_write_buffer_size()
        return size

    def close(self, reason: str | None = None) -> None:
        """Flush what is pending (after ``ERROR: reason`` if given) and close."""
        if self.closing or self.transport is None:
            return
        if reason:
            self.broker.send_error(self, reason)
        self.flush()
        self._close_within(_CLOSE_GRACE)

    def abort(self) -> None:
        """Drop the connection and everything still buffered for it."""
        if self.transport is not None:
            self.transport.abort()

    def _close_within(self, grace: float) -> None:
        self.closing = True
        assert self.transport is not None
        self.transport.close()
        asyncio.get_running_loop().call_later(grace, self.abort)

    def _slow_consumer(self) -> None:
        assert self.transport is not None
        self.dropped += 1
        self.broker.registry.slow_consumers += 1
        logger.warning("connection %s (%s) is a slow consumer: %d bytes unsent; disconnecting",
                       self.id, self.peer, self.transport.get_write_buffer_size())
        # Nothing more is queued for it; the ERROR goes behind what is already
        # buffered, and the buffer is dropped if the peer still does not read.
        self.transport.write(self.broker.error_frame(self, "slow consumer"))
        self._close_within(1.0)
