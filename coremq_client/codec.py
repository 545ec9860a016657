"""The CoreMQ wire codec, sans-I/O: bytes in, frames out; values in, bytes out.

A frame is ``+<N> <queue> <json>``: a plus sign, the decimal byte length ``N`` of
what follows the space, one space, then ``N`` bytes holding the queue name, one
space and a JSON text. Frames follow one another with no delimiter.

Nothing here touches a socket, an event loop or Django: the broker, the
blocking client and the asyncio client all feed bytes to :class:`FrameParser`
and send what :func:`encode_frame` returns.
"""

from __future__ import annotations

import json
import os
import re
from itertools import accumulate
from typing import Any, Callable, NamedTuple, Union

from .errors import (
    FrameBodyError,
    FrameHeaderError,
    FrameTooLarge,
    InvalidQueueName,
    MessageError,
    ProtocolError,
)

#: Set COREMQ_PURE_PYTHON=1 to use neither orjson nor uvloop even when
#: installed: CI runs the suite that way too, so the fallbacks stay tested.
PURE_PYTHON = os.environ.get("COREMQ_PURE_PYTHON", "") not in ("", "0")

try:  # orjson is several times faster; the stdlib is the fallback.
    if PURE_PYTHON:
        raise ImportError("COREMQ_PURE_PYTHON is set")
    import orjson
except ImportError:
    orjson = None

__all__ = [
    "DEFAULT_PORT",
    "DEFAULT_MAX_FRAME_SIZE",
    "DEFAULT_MAX_QUEUE_NAME_LENGTH",
    "MAX_NESTING",
    "NESTING_CHECK_FROM",
    "Frame",
    "FrameParser",
    "JSONCodec",
    "check_nesting",
    "encode_frame",
    "nesting_depth",
    "shown",
    "split_address",
    "validate_queue_name",
]

DEFAULT_PORT = 6747
DEFAULT_MAX_FRAME_SIZE = 2**20
DEFAULT_MAX_QUEUE_NAME_LENGTH = 200
#: The deepest a frame's JSON may nest arrays and objects (``{}`` is 1 level, ``[{}]`` 2). A protocol
#: constant, not a setting: every process on a message's way (broker, bridges, clients, both JSON
#: back-ends) must be able to re-encode it inside its own envelopes, and orjson writes at most 254
#: levels (the stdlib's limit is the interpreter's recursion limit, lower under a deep stack).
MAX_NESTING = 128
#: The shortest JSON text that can nest deeper than MAX_NESTING: each level takes two bytes.
NESTING_CHECK_FROM = 2 * (MAX_NESTING + 1)

# The longest length field we parse at all; longer headers are garbage.
_MAX_LENGTH_DIGITS = 20
# What a queue name may not hold: whitespace, control characters (C0, DEL, C1) and surrogates
# (a lone one cannot be encoded as UTF-8; over the WebSocket JSON could carry it).
_NOT_IN_NAMES = re.compile(r"[\s\x00-\x1f\x7f-\x9f\ud800-\udfff]")
# Queue names a parser keeps decoded (a connection mostly uses a few).
_NAMES_KEPT = 256
# A whole frame header: "+", 1 to 20 ASCII digits, one space.
_HEADER = re.compile(rb"\+([0-9]{1,%d}) " % _MAX_LENGTH_DIGITS)


class Frame(NamedTuple):
    """One frame: the queue it is addressed to and its JSON text, undecoded.

    :class:`FrameParser` hands frames over as plain ``(queue, body)`` tuples,
    which compare equal to a ``Frame`` of the same values: on the broker's hot
    path a tuple costs a sixth of an object with attributes. Unpack them
    (``queue, body = frame``); build a ``Frame`` where names read better.
    """

    queue: str
    body: bytes


def encode_frame(queue: str, body: bytes) -> bytes:
    """Return the wire bytes of a frame for ``queue`` carrying the JSON ``body``."""
    name = queue.encode()
    return b"+%d %s %s" % (len(name) + 1 + len(body), name, body)


def shown(value: Any, limit: int = 60) -> str:
    """``value`` as an error text shows it, cut at ``limit`` characters: never in Python syntax.

    A string (or bytes, as their text) in single quotes, its characters escaped
    as in JSON: single quotes are how every CoreMQ error names a queue, an
    option or a key (``unknown control key 'coremq_x'``); anything else as JSON.
    """
    if isinstance(value, (bytes, bytearray)):
        value = bytes(value).decode("utf-8", "replace")
    if isinstance(value, str):
        text = "'%s'" % json.dumps(value, ensure_ascii=False)[1:-1]
    else:
        try:
            text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
        except (TypeError, ValueError):
            text = shown(str(value), limit)
    return text if len(text) <= limit else text[:limit] + "..."


def validate_queue_name(name: object, max_length: int = DEFAULT_MAX_QUEUE_NAME_LENGTH) -> str:
    """Return ``name`` if it is a usable queue name, else raise :class:`InvalidQueueName`."""
    if not isinstance(name, str):
        raise InvalidQueueName(f"queue name must be a string, not {type(name).__name__}")
    if not name:
        raise InvalidQueueName("queue name must not be empty")
    if len(name) > max_length:
        raise InvalidQueueName(f"queue name is {len(name)} characters, limit is {max_length}")
    bad = _NOT_IN_NAMES.search(name)
    if bad is not None:
        what = "whitespace" if bad[0].isspace() else "a control character" if bad[0] < "\ud800" else "a surrogate"
        raise InvalidQueueName(f"queue name {shown(name, 300)} contains {what}")
    return name


def split_address(name: str) -> tuple[str, str | None]:
    """``(id, sub)`` for a sub-address ``<id>/<sub>``, ``(name, None)`` for any other name.

    The one reading of a queue name as an address, for the broker's registry
    and the WebSocket bridge alike: the part before the first ``/``.
    """
    prefix, slash, sub = name.partition("/")
    return (prefix, sub) if slash else (name, None)


# An escape in a JSON string: a backslash and the character after it.
_ESCAPED = re.compile(rb"\\.", re.DOTALL)
# Every byte but those that delimit strings and nest values.
_NOT_STRUCTURE = bytes(sorted(set(range(256)) - set(b'"[]{}')))
# One nesting step per byte of a string-free JSON text: +1 for [ and {, -1 for ] and }.
_NESTING_STEP = [0] * 256
_NESTING_STEP[ord("[")] = _NESTING_STEP[ord("{")] = 1
_NESTING_STEP[ord("]")] = _NESTING_STEP[ord("}")] = -1


def nesting_depth(body: bytes) -> int:
    """How deep the JSON text ``body`` nests arrays and objects (0 for a scalar, 1 for ``{}``).

    Counted on the bytes, outside strings, without decoding, so that the bound
    is checked before a decoder recurses; in C but for one step per bracket.
    On text that is not JSON the answer is some number, never an exception.
    """
    if b"\\" in body:
        body = _ESCAPED.sub(b"", body)  # what is left of a string holds no quote
    structure = b"".join(body.translate(None, _NOT_STRUCTURE).split(b'"')[::2])
    return max(accumulate(map(_NESTING_STEP.__getitem__, structure), initial=0))


def check_nesting(body: bytes, limit: int = MAX_NESTING) -> None:
    """Raise :class:`MessageError` if ``body``'s JSON nests deeper than ``limit`` levels.

    Cheap for what is well within the bound: a text shorter than
    ``2 * (limit + 1)`` bytes (each level takes two) or with no more than
    ``limit`` brackets is not scanned at all.
    """
    if len(body) >= 2 * (limit + 1) and body.count(b"[") + body.count(b"{") > limit:
        depth = nesting_depth(body)
        if depth > limit:
            raise MessageError(f"JSON nested {depth} levels deep, limit is {limit}")


class FrameParser:
    """Split a byte stream into :class:`Frame` objects.

    Feed bytes with :meth:`receive_data`; collect results with :meth:`events`,
    which returns frames and :class:`~coremq_client.errors.ProtocolError`
    instances in stream order. Parsing never raises. A non-fatal error (an
    oversized frame, a payload without a queue) affects one frame only: an
    oversized frame's bytes are skipped without being buffered. A fatal error
    (a malformed header) means the stream cannot be split any more; the parser
    then ignores further input and :attr:`failed` is true.
    """

    def __init__(self, *, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> None:
        self.max_frame_size = max_frame_size
        self.failed = False
        self._buffer = bytearray()
        self._skip = 0  # bytes of an oversized frame still to throw away
        self._events: list[tuple[str, bytes] | ProtocolError] = []
        self._names: dict[bytes, str] = {}  # queue names seen lately, decoded once
        self._errors = False  # an error is among the events not yet returned
        #: After :meth:`events`: True when every event it returned was a frame.
        self.clean = True

    @property
    def buffered(self) -> int:
        """Bytes received but not yet part of a complete frame."""
        return len(self._buffer)

    @property
    def mid_frame(self) -> bool:
        """True when the input so far ends inside a frame."""
        return bool(self._buffer) or self._skip > 0

    def receive_data(self, data: bytes) -> None:
        """Take bytes from the peer; complete frames become events."""
        if self.failed or not data:
            return
        if self._skip:
            if len(data) <= self._skip:
                self._skip -= len(data)
                return
            data = data[self._skip :]
            self._skip = 0
        if self._buffer:
            self._buffer += data
            data = bytes(self._buffer)
            self._buffer.clear()
        else:
            data = bytes(data)
        pos = self._parse(data)
        if pos < len(data) and not self.failed and not self._skip:
            self._buffer += data[pos:]

    def events(self) -> list[tuple[str, bytes] | ProtocolError]:
        """Return and forget the events parsed so far; :attr:`clean` tells whether all are frames.

        A frame is a ``(queue, body)`` tuple (see :class:`Frame`).
        """
        events, self._events = self._events, []
        self.clean = not self._errors
        self._errors = False
        return events

    def _fail(self, error: ProtocolError) -> int:
        self.failed = True
        self._errors = True
        self._events.append(error)
        self._buffer.clear()
        return 0

    def _parse(self, data: bytes) -> int:
        """Parse complete frames from ``data``; return how many bytes were used."""
        pos = 0
        end = len(data)
        append = self._events.append
        limit = self.max_frame_size
        header = _HEADER.match
        find = data.find
        names = self._names
        while pos < end:
            match = header(data, pos)
            if match is None:  # a broken header, or one not complete yet
                if self._broken_header(data, pos, end):
                    return 0
                break
            body_start = match.end()
            size = int(match[1])
            frame_end = body_start + size
            if size > limit:
                self._errors = True
                append(FrameTooLarge(size, limit))
                if frame_end > end:
                    self._skip = frame_end - end
                    return end
                pos = frame_end
                continue
            if frame_end > end:
                break
            cut = find(b" ", body_start, frame_end)
            pos = frame_end
            if cut <= body_start:
                self._errors = True
                append(FrameBodyError("frame payload must be '<queue> <json>'"))
                continue
            name = data[body_start:cut]
            queue = names.get(name)
            if queue is None:
                try:
                    queue = name.decode()
                except UnicodeDecodeError:
                    self._errors = True
                    append(FrameBodyError("queue name is not valid UTF-8"))
                    continue
                if len(names) >= _NAMES_KEPT:
                    names.clear()
                names[name] = queue
            append((queue, data[cut + 1 : frame_end]))
        return pos

    def _broken_header(self, data: bytes, pos: int, end: int) -> bool:
        """Where :data:`_HEADER` did not match at ``pos``: fail if the header is broken.

        False means the header is not complete yet (more bytes may make it whole).
        """
        if data[pos] != 0x2B:  # "+"
            self._fail(FrameHeaderError(f"frame must start with '+', got {shown(data[pos:pos + 10])}"))
            return True
        space = data.find(b" ", pos + 1, pos + 2 + _MAX_LENGTH_DIGITS)
        if space < 0:
            if end - pos > 1 + _MAX_LENGTH_DIGITS:
                self._fail(FrameHeaderError("frame length is not followed by a space"))
                return True
            if data[pos + 1 : end].isdigit() or pos + 1 == end:
                return False
            self._fail(FrameHeaderError(f"frame length {shown(data[pos + 1:end])} is not a decimal number"))
            return True
        self._fail(FrameHeaderError(f"frame length {shown(data[pos + 1:space])} is not a decimal number"))
        return True


Encoder = Union[type, Callable[[Any], Union[str, bytes]], None]
Decoder = Union[type, Callable[[bytes], Any], None]


class JSONCodec:
    """Turns values into JSON bytes and back, with a pluggable encoder/decoder.

    ``encoder`` is a :class:`json.JSONEncoder` subclass (for example Django's
    ``DjangoJSONEncoder``) or a callable returning ``str`` or ``bytes``;
    ``decoder`` is a :class:`json.JSONDecoder` subclass or a callable taking
    ``bytes``. With neither, orjson is used when installed, else :mod:`json`;
    either takes strict JSON in UTF-8 only (:attr:`strict`).
    """

    def __init__(self, encoder: Encoder = None, decoder: Decoder = None) -> None:
        self.encoder = encoder
        self.decoder = decoder
        self.dumps: Callable[[Any], bytes] = _make_dumps(encoder)
        #: The decoder itself: raises ValueError, TypeError or RecursionError on bad input.
        self.raw_loads: Callable[[bytes], Any] = _make_loads(decoder)
        #: True when what :meth:`loads` accepts is strict JSON in UTF-8, so that a
        #: JSON text it took may be extended byte-wise (the broker's stamps).
        self.strict = decoder is None

    def loads(self, data: bytes) -> Any:
        """Decode JSON bytes; raise :class:`MessageError` if they are not JSON."""
        try:
            return self.raw_loads(data)
        except (ValueError, TypeError, RecursionError) as exc:
            raise MessageError(f"invalid JSON: {exc}") from None

    def __repr__(self) -> str:
        return f"JSONCodec(encoder={self.encoder!r}, decoder={self.decoder!r})"


def _make_dumps(encoder: Encoder) -> Callable[[Any], bytes]:
    if encoder is None:
        if orjson is not None:
            return orjson.dumps
        return _stdlib_dumps(json.JSONEncoder)
    if isinstance(encoder, type) and issubclass(encoder, json.JSONEncoder):
        return _stdlib_dumps(encoder)
    if callable(encoder):
        def dumps(value: Any) -> bytes:
            out = encoder(value)
            return out.encode() if isinstance(out, str) else out
        return dumps
    raise TypeError(f"encoder must be a JSONEncoder subclass or a callable, not {encoder!r}")


def _stdlib_dumps(cls: type[json.JSONEncoder]) -> Callable[[Any], bytes]:
    encode = cls(separators=(",", ":"), ensure_ascii=False).encode

    def dumps(value: Any) -> bytes:
        return encode(value).encode()

    return dumps


def _make_loads(decoder: Decoder) -> Callable[[bytes], Any]:
    if decoder is None:
        if orjson is not None:
            return orjson.loads  # UTF-8 only, strict JSON
        return _stdlib_loads
    if isinstance(decoder, type) and issubclass(decoder, json.JSONDecoder):
        decode = decoder().decode
        return lambda data: decode(data.decode())
    if callable(decoder):
        return decoder
    raise TypeError(f"decoder must be a JSONDecoder subclass or a callable, not {decoder!r}")


# The stdlib decoder, made to answer as orjson does, so that a broker takes the same messages
# whichever back-end it runs on (docs/protocol.md, "What JSON is accepted"): NaN and Infinity are
# not JSON; a number beyond a double's range is refused and an integer beyond 64 bits becomes the
# nearest double; a lone surrogate escape ("\ud800") is refused, as it has no UTF-8 form.
_INT64_MIN, _UINT64_MAX = -(2**63), 2**64 - 1


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _like_orjson_int(text: str) -> int | float:
    value = int(text)
    return value if _INT64_MIN <= value <= _UINT64_MAX else _finite_float(text)


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"number {text[:20]}... is out of range")
    return value


_PLAIN_DECODE = json.JSONDecoder(parse_constant=_refuse_constant).decode
_CAREFUL_DECODE = json.JSONDecoder(parse_constant=_refuse_constant, parse_int=_like_orjson_int,
                                   parse_float=_finite_float).decode
# What needs the careful decoder: a run of 19 digits (an integer that may pass 64 bits, a long mantissa),
# an exponent of 3 digits or more, or a surrogate escape.
_UNUSUAL = re.compile(rb"[0-9]{19}|[eE][-+]?[0-9]{3}|\\u[dD][89a-fA-F]")
# Escapes, left to right: a surrogate pair, a lone surrogate (group 1), or any other escape.
_ESCAPE = re.compile(rb"\\u[dD][89abAB][0-9a-fA-F]{2}\\u[dD][c-fC-F][0-9a-fA-F]{2}"
                     rb"|(\\u[dD][89a-fA-F][0-9a-fA-F]{2})|\\.", re.DOTALL)


def _stdlib_loads(data: bytes | str) -> Any:
    """Strict JSON in UTF-8 with the stdlib, refusing what orjson refuses (UTF-16 and UTF-32 too)."""
    raw = data if isinstance(data, bytes) else data.encode()
    text = raw.decode()
    if _UNUSUAL.search(raw) is None:
        return _PLAIN_DECODE(text)
    for escape in _ESCAPE.finditer(raw):
        if escape[1] is not None:
            raise ValueError(f"lone surrogate {escape[1].decode()} in a string")
    return _CAREFUL_DECODE(text)
