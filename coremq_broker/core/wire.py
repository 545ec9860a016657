"""The broker's frames as bytes: the only place that formats (or reads back) what the broker sends.

Sans-I/O and stateless but for :class:`Wire`'s cached prefixes. The frame
codec itself (``+<size> <queue> <json>``) is the client's
(:mod:`coremq_client.codec`); this module adds what only the server writes:

- **stamps**: every message gets ``coremq_sender``, ``coremq_sent``,
  ``coremq_server`` and ``coremq_id`` before its closing brace. A message
  travels as its JSON as published (``body``, ending in ``}``) and the stamps
  shared by its batch up to the id's value (``stamps``); :func:`stamped`
  makes the stored JSON, :func:`split_stored` undoes it for a stored row.
- **deliveries**: :meth:`Wire.deliveries` formats a batch of N messages to
  one queue, numbered from ``first_id``, as one blob of frames;
- **replies**: :meth:`Wire.acknowledgements` formats the ``OK: Message
  sent`` replies of a batch; :meth:`Wire.answer` any other reply, error or
  notice on a connection's id queue (welcome, BYE, ``ERROR: ...``, the
  slow-consumer drop notice).

Batches are the general path: a publish of one message is a batch of one.
Sizes are tracked, not counted: a frame's size is its fixed part plus the
digits of its id, which grow by one at each power of ten.
"""

from __future__ import annotations

import json
from typing import Any, Callable

from coremq_client import protocol as P
from coremq_client.codec import encode_frame
from coremq_client.error_codes import error_code

__all__ = ["ID_STAMP", "Wire", "split_stored", "stamped", "split_frames", "payloads"]

#: The last stamp's key: the id's value follows it, then the message's closing brace.
ID_STAMP = b',"%s":' % P.ID.encode()
_SENDER = b',"%s":' % P.SENDER.encode()
_SENT = b',"%s":' % P.SENT.encode()
_SERVER = b',"%s":' % P.SERVER.encode()
# The reply to a publish, formatted rather than encoded: it is sent once per publish.
_ACK = b'{"response":"%s","id":%%d,"request":%%d}' % P.OK_SENT.encode()


def stamped(body: bytes, stamps: bytes, message_id: int) -> bytes:
    """The stored JSON of message ``message_id``: ``body`` with ``stamps`` and the id before its brace."""
    return b"%s%s%d}" % (body[:-1], stamps, message_id)


def split_stored(stored: bytes, message_id: int) -> bytes:
    """The ``body`` whose :func:`stamped` with :data:`ID_STAMP` is ``stored`` (a durable row).

    ``stored`` ends in its id stamp when this broker wrote it; an object that
    does not (its publisher's own ``coremq_id`` kept its place) is re-ordered.
    """
    tail = b"%s%d}" % (ID_STAMP, message_id)
    if stored.endswith(tail):
        return stored[: -len(tail)] + b"}"
    message = json.loads(stored)
    message.pop(P.ID, None)
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode()


def _power_of_ten_above(number: int) -> int:
    """The least power of ten above ``number`` (>= 0): 10 ** (its number of digits)."""
    return 10 ** len(str(number))


class Wire:
    """Formats one broker's frames; ``address`` is what ``coremq_server`` says."""

    __slots__ = ("dumps", "server_stamp")

    def __init__(self, dumps: Callable[[Any], bytes], address: str = "") -> None:
        self.dumps = dumps
        self.server_stamp = b""
        self.serve_as(address)

    def serve_as(self, address: str) -> None:
        """The broker's address changed (bound): the ``coremq_server`` stamp follows."""
        self.server_stamp = _SERVER + self.dumps(address) + ID_STAMP

    # -- stamps ------------------------------------------------------------------

    def stamps(self, sender: str, now: float) -> bytes:
        """The stamps of messages from ``sender`` (a connection id or sub-address, or the server's name) at ``now``."""
        return b"%s%s%s%s%s" % (_SENDER, self.dumps(sender), _SENT, self.dumps(now), self.server_stamp)

    def connection_stamps(self, sender_id: bytes, now: float) -> bytes:
        """:meth:`stamps` for a connection's own id (a UUID: no escaping needed), the per-read fast way."""
        return b'%s"%s"%s%s%s' % (_SENDER, sender_id, _SENT, self.dumps(now), self.server_stamp)

    # -- deliveries ----------------------------------------------------------------

    def deliveries(self, name: bytes, bodies: list[bytes], stamps: bytes, first_id: int) -> bytes:
        """The frames delivering ``bodies`` to queue ``name`` (encoded), with ids from ``first_id``, joined.

        One message (one in flight: the most frequent batch under light load)
        is formatted directly; tests hold both ways to the same bytes.
        """
        if len(bodies) == 1:
            body = bodies[0]
            end = b"%d}" % first_id
            return b"+%d %s %s%s%s" % (len(name) + len(body) + len(stamps) + len(end), name, body[:-1], stamps, end)
        return self._delivery_run(name, bodies, stamps, first_id)

    def _delivery_run(self, name: bytes, bodies: list[bytes], stamps: bytes, first_id: int) -> bytes:
        """:meth:`deliveries` of any number of messages: one format, sizes tracked as the ids grow."""
        frame = b"+%%d %s %%.*s%s%%d}" % (name.replace(b"%", b"%%"), stamps.replace(b"%", b"%%"))
        limit = _power_of_ten_above(first_id)
        base = len(name) + 1 + len(stamps) + len(str(limit)) - 1
        frames = []
        message_id = first_id
        for body in bodies:
            if message_id >= limit:
                limit *= 10
                base += 1
            size = len(body)
            frames.append(frame % (base + size, size - 1, body, message_id))
            message_id += 1
        return b"".join(frames)

    # -- replies -------------------------------------------------------------------

    def acknowledgements(self, connection_id: bytes, first_id: int, count: int, first_request: int) -> bytes:
        """The ``OK: Message sent`` replies to requests ``first_request``... that published ids ``first_id``...

        One reply is formatted directly, as :meth:`deliveries` does; tests hold both ways to the same bytes.
        """
        if count == 1:
            reply = _ACK % (first_id, first_request)
            return b"+%d %s %s" % (len(connection_id) + 1 + len(reply), connection_id, reply)
        return self._acknowledgement_run(connection_id, first_id, count, first_request)

    def _acknowledgement_run(self, connection_id: bytes, first_id: int, count: int, first_request: int) -> bytes:
        """:meth:`acknowledgements` of any number of replies: one format, sizes tracked as the numbers grow."""
        frame = b"+%%d %s %s" % (connection_id.replace(b"%", b"%%"), _ACK)
        size = len(connection_id) + 1 + len(_ACK) - 4
        id_limit = _power_of_ten_above(first_id)
        request_limit = _power_of_ten_above(first_request)
        size += len(str(id_limit)) + len(str(request_limit)) - 2
        replies = []
        request = first_request
        for message_id in range(first_id, first_id + count):
            if message_id >= id_limit:
                id_limit *= 10
                size += 1
            if request >= request_limit:
                request_limit *= 10
                size += 1
            replies.append(frame % (size, message_id, request))
            request += 1
        return b"".join(replies)

    def answer(self, connection_id: str, reply: dict[str, Any]) -> bytes:
        """The frame carrying ``reply`` (a reply, an error or a notice) on the connection's id queue."""
        return encode_frame(connection_id, self.dumps(reply))

    def error(self, connection_id: str, reason: str, request: int | None = None, **extra: Any) -> bytes:
        """An ``ERROR: reason`` on the connection's id queue, answering ``request`` if given.

        Every error carries its stable ``code`` (:func:`coremq_client.error_codes.error_code`).
        """
        reply: dict[str, Any] = {"response": f"ERROR: {reason}", "code": error_code(reason), **extra}
        if request is not None:
            reply["request"] = request
        return self.answer(connection_id, reply)

    def drop_notice(self, connection_id: str, dropped: dict[str, tuple[int, int]]) -> bytes:
        """The slow-consumer notice naming, per queue, the first and last id dropped."""
        spans = {queue: {"first": first, "last": last} for queue, (first, last) in dropped.items()}
        return self.answer(connection_id, {"response": "ERROR: slow consumer: messages dropped",
                                                    "code": "messages_dropped", "dropped": spans})


def split_frames(blob: bytes) -> list[tuple[int, int]]:
    """The ``(start, end)`` of each frame in a run of frames this module formatted."""
    spans = []
    position = 0
    end = len(blob)
    while position < end:
        space = blob.index(b" ", position)
        following = space + 1 + int(blob[position + 1 : space])
        spans.append((position, following))
        position = following
    return spans


def payloads(blob: bytes) -> list[bytes]:
    """The JSON of each frame in a run of frames this module formatted (for an in-process link)."""
    result = []
    for start, end in split_frames(blob):
        space = blob.index(b" ", blob.index(b" ", start) + 1)  # after the size, then after the queue name
        result.append(blob[space + 1 : end])
    return result
