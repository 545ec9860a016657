"""The TCP transport: one asyncio protocol object per client connection.

Output is coalesced: :meth:`TcpConnection.send` appends to a list and the
broker flushes every connection that has output once per loop iteration, so a
burst of deliveries costs one ``write`` per connection, not one per message.

Work per loop iteration is bounded: past ``max_read_per_iteration`` bytes in
one iteration a connection is not read again until the broker has written
out what those bytes made (:meth:`Broker.read_budget_spent`).

Output is bounded, and flow control keeps it so (docs/reliability.md). While
the socket is over its high-water mark (asyncio's ``pause_writing``) frames
wait in the connection's own buffer and the connection's requests are not
read; a subscriber in that state is *congested*, and the broker holds the
publishers whose messages it was sent (:meth:`TcpConnection.hold_publisher`)
until it drains below the low-water mark. A congested subscriber that does
not drain within ``slow_consumer_timeout`` while holding publishers, or whose
own buffer passes ``max_write_buffer`` (the hard limit), is a slow consumer
and the queue's policy applies: ``disconnect``, or ``drop``: it holds nobody
any more and loses its oldest undelivered messages past the hard limit, with
a notice naming the ids dropped, until it catches up.

On the broker's shutdown a connection is closed gracefully
(:meth:`TcpConnection.shutdown`): its write side is shut down after the BYE,
and its input is read and discarded until the client closes, so that the
kernel never answers unread input with a reset that destroys the BYE.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections import deque
from typing import TYPE_CHECKING

from coremq_client.codec import Frame, FrameParser
from coremq_client.errors import ProtocolError

from ..core.limits import FrameDeadline
from ..core.registry import Connection

if TYPE_CHECKING:
    from ..core.broker import Broker

__all__ = ["TcpConnection"]

logger = logging.getLogger("coremq.broker")

# Seconds a closing connection may take to drain before it is aborted.
_CLOSE_GRACE = 5.0
# Seconds without input after which a connection shut down by the broker is
# closed although its client has not closed its side (the input is drained).
_LINGER = 1.0


class TcpConnection(asyncio.Protocol, Connection):
    transport_name = "tcp"

    def __init__(self, broker: "Broker") -> None:
        Connection.__init__(self, broker.new_connection_id())
        self.broker = broker
        self.parser = FrameParser(max_frame_size=broker.config.max_frame_size)
        self.transport: asyncio.Transport | None = None
        self._out: deque[bytes] = deque()
        # Beside each frame (or run of frames) in _out: its queue and ids, or None for an answer.
        self._spans: deque[tuple[str, int, int] | None] = deque()
        self._out_bytes = 0
        self._max_out = broker.config.max_write_buffer
        self._writing_paused = False
        self._holds = 0
        self._gaps: dict[str, tuple[int, int]] = {}  # queue -> (first, last) id dropped
        # Work per loop iteration: bytes read in the broker's flush turn ``_read_turn``.
        self._read_budget = broker.config.max_read_per_iteration
        self._read_turn = -1
        self._read_in_turn = 0
        self._budget_spent = False
        # Flow control: congested = writing paused and neither judged slow (lagging) nor closing.
        self._timeout = broker.config.slow_consumer_timeout
        self._congested = False
        self._lagging = False
        self._behind_since = 0.0  # loop time the socket went over its high-water mark, or last drained some
        self._taken_then = 0  # bytes the socket had taken by then
        self._least_progress = broker.config.write_low  # bytes a socket must take per timeout not to be slow
        self._holding: dict[Connection, None] = {}  # publishers held until this connection drains
        self._holding_for: set[str] = set()  # the queues they published to
        self._judge_handle: asyncio.TimerHandle | None = None
        self._draining = False  # shut down by the broker: input is read and discarded
        self._last_input = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None

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
        self._loop = self.broker.loop or asyncio.get_running_loop()  # the broker's (a stand-in in bench.inproc)
        self.deadline = FrameDeadline(self.broker.bounds, self, self._loop)
        self.broker.connection_made(self)

    def data_received(self, data: bytes) -> None:
        if self.closing:
            if self._draining:  # shut down: read to keep the kernel from resetting, and discard
                self.bytes_in += len(data)
                self._last_input = self._loop.time()  # type: ignore[union-attr]
            return
        size = len(data)
        self.bytes_in += size
        broker = self.broker
        if self._read_turn != broker.turn:
            self._read_turn = broker.turn
            self._read_in_turn = size
        else:
            self._read_in_turn += size
        if self._read_in_turn >= self._read_budget and not self._budget_spent:
            # Enough for this iteration: no more reads (uvloop would go on for up
            # to 32 of them) until the broker has written out what these made.
            self._budget_spent = True
            self.hold()
            broker.read_budget_spent(self)
        parser = self.parser
        parser.receive_data(data)
        events = parser.events()
        deadline = self.deadline  # the first frame and a started one have deadlines
        if deadline.active or parser.mid_frame:
            deadline.read(parser.mid_frame, events)
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
        if self._draining:
            return False  # the client has read our BYE and closed: close, no reset
        if self.parser.mid_frame:
            logger.warning("connection %s (%s) closed in the middle of a frame (%d bytes pending)",
                           self.id, self.peer, self.parser.buffered)
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self._congested = False
        self._release_publishers()
        self.deadline.cancel()
        self._clear()
        self.broker.connection_lost(self, str(exc) if exc else "")

    def pause_writing(self) -> None:
        # The peer reads slower than we write: keep output in our own bounded
        # buffer and stop taking its requests, whose replies would add to it.
        self._writing_paused = True
        self._behind_since = self._loop.time()  # type: ignore[union-attr]
        self._taken_then = self._taken()
        self._congested = not self._lagging and not self.closing
        self.hold()

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._congested = False
        self.release()
        self.flush()  # may go over the high-water mark again: pause_writing, from now
        if not self._writing_paused:
            self._caught_up()

    def hold(self) -> None:
        if self.closing:
            return
        self._holds += 1
        if self._holds == 1 and self.transport is not None:
            self.transport.pause_reading()

    def release(self) -> None:
        if self.closing:
            return
        self._holds -= 1
        if self._holds == 0 and self.transport is not None:
            self.transport.resume_reading()

    def turn_over(self) -> None:
        """The broker has written out this iteration's output: read again if the budget held reading."""
        if self._budget_spent:
            self._budget_spent = False
            self.release()

    # -- flow control ------------------------------------------------------

    def hold_publisher(self, publisher: Connection, queue: str) -> None:
        """Stop reading ``publisher``, whose messages to ``queue`` wait in this congested connection's output.

        It is read again when this connection drains below the low-water mark,
        is judged a slow consumer, or closes.
        """
        if publisher is self:  # its own requests are held while it is paused already
            return
        holding = self._holding
        if publisher not in holding:
            holding[publisher] = None
            publisher.hold()
        self._holding_for.add(queue)
        if self._judge_handle is None:
            self._judge_handle = self._loop.call_at(  # type: ignore[union-attr]
                self._behind_since + self._timeout, self._judge)

    def _taken(self) -> int:
        """Bytes the socket has taken from us so far (written less what the transport still holds)."""
        transport = self.transport
        return self.bytes_out - (transport.get_write_buffer_size() if transport is not None else 0)

    def _judge(self) -> None:
        """The slow-consumer judgement: still congested and holding publishers, and the socket took
        less than ``write_low`` bytes in ``slow_consumer_timeout`` seconds (it stopped draining)."""
        self._judge_handle = None
        if not self._congested or not self._holding:
            return
        loop = self._loop
        assert loop is not None
        due = self._behind_since + self._timeout
        now = loop.time()
        if now >= due and self._taken() - self._taken_then >= self._least_progress:
            # Behind, but reading: it paces its publishers; judged again a timeout from now.
            self._behind_since, self._taken_then = now, self._taken()
            due = now + self._timeout
        if now < due:  # it drained (or fell behind again) since the timer was set
            self._judge_handle = loop.call_at(due, self._judge)
            return
        queues = sorted(self._holding_for)
        registry = self.broker.registry
        policies = {registry.queues[name].settings.slow_consumer_policy if name in registry.queues
                    else "disconnect" for name in queues}
        registry.slow_consumers += 1
        if policies == {"drop"}:
            logger.warning("connection %s (%s) is a slow consumer: it has not drained for %.1fs (%d bytes unsent, "
                           "queues %s); its publishers go on and its oldest messages past %d bytes are dropped",
                           self.id, self.peer, self._timeout, self.buffered, ", ".join(queues), self._max_out)
            self._lag()
        else:
            self._disconnect_slow(f"it has not drained for {self._timeout:.1f}s (queues {', '.join(queues)})")

    def _lag(self) -> None:
        """Judged slow under ``drop``: hold nobody; the hard limit drops its oldest messages until it catches up."""
        self._lagging = True
        self._congested = False
        self._release_publishers()

    def _caught_up(self) -> None:
        """Drained below the low-water mark with nothing of its own buffered: release what it held."""
        if self._lagging:
            logger.info("connection %s (%s) has caught up", self.id, self.peer)
            self._lagging = False
        self._release_publishers()

    def _release_publishers(self) -> None:
        if self._judge_handle is not None:
            self._judge_handle.cancel()
            self._judge_handle = None
        if self._holding:
            holding, self._holding = self._holding, {}
            self._holding_for.clear()
            for publisher in holding:
                publisher.release()

    # -- Connection --------------------------------------------------------

    def send(self, frame: bytes, span: tuple[str, int, int] | None = None) -> None:
        """Append ``frame`` (an answer, or messages of ``span``: queue, first and last id) to the output."""
        if self.closing:
            return
        out = self._out
        if not out:
            self.broker.schedule_flush(self)
        out.append(frame)
        self._spans.append(span)
        self._out_bytes += len(frame)
        if self._out_bytes > self._max_out:
            transport = self.transport
            if self._writing_paused or transport is None or transport.is_closing():
                self._overflow(self.id if span is None else span[0])
            else:  # one iteration's burst to a socket that takes data: to the socket with it now
                self.flush()

    def deliver(self, data: bytes, queue: str, first_id: int, last_id: int) -> bool:
        """Send ``data``; return whether this connection is congested (its publishers are to be held)."""
        if self._out or self._writing_paused or self.closing or self._gaps or self.transport is None:
            # Behind what waits, or into the bounded buffer, or dropped when closing.
            self.send(data, (queue, first_id, last_id))
        else:
            self.bytes_out += len(data)
            self.transport.write(data)
        return self._congested

    def flush(self) -> None:
        """Write what :meth:`send` collected, and a drop notice, unless the socket is over its high-water mark."""
        out = self._out
        transport = self.transport
        if (not out and not self._gaps) or self._writing_paused or transport is None or transport.is_closing():
            return
        if self._gaps:
            out.appendleft(self._gap_notice())
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        self._spans.clear()
        self._out_bytes = 0
        self.bytes_out += len(data)
        transport.write(data)

    def _clear(self) -> None:
        self._out.clear()
        self._spans.clear()
        self._out_bytes = 0

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
            self.broker.refuse(self, reason)
        self._writing_paused = False  # hand everything to the transport, which drains then closes
        self.flush()
        self._close_within(_CLOSE_GRACE)

    def shutdown(self) -> None:
        """Close gracefully on the broker's shutdown, once the BYE has been sent.

        Everything pending goes to the socket and the write side is shut down
        behind it; then input is read and discarded until the client closes
        its side (or is quiet for a second with all our output taken), and the
        connection closes. Closing with unread input would make the kernel
        reset the connection and destroy the replies and the BYE still queued.
        The broker aborts what is left at its shutdown timeout.
        """
        transport = self.transport
        if self.closing or transport is None:
            return
        self._release_publishers()
        self._writing_paused = False
        self._congested = False
        self.flush()
        self.closing = True
        self._draining = True
        self.deadline.cancel()
        if transport.can_write_eof():
            transport.write_eof()
        self._holds = 0
        transport.resume_reading()
        assert self._loop is not None
        self._last_input = self._loop.time()
        self._loop.call_later(_LINGER, self._linger)

    def _linger(self) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        now = self._loop.time()  # type: ignore[union-attr]
        if transport.get_write_buffer_size() == 0 and now - self._last_input >= _LINGER:
            transport.close()  # nothing unread, nothing unsent: no reset
        else:
            self._loop.call_at(max(now + 0.05, self._last_input + _LINGER), self._linger)  # type: ignore[union-attr]

    def abort(self) -> None:
        """Drop the connection and everything still buffered for it."""
        if self.transport is not None:
            self.transport.abort()

    def _close_within(self, grace: float) -> None:
        self.closing = True
        self._congested = False
        self._release_publishers()
        assert self.transport is not None
        self.transport.close()
        asyncio.get_running_loop().call_later(grace, self.abort)

    # -- slow consumers ----------------------------------------------------

    def _overflow(self, name: str) -> None:
        """The hard limit: output of its own past ``max_write_buffer`` while the socket is over its high-water mark.

        ``name`` is the queue of what came last (the connection's id for an answer): its policy applies.
        """
        registry = self.broker.registry
        queue = registry.queues.get(name)
        policy = queue.settings.slow_consumer_policy if queue is not None else "disconnect"
        if policy == "drop":
            if not self._lagging:  # judged here rather than by the timeout: counted once
                registry.slow_consumers += 1
                self._lag()
            self._drop_oldest()
        else:
            registry.slow_consumers += 1
            self._disconnect_slow(f"its output passed MAX_WRITE_BUFFER ({self._max_out} bytes)")

    def _disconnect_slow(self, why: str) -> None:
        assert self.transport is not None
        logger.warning("connection %s (%s) is a slow consumer: %s; %d bytes unsent; disconnecting",
                       self.id, self.peer, why, self.buffered)
        self._clear()
        # The ERROR goes behind what the socket already holds; if the peer
        # still does not read within a second, that is dropped too.
        self.transport.write(self.broker.wire.error(self.id, "slow consumer"))
        self._close_within(1.0)

    def _drop_oldest(self) -> None:
        """Drop the oldest deliveries down to half the limit, keeping answers; note the ids lost."""
        kept: list[tuple[bytes, None]] = []
        out, spans, gaps = self._out, self._spans, self._gaps
        target = self._max_out // 2
        while out and self._out_bytes > target:
            frame, span = out.popleft(), spans.popleft()
            if span is None or span[0] == self.id:  # answers and point-to-point messages are not dropped
                kept.append((frame, None))
                continue
            self._out_bytes -= len(frame)
            queue, first, last = span
            self.dropped += last - first + 1
            gaps[queue] = (gaps[queue][0], last) if queue in gaps else (first, last)
        for frame, span in reversed(kept):
            out.appendleft(frame)
            spans.appendleft(span)

    def _gap_notice(self) -> bytes:
        """The notice of what :meth:`_drop_oldest` dropped since the last flush."""
        dropped, self._gaps = self._gaps, {}
        logger.warning("connection %s (%s) is a slow consumer: dropped %s", self.id, self.peer, dropped)
        return self.broker.wire.drop_notice(self.id, dropped)
