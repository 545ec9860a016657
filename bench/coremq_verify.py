"""Checking CoreMQ's deliveries, which carry the broker's stamps and so vary in length.

A CoreMQ delivery is the published object plus ``coremq_sender``,
``coremq_sent`` (a time), ``coremq_server`` and ``coremq_id``, so its bytes
cannot be known in advance as Redis's, MQTT's and NATS's are.
:class:`CoreMQDeliveryVerifier` checks one subscriber's frames on their own:
every object a benchmark message, sequence numbers without a gap, ids
matching. That costs a few C passes per chunk, more than the broker spends
delivering the message to one more subscriber, so with many subscribers the
generator would become the bottleneck.

:class:`SharedDeliveries` avoids that. The broker encodes a delivery once and
sends the same bytes to every subscriber of the queue, so the first subscriber
to receive a stretch of the stream checks it in full and keeps it; every other
subscriber compares its bytes with that stretch (one ``memcmp``). A
subscriber whose bytes differ (a broker that stamps per subscriber, say) is
not failed for that: from then on it is checked in full on its own.
"""

from __future__ import annotations

import re
from bisect import bisect_left

from .streams import StreamMismatch

__all__ = ["CoreMQDeliveryVerifier", "SharedDeliveries", "CoreMQSubscriberVerifier"]


class CoreMQDeliveryVerifier:
    """Checks a CoreMQ subscriber's deliveries: every frame a delivery, seq 0, 1, 2, ... in order.

    Only complete frames are checked (up to the last ``}``; a frame's JSON
    object is flat, so its ``}`` ends it); the rest waits for the next chunk.
    Every ``{`` in them must open a benchmark message, ``{"seq":"`` and ten
    digits, so a frame of any other kind (an error, a BYE) fails the check;
    the sequence numbers must run on from the previous chunk without a gap;
    and the last ``coremq_id`` must equal the count (ids start at 1 on a fresh
    queue). Large chunks are checked with numpy, a few C passes over the bytes
    (the generator must stay cheaper than the broker it measures); small ones
    with one regular-expression scan.
    """

    _SEQ = re.compile(rb'\{"seq":"(\d{10})"')
    _ID = b'"coremq_id":'
    _NUMPY_FROM = 4096  # bytes; below this numpy's per-call overhead costs more than it saves

    def __init__(self, queue: str) -> None:
        self.queue = queue
        self.count = 0
        self.error: StreamMismatch | None = None
        self._tail = b""

    def feed(self, data: bytes) -> int:
        if self.error is not None:
            return 0
        before = self.count
        start = 0
        if self._tail:  # finish the frame that the last chunk cut, without copying all of data
            close = data.find(b"}")
            if close < 0:
                self._tail += data
                return 0
            head, self._tail = self._tail + data[:close + 1], b""
            if not self.check_frames(head, 0, len(head)):
                return 0
            start = close + 1
        cut = data.rfind(b"}") + 1
        if cut <= start:
            self._tail = data[start:]
        else:
            self._tail = data[cut:]
            if not self.check_frames(data, start, cut):
                return 0
        return self.count - before

    def check_frames(self, data: bytes, start: int, end: int) -> bool:
        """Check the complete frames ``data[start:end]``, which continue the stream; False on failure."""
        first = self.count
        if np is not None and end - start >= self._NUMPY_FROM:
            numbers = _numpy_seqs(data, start, end)
            if numbers is None:
                return self._fail(f"a frame that is not a delivery of a benchmark message in {data[start:start + 300]!r}")
            n = len(numbers)
            if not np.array_equal(numbers, np.arange(first, first + n)):
                k = int(np.flatnonzero(numbers != np.arange(first, first + n))[0])
                return self._fail(f"expected message seq {first + k}, got seq {int(numbers[k])} (lost or reordered)")
        else:
            seqs = self._SEQ.findall(data, start, end)
            n = len(seqs)
            if data.count(b"{", start, end) != n:
                return self._fail(f"a frame that is not a delivery of a benchmark message in {data[start:end][:300]!r}")
            numbers = list(map(int, seqs))
            if numbers != list(range(first, first + n)):
                k = next(i for i, (got, want) in enumerate(zip(numbers, range(first, first + n))) if got != want)
                return self._fail(f"expected message seq {first + k}, got seq {numbers[k]} (lost or reordered)")
        at = data.rfind(self._ID, start, end) + len(self._ID)
        last_id = data[at:data.find(b"}", at)].split(b",")[0]
        if int(last_id) != first + n:
            return self._fail(f"coremq_id {int(last_id)} on message seq {first + n - 1}, expected {first + n}")
        self.count = first + n
        return True

    def _fail(self, reason: str) -> bool:
        self.error = StreamMismatch(f"queue {self.queue!r}: {reason}")
        return False


try:  # numpy comes with matplotlib; without it the regular-expression path does all the work
    import numpy as np
except ImportError:  # pragma: no cover
    np = None

if np is not None:
    _OPEN = ord("{")
    _SEQ_MARK = np.frombuffer(b'"seq":"', np.uint8)
    _SEQ_SPAN = np.arange(1, 1 + len(_SEQ_MARK) + 10)  # after each "{": the mark, then ten digits
    _POWERS = 10 ** np.arange(9, -1, -1, dtype=np.int64)


def _numpy_seqs(data: bytes, start: int, end: int) -> "np.ndarray | None":
    """The sequence numbers of the messages in ``data[start:end]``; None if an object is not one."""
    arr = np.frombuffer(data, np.uint8, count=end)[start:]
    opens = np.flatnonzero(arr == _OPEN)
    if len(opens) and opens[-1] + _SEQ_SPAN[-1] >= len(arr):
        return None
    window = arr[opens[:, None] + _SEQ_SPAN]
    if not (window[:, :len(_SEQ_MARK)] == _SEQ_MARK).all():
        return None
    digits = window[:, len(_SEQ_MARK):].astype(np.int64) - 48
    if ((digits < 0) | (digits > 9)).any():
        return None
    return digits @ _POWERS


class SharedDeliveries:
    """The checked part of one queue's delivery stream, shared by all its subscribers in a run.

    ``buf`` holds the stream from offset ``base`` up to :attr:`end`, always
    ending at a frame boundary. ``_marks`` record how many frames end at
    given offsets, so a subscriber that has compared up to an offset knows
    its count without scanning. Memory is bounded: past ``keep`` bytes the
    part every member has passed is dropped.
    """

    def __init__(self, queue: str, *, keep: int = 32 * 2**20) -> None:
        self.queue = queue
        self.checker = CoreMQDeliveryVerifier(queue)
        self.buf = bytearray()
        self.base = 0
        self.keep = keep
        self.members: list[CoreMQSubscriberVerifier] = []
        self._mark_offsets: list[int] = [0]
        self._mark_counts: list[int] = [0]

    @property
    def end(self) -> int:
        return self.base + len(self.buf)

    def extend(self, data: bytes, start: int, stop: int) -> bool:
        """Check the complete frames ``data[start:stop]``, which continue the stream, and keep them."""
        if not self.checker.check_frames(data, start, stop):
            return False
        self.buf += memoryview(data)[start:stop]
        self._mark_offsets.append(self.end)
        self._mark_counts.append(self.checker.count)
        if len(self.buf) > self.keep:
            self._trim()
        return True

    def count_at(self, offset: int) -> int:
        """Frames that end at or before ``offset``, a frame boundary between ``base`` and ``end``."""
        i = bisect_left(self._mark_offsets, offset)
        if i < len(self._mark_offsets) and self._mark_offsets[i] == offset:
            return self._mark_counts[i]
        before = self._mark_offsets[i - 1]
        return self._mark_counts[i - 1] + self.buf.count(b"}", before - self.base, offset - self.base)

    def _trim(self) -> None:
        low = min((m.offset for m in self.members if not m.private), default=self.end)
        if low <= self.base:
            return
        count = self.count_at(low)
        i = bisect_left(self._mark_offsets, low)
        self._mark_offsets[:i] = [low]
        self._mark_counts[:i] = [count]
        del self.buf[:low - self.base]
        self.base = low


class CoreMQSubscriberVerifier:
    """One subscriber's check against the :class:`SharedDeliveries` of its queue."""

    def __init__(self, shared: SharedDeliveries) -> None:
        self.shared = shared
        shared.members.append(self)
        self.offset = 0  # bytes of complete frames checked
        self.count = 0
        self.error: StreamMismatch | None = None
        self.private: CoreMQDeliveryVerifier | None = None
        self._tail = b""

    def feed(self, data: bytes) -> int:
        if self.error is not None:
            return 0
        if self.private is not None:
            return self._feed_private(data)
        if self._tail:
            data, self._tail = self._tail + data, b""
        cut = data.rfind(b"}") + 1
        if cut == 0:
            self._tail = data
            return 0
        if cut < len(data):
            self._tail = data[cut:]
        shared = self.shared
        offset = self.offset
        known = min(cut, shared.end - offset)
        if known > 0 and not shared.buf.startswith(memoryview(data)[:known], offset - shared.base):
            return self._go_private(data, cut)
        if cut > known and not shared.extend(data, max(known, 0), cut):
            self.error = shared.checker.error
            return 0
        self.offset = offset = offset + cut
        count = shared.count_at(offset)
        new, self.count = count - self.count, count
        return new

    def _go_private(self, data: bytes, cut: int) -> int:
        """Our bytes differ from the other subscribers': check them, and all that follow, in full."""
        private = self.private = CoreMQDeliveryVerifier(self.shared.queue)
        private.count = self.count
        self._tail = b""
        return self._feed_private(data)

    def _feed_private(self, data: bytes) -> int:
        assert self.private is not None
        before = self.private.count
        self.private.feed(data)
        self.count = self.private.count
        self.error = self.private.error
        return self.count - before
