"""Checking a WebSocket broadcast at 1,000 subscribers without the generator becoming the bottleneck.

The WebSocket counterpart of :class:`bench.coremq_verify.SharedDeliveries`.
Parsing every frame of every subscriber in Python costs the generator about
as much per delivery as a lean server spends sending it, so against the Node
``ws`` peer at 1,000 subscribers the generator would be measured, not the
server. But a broadcast server sends the same bytes to every subscriber of a
queue (CoreMQ's bridge, ``ws`` and ``websockets.broadcast()`` all encode a
delivery once), so:

- the first subscriber to receive a stretch of the stream parses it
  (:class:`~bench.wsclient.FrameReader`) and checks it: text frames carrying
  messages 0, 1, 2... in order (a ping or pong may come between them); the
  stretch is kept, with the offset where each frame ends;
- every other subscriber compares its bytes with the kept stretch (one
  ``memcmp``) and counts the messages of the frames it has passed;
- a subscriber whose bytes differ (a ping of its own, a server that encodes
  each copy apart) is not failed for it: it leaves the shared stream at the
  last frame boundary before its bytes and parses its own frames from there
  on, correctly, only at more cost to the generator.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from typing import Callable

from .wsclient import CLOSE, PING, PONG, TEXT, FrameReader

__all__ = ["SharedStream", "StreamFollower", "message_seq"]

_SEQ = re.compile(rb'"seq": ?(\d+)')


def message_seq(payload: bytes) -> int | None:
    """The ``seq`` of a benchmark message's delivery, or None if the frame is something else."""
    match = _SEQ.search(payload)
    return None if match is None else int(match.group(1))


def _frame_size(payload_length: int) -> int:
    """Bytes of an unmasked, unfragmented server frame with this payload."""
    return payload_length + (2 if payload_length < 126 else 4 if payload_length < 65536 else 10)


class SharedStream:
    """The checked stream that every subscriber of one run receives after its ``subscribed`` answer.

    ``buf`` holds the stream from absolute offset ``base`` to :attr:`end`;
    ``ends[i]`` is an offset where a frame ends and ``counts[i]`` the messages
    up to there. Memory is bounded: past ``keep`` bytes, what every follower
    has passed is dropped (down to a frame boundary).
    """

    def __init__(self, errors: list[str], *, keep: int = 32 * 2**20) -> None:
        self.errors = errors
        self.keep = keep
        self.buf = bytearray()
        self.base = 0
        self.reader = FrameReader()
        self.count = 0  # messages in the stream
        self.expected = 0  # the next seq
        self.ends = [0]
        self.counts = [0]
        self.followers: list[StreamFollower] = []

    @property
    def end(self) -> int:
        return self.base + len(self.buf)

    def extend(self, data: bytes) -> None:
        """Append bytes that continue the stream; parse and check the frames they complete."""
        pos = self.end - len(self.reader._buffer)  # where the next frame starts
        self.buf += data
        try:
            frames = self.reader.feed(data)
        except ValueError as error:
            self.errors.append(f"a subscriber's stream: {error}")
            return
        count, expected, ends, counts = self.count, self.expected, self.ends, self.counts
        for opcode, payload in frames:
            pos += _frame_size(len(payload))
            if opcode == TEXT:
                seq = message_seq(payload)
                if seq is None:
                    self.errors.append(f"a subscriber got {payload[:300].decode(errors='replace')}")
                else:
                    if seq != expected:
                        self.errors.append(f"a subscriber expected message {expected} and got {seq}")
                    expected = seq + 1
                    count += 1
            elif opcode == CLOSE:
                self.errors.append(f"the server closed a subscriber: {payload[:2].hex()} {payload[2:]!r}")
            elif opcode not in (PING, PONG):
                self.errors.append(f"a subscriber got a frame of opcode {opcode}")
            ends.append(pos)
            counts.append(count)
        self.count, self.expected = count, expected
        if pos != self.end - len(self.reader._buffer):
            self.errors.append("a fragmented frame: the shared check assumes whole frames")
        if len(self.buf) > self.keep:
            self._trim()

    def boundary(self, offset: int) -> tuple[int, int]:
        """The last frame end at or before ``offset`` (not before ``base``), and the messages up to it."""
        i = bisect_right(self.ends, offset) - 1
        return self.ends[i], self.counts[i]

    def _trim(self) -> None:
        low = min((f.offset for f in self.followers if f.active), default=self.end)
        i = bisect_right(self.ends, low) - 1
        if i <= 0:
            return
        cut = self.ends[i]
        del self.ends[:i], self.counts[:i]
        del self.buf[:cut - self.base]
        self.base = cut


class StreamFollower:
    """One subscriber's bytes, compared with the :class:`SharedStream` (or extending it).

    :meth:`feed` returns the messages newly passed. When the bytes differ, it
    calls ``leave(backlog, count)`` once, with the bytes from the last frame
    boundary on and the messages before that boundary, and is inactive after.
    """

    def __init__(self, shared: SharedStream, leave: Callable[[bytes, int], None]) -> None:
        self.shared = shared
        self.leave = leave
        self.offset = 0
        self.count = 0
        self.active = True
        shared.followers.append(self)

    def feed(self, data: bytes) -> int:
        shared = self.shared
        offset = self.offset
        known = min(len(data), shared.end - offset)
        if known > 0 and not shared.buf.startswith(data[:known] if known < len(data) else data, offset - shared.base):
            self.active = False
            start, count = shared.boundary(offset)
            self.leave(bytes(shared.buf[start - shared.base:offset - shared.base]) + data, count)
            return 0
        if known < len(data):
            shared.extend(data[known:] if known > 0 else data)
        self.offset = offset = offset + len(data)
        _, count = shared.boundary(offset)
        new, self.count = count - self.count, count
        return new
