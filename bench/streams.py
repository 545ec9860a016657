"""Numbered payloads and the byte streams they make, built and checked at C speed.

Every benchmark message is the same 100-byte JSON object with a 10-digit
sequence number in it (``{"seq":"0000000042","pad":"xx..."}``), so every
frame a protocol makes of it has the same length. A stream of such frames is
cut into blocks of :data:`BLOCK` messages; the low digits of the sequence
numbers are the same in every block and the high digits are patched into a
copy of a template with one strided slice assignment per digit, so making the
bytes for 10,000 messages costs a handful of C calls.

The same trick checks what arrives: a subscriber of a protocol whose
deliveries are fixed-length (Redis, MQTT, NATS) must receive exactly the
stream of delivery frames for messages 0, 1, 2, ...; :class:`StreamVerifier`
compares each chunk with the expected bytes (``bytes.startswith`` at an
offset, a ``memcmp``), so a lost, duplicated, reordered or corrupted message
is detected without a Python operation per message. Nothing here does I/O.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable

__all__ = [
    "BLOCK",
    "PAYLOAD_SIZE",
    "SEQ_DIGITS",
    "StreamMismatch",
    "payload",
    "SeqStream",
    "RepeatStream",
    "StreamVerifier",
]

PAYLOAD_SIZE = 100
SEQ_DIGITS = 10
_LOW_DIGITS = 4
BLOCK = 10**_LOW_DIGITS  # messages per block; the low digits repeat block after block
_SEQ_PREFIX = b'{"seq":"'
_PAD_PREFIX = b'","pad":"'
_PAD_SUFFIX = b'"}'
_PAD_LENGTH = PAYLOAD_SIZE - len(_SEQ_PREFIX) - SEQ_DIGITS - len(_PAD_PREFIX) - len(_PAD_SUFFIX)
#: Where the sequence digits sit inside a payload.
SEQ_OFFSET = len(_SEQ_PREFIX)


def payload(seq: int) -> bytes:
    """The 100-byte JSON object that carries message number ``seq``."""
    pad = (b"coremq-benchmark-" * 8)[:_PAD_LENGTH]
    return b"%s%010d%s%s%s" % (_SEQ_PREFIX, seq, _PAD_PREFIX, pad, _PAD_SUFFIX)


class StreamMismatch(AssertionError):
    """What arrived is not what was sent: a message was lost, duplicated, reordered or changed."""


class SeqStream:
    """The endless byte stream of ``make_frame(payload(0)) + make_frame(payload(1)) + ...``.

    ``make_frame`` wraps one payload in a protocol's framing; it must give
    frames of one length whatever the sequence number (all the benchmark
    protocols do: the payload has a fixed length).
    """

    def __init__(self, make_frame: Callable[[bytes], bytes], *, cache_blocks: int = 8) -> None:
        first = make_frame(payload(0))
        self.frame_size = len(first)
        seq_at = first.find(_SEQ_PREFIX) + len(_SEQ_PREFIX)
        if seq_at < len(_SEQ_PREFIX) or len(make_frame(payload(BLOCK))) != self.frame_size:
            raise ValueError("make_frame must keep the payload and give frames of one length")
        self.frame = make_frame
        self.block_size = BLOCK * self.frame_size
        # High digits (patched per block) are the first SEQ_DIGITS - _LOW_DIGITS.
        self._high_positions = range(seq_at, seq_at + SEQ_DIGITS - _LOW_DIGITS)
        self._template = b"".join(make_frame(payload(i)) for i in range(BLOCK))
        self._cache: OrderedDict[int, bytes] = OrderedDict()
        self._cache_blocks = cache_blocks

    def block(self, number: int) -> bytes:
        """The bytes of messages ``number * BLOCK`` up to ``(number + 1) * BLOCK - 1``."""
        data = self._cache.get(number)
        if data is not None:
            self._cache.move_to_end(number)
            return data
        buf = bytearray(self._template)
        high = b"%0*d" % (SEQ_DIGITS - _LOW_DIGITS, number)
        size = self.frame_size
        for position, digit in zip(self._high_positions, high):
            buf[position::size] = bytes((digit,)) * BLOCK
        data = bytes(buf)
        self._cache[number] = data
        if len(self._cache) > self._cache_blocks:
            self._cache.popitem(last=False)
        return data

    def pieces(self, start: int, stop: int) -> list[memoryview]:
        """The frames of messages ``start`` to ``stop - 1`` as views, one per block touched."""
        out = []
        size = self.frame_size
        while start < stop:
            number, index = divmod(start, BLOCK)
            end = min(stop, (number + 1) * BLOCK)
            out.append(memoryview(self.block(number))[index * size:(end - number * BLOCK) * size])
            start = end
        return out

    def bytes_at(self, offset: int) -> tuple[bytes, int]:
        """``(block, position)``: the block holding stream byte ``offset`` and where it is in it.

        At most ``block_size - position`` bytes of the block belong to the stream from there.
        """
        number, position = divmod(offset, self.block_size)
        return self.block(number), position


class RepeatStream:
    """The endless stream ``unit + unit + ...`` (acks that carry no number, like Redis's ``:10``)."""

    def __init__(self, unit: bytes, *, repeat: int = 4096) -> None:
        if not unit:
            raise ValueError("unit must not be empty")
        self.frame_size = len(unit)
        self.block_size = len(unit) * repeat
        self._block = unit * repeat

    def bytes_at(self, offset: int) -> tuple[bytes, int]:
        return self._block, offset % self.block_size


class StreamVerifier:
    """Checks that a connection receives exactly an expected stream, and counts its frames.

    :meth:`feed` returns how many frames were completed by ``data``. On the
    first byte that differs it records :attr:`error` (a :class:`StreamMismatch`
    saying which message was expected and what came instead), stops counting
    and returns 0 from then on; it never raises.

    ``interjections`` are frames the server may put between two expected
    frames on its own (NATS sends ``PING`` to a new client after about two
    seconds); they are skipped and counted in :attr:`interjected`.
    """

    def __init__(self, stream: SeqStream | RepeatStream, *, interjections: tuple[bytes, ...] = (),
                 describe: Callable[[bytes], str] | None = None) -> None:
        self.stream = stream
        self.interjections = interjections
        self.offset = 0  # bytes of the stream received and checked
        self.count = 0  # complete frames received
        self.interjected = 0
        self.error: StreamMismatch | None = None
        self._describe = describe or repr
        self._partial = b""  # the start of an interjection cut by the end of a chunk
        self._frame_size = stream.frame_size
        # The block being received and the position in it, for the fast path.
        self._block, self._position = stream.bytes_at(0)
        self._block_size = stream.block_size

    def feed(self, data: bytes) -> int:
        """Check ``data`` against the stream; return the frames it completed."""
        # Fast path: all of data inside the current block, no pending partial interjection.
        position = self._position
        end = position + len(data)
        if end < self._block_size and not self._partial and self._block.startswith(data, position):
            self._position = end
            offset = self.offset = self.offset + len(data)
            done = offset // self._frame_size
            new = done - self.count
            self.count = done
            return new
        n = self._feed(data)
        self._block, self._position = self.stream.bytes_at(self.offset)
        return n

    def _feed(self, data: bytes) -> int:
        if self.error is not None:
            return 0
        if self._partial:
            data, self._partial = self._partial + data, b""
        stream = self.stream
        offset = self.offset
        i = 0
        n = len(data)
        while i < n:
            block, position = stream.bytes_at(offset)
            take = min(n - i, stream.block_size - position)
            chunk = data if (i == 0 and take == n) else data[i:i + take]
            if block.startswith(chunk, position):
                i += take
                offset += take
                continue
            # The rare path: an interjection at a frame boundary, or a real mismatch.
            at = _common_prefix(block, position, data, i, take)
            boundary = offset + at - (offset + at) % stream.frame_size
            rel = i + boundary - offset  # where in data the frame holding the difference starts
            found = self._interjection(data, rel) if rel >= i else None
            if found is None:
                self.offset = offset
                self._mismatch(data, i, offset)
                return 0
            offset, i = boundary, rel
            if found:
                data = data[:rel] + data[rel + found:]
                n = len(data)
                self.interjected += 1
            else:  # cut at the end of the chunk: wait for the rest
                self._partial = data[rel:]
                break
        self.offset = offset
        done = offset // stream.frame_size
        new = done - self.count
        self.count = done
        return new

    def _interjection(self, data: bytes, at: int) -> int | None:
        """Length of the interjection at ``data[at:]``; 0 if one may start there; None if none fits."""
        rest = data[at:at + 64]
        for word in self.interjections:
            if rest.startswith(word):
                return len(word)
            if word.startswith(rest):
                return 0
        return None

    def _mismatch(self, data: bytes, i: int, offset: int) -> None:
        size = self.stream.frame_size
        block, position = self.stream.bytes_at(offset)
        j = _common_prefix(block, position, data, i, min(len(data) - i, len(block) - position))
        frame = (offset + j) // size
        frame_start = frame * size - offset + i
        got = data[max(frame_start, 0):frame_start + size]
        want, at = self.stream.bytes_at(frame * size)
        self.error = StreamMismatch(
            f"frame {frame} (message seq {frame}) differs at byte {(offset + j) % size}: "
            f"expected {self._describe(want[at:at + size])}, got {self._describe(got)}"
        )


def _common_prefix(block: bytes, position: int, data: bytes, i: int, length: int) -> int:
    """How many bytes ``data[i:]`` and ``block[position:]`` share (up to ``length``), by bisection."""
    low, high = 0, length  # block[position:position+low] == data[i:i+low] holds
    while low < high:
        mid = (low + high + 1) // 2
        if block.startswith(data[i:i + mid], position):
            low = mid
        else:
            high = mid - 1
    return low
