"""The TCP transport: one asyncio protocol object per client connection.

Output is coalesced: :meth:`TcpConnection.send` appends to a list and the
broker flushes every connection that has output once per loop iteration, so a
burst of deliveries costs one ``write`` per connection, not one per message.

Output is bounded. While the socket is over its high-water mark (asyncio's
``pause_writing``) frames wait in the connection's own buffer and the
connection's requests are not read; past ``max_write_buffer`` the connection
is a slow consumer and the queue's policy applies: ``disconnect`` or ``drop``
(the oldest undelivered messages, with a notice naming the ids dropped).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections import deque
from typing import TYPE_CHECKING

from coremq_client import protocol as P
from coremq_client.codec import Frame, FrameParser
from coremq_client.errors import ProtocolError

from .limits import FrameDeadline
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
        self._out: deque[bytes] = deque()
        self._out_bytes = 0
        self._max_out = broker.config.max_write_buffer
        self._writing_paused = False
        self._holds = 0
        self._gaps: dict[str, list[bytes]] = {}  # queue -> [first, last] frame dropped

    # -- asyncio.Protocol --------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no asyncio.Transport subclass
        config = self.broker.config
        transport.set_write_buffer_limits(high=config.write_high, low=config.write_low)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self.deadline = FrameDeadline(self.broker.bounds, self, asyncio.get_running_loop())
        self.broker.connection_made(self)

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        self.bytes_in += len(data)
        parser = self.parser
        parser.receive_data(data)
        broker = self.broker
        events = parser.events()
        self.deadline.read(parser.mid_frame, events)  # the first frame and a started one have deadlines
        if parser.clean:  # frames only, the usual case
            broker.handle_frames(self, events)  # type: ignore[arg-type]
            return
        frames: list[Frame] = []
        for event in events:  # hand over the frames between errors in order
            if isinstance(event, ProtocolError):
                if frames:
                    broker.handle_frames(self, frames)
                    frames = []
                broker.protocol_error(self, event)
                if event.fatal:
                    self.close()
                    return
            else:
                frames.append(event)
        if frames:
            broker.handle_frames(self, frames)

    def eof_received(self) -> bool:
        if self.parser.mid_frame:
            logger.warning("connection %s (%s) closed in the middle of a frame (%d bytes pending)",
                           self.id, self.peer, self.parser.buffered)
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.deadline.cancel()
        self._out.clear()
        self._out_bytes = 0
        self.broker.connection_lost(self, str(exc) if exc else "")

    def pause_writing(self) -> None:
        # The peer reads slower than we write: keep output in our own bounded
        # buffer and stop taking its requests, whose replies would add to it.
        self._writing_paused = True
        self.hold()

    def resume_writing(self) -> None:
        self._writing_paused = False
        self.release()
        self.flush()

    def hold(self) -> None:
        self._holds += 1
        if self._holds == 1 and self.transport is not None and not self.closing:
            self.transport.pause_reading()

    def release(self) -> None:
        self._holds -= 1
        if self._holds == 0 and self.transport is not None and not self.closing:
            self.transport.resume_reading()

    # -- Connection --------------------------------------------------------

    def send(self, frame: bytes) -> None:
        if self.closing:
            return
        out = self._out
        if not out:
            self.broker.schedule_flush(self)
        out.append(frame)
        self._out_bytes += len(frame)
        if self._out_bytes > self._max_out:
            self._overflow(frame)

    def deliver(self, data: bytes) -> None:
        if self._out or self._writing_paused or self.closing or self._gaps or self.transport is None:
            self.send(data)  # behind what waits, or into the bounded buffer, or dropped when closing
            return
        self.bytes_out += len(data)
        self.transport.write(data)

    def flush(self) -> None:
        """Write what :meth:`send` collected, unless the socket is over its high-water mark."""
        out = self._out
        transport = self.transport
        if not out or self._writing_paused or transport is None or transport.is_closing():
            return
        if self._gaps:
            out.appendleft(self._gap_notice())
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        self._out_bytes = 0
        self.bytes_out += len(data)
        transport.write(data)

    @property
    def buffered(self) -> int:
        size = self._out_bytes
        if self.transport is not None:
            size += self.transport.get_write_buffer_size()
        return size

    def close(self, reason: str | None = None) -> None:
        """Flush what is pending (after ``ERROR: reason`` if given) and close."""
        if self.closing or self.transport is None:
            return
        if reason:
            self.broker.send_error(self, reason)
        self._writing_paused = False  # hand everything to the transport, which drains then closes
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

    # -- slow consumers ----------------------------------------------------

    def _overflow(self, frame: bytes) -> None:
        registry = self.broker.registry
        queue = registry.queues.get(_frame_queue(frame))
        policy = queue.settings.slow_consumer_policy if queue is not None else "disconnect"
        registry.slow_consumers += 1
        if policy == "drop":
            self._drop_oldest()
        else:
            self._disconnect_slow()

    def _disconnect_slow(self) -> None:
        assert self.transport is not None
        logger.warning("connection %s (%s) is a slow consumer: %d bytes unsent; disconnecting",
                       self.id, self.peer, self.buffered)
        self._out.clear()
        self._out_bytes = 0
        # The ERROR goes behind what the socket already holds; if the peer
        # still does not read within a second, that is dropped too.
        self.transport.write(self.broker.error_frame(self, "slow consumer"))
        self._close_within(1.0)

    def _drop_oldest(self) -> None:
        """Drop the oldest deliveries down to half the limit, keeping replies; note the ids lost."""
        kept: list[bytes] = []
        out = self._out
        gaps = self._gaps
        target = self._max_out // 2
        while out and self._out_bytes > target:
            frame = out.popleft()
            queue = _frame_queue(frame)
            if queue == self.id:  # replies and point-to-point messages are not dropped
                kept.append(frame)
                continue
            self._out_bytes -= len(frame)
            frames = _split_frames(frame)  # one queue's frames of one loop iteration
            self.dropped += len(frames)
            span = gaps.get(queue)
            if span is None:
                gaps[queue] = [frames[0], frames[-1]]
            else:
                span[1] = frames[-1]
        out.extendleft(reversed(kept))

    def _gap_notice(self) -> bytes:
        """The notice of what :meth:`_drop_oldest` dropped since the last flush."""
        dropped = {queue: {"first": self._frame_id(first), "last": self._frame_id(last)}
                   for queue, (first, last) in self._gaps.items()}
        self._gaps.clear()
        logger.warning("connection %s (%s) is a slow consumer: dropped %s", self.id, self.peer, dropped)
        return self.broker.encode_reply(self, {"response": "ERROR: slow consumer: messages dropped",
                                                "dropped": dropped})

    def _frame_id(self, frame: bytes) -> int | None:
        body = frame.split(b" ", 2)[2]
        try:
            return self.broker.codec.loads(body).get(P.ID)
        except (ProtocolError, AttributeError):
            return None


def _frame_queue(frame: bytes) -> str:
    """The queue name of a frame this broker encoded."""
    return frame.split(b" ", 2)[1].decode()


def _split_frames(blob: bytes) -> list[bytes]:
    """The frames, headers included, of a run of frames this broker encoded."""
    frames = []
    position = 0
    while position < len(blob):
        space = blob.index(b" ", position)
        end = space + 1 + int(blob[position + 1 : space])
        frames.append(blob[position:end])
        position = end
    return frames
