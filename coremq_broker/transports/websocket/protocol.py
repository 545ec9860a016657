"""The browser protocol, sans-I/O: JSON text frames in, requests out; events in, frames out.

A browser sends one JSON object per WebSocket text frame, with an ``action``
(``subscribe``, ``unsubscribe``, ``publish``, ``history``; ``auth`` logs in
with a token) and an optional ``ref`` that the answer carries back. Every
error frame carries the error's stable ``code`` (:mod:`coremq_client.error_codes`). :func:`parse_request` turns a frame into
one of the frozen request dataclasses below or into a :class:`BadRequest`; it
never raises. The ``*_frame`` functions build the objects sent back; the
bridge encodes each delivered message once, whatever the number of browsers.
The protocol is documented for JavaScript authors in ``docs/websocket.md``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Union

from coremq_client import protocol as P
from coremq_client.codec import DEFAULT_MAX_QUEUE_NAME_LENGTH, JSONCodec, check_nesting, shown, validate_queue_name
from coremq_client.error_codes import error_code
from coremq_client.errors import InvalidQueueName, MessageError

__all__ = [
    "ACTIONS",
    "DEFAULT_MAX_MESSAGE_SIZE",
    "MAX_REF_LENGTH",
    "Subscribe",
    "Unsubscribe",
    "Publish",
    "History",
    "Auth",
    "BadRequest",
    "Request",
    "browser_number",
    "parse_request",
    "parse_queue_list",
    "message_entry",
    "message_frame",
    "error_frame",
    "text_frame",
]

#: The largest frame a browser may send, in UTF-8 bytes (``WEBSOCKET_MAX_MESSAGE_SIZE``).
DEFAULT_MAX_MESSAGE_SIZE = 64 * 2**10
#: A ``ref`` is echoed back, so it is kept short: a number or a string of at most this many characters.
MAX_REF_LENGTH = 100

Ref = Union[str, int, float, None]

#: The actions a browser may ask for, as the unknown-action error lists them.
ACTIONS = ("subscribe", "unsubscribe", "publish", "history", "auth")


@dataclass(frozen=True, slots=True)
class Subscribe:
    """Receive the messages of ``queues`` from now on."""

    queues: tuple[str, ...]
    ref: Ref = None


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    queues: tuple[str, ...]
    ref: Ref = None


@dataclass(frozen=True, slots=True)
class Publish:
    """Publish ``message`` (an object, an array or a string) to ``queue``."""

    queue: str
    message: Any
    ref: Ref = None


@dataclass(frozen=True, slots=True)
class History:
    """The history of ``queues``; with a number in ``since`` only the messages numbered above it.

    With ``limit``, at most that many messages per queue (the oldest): the answer's
    ``more`` names the queues cut short, for the browser to ask again (paging).
    """

    since: Mapping[str, int | None]
    ref: Ref = None
    limit: int | None = None

    @property
    def queues(self) -> tuple[str, ...]:
        return tuple(self.since)


@dataclass(frozen=True, slots=True)
class BadRequest:
    """A frame that is not a valid request: answered with an error frame, never a close.

    ``action`` is the request's action when it was understood (one of
    :data:`ACTIONS`) and only its fields were wrong; the error frame carries it.
    """

    error: str
    ref: Ref = None
    action: str | None = None


@dataclass(frozen=True, slots=True)
class Auth:
    """Log in as the user of an API token, instead of the session's user (see ``docs/security.md``)."""

    token: str = field(repr=False)
    ref: Ref = None


Request = Union[Subscribe, Unsubscribe, Publish, History, Auth]


def parse_request(
    data: str | bytes | None,
    *,
    codec: JSONCodec | None = None,
    max_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    max_queue_name_length: int = DEFAULT_MAX_QUEUE_NAME_LENGTH,
) -> Request | BadRequest:
    """Turn one WebSocket frame (``str`` for text, ``bytes`` for binary) into a request."""
    if not isinstance(data, str):
        return BadRequest("binary frames are not supported: send JSON text")
    try:
        text = data.encode()
    except UnicodeEncodeError:
        return BadRequest("text is not valid UTF-8: it holds a lone surrogate")
    if len(text) > max_size:
        return BadRequest(f"message too large: {len(text)} bytes, limit is {max_size}")
    try:  # the same door as the broker's: a frame nests at most MAX_NESTING levels
        check_nesting(text)
        value = (codec or _CODEC).loads(text)
    except MessageError as exc:
        return BadRequest(str(exc))
    if not isinstance(value, dict):
        return BadRequest("a request must be a JSON object with an 'action'")
    action = value.get("action")
    known = action if isinstance(action, str) and action in ACTIONS else None
    ref = value.get("ref")
    if not _valid_ref(ref):
        return BadRequest(f"ref must be a number or a string of at most {MAX_REF_LENGTH} characters", None, known)
    try:
        if action == "subscribe":
            return Subscribe(parse_queue_list(value.get("queues"), max_queue_name_length), ref)
        if action == "unsubscribe":
            return Unsubscribe(parse_queue_list(value.get("queues"), max_queue_name_length), ref)
        if action == "publish":
            return _publish(value, ref, max_queue_name_length)
        if action == "history":
            return _history(value, ref, max_queue_name_length)
        if action == "auth":
            token = value.get("token")
            return Auth(token, ref) if isinstance(token, str) and token else BadRequest("auth needs a 'token'", ref, "auth")
    except (InvalidQueueName, MessageError, _Refused) as exc:
        return BadRequest(str(exc), ref, known)
    if action is None:
        return BadRequest("a request must have an 'action'", ref)
    return BadRequest(f"unknown action {_json(action)}: use {', '.join(ACTIONS[:-1])} or {ACTIONS[-1]}", ref)


def parse_queue_list(value: Any, max_length: int = DEFAULT_MAX_QUEUE_NAME_LENGTH) -> tuple[str, ...]:
    """Queue names from a list (a bare string is one name), checked and deduplicated."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value:
        raise MessageError("'queues' must be a non-empty list of queue names")
    return tuple(dict.fromkeys(_queue_name(name, max_length) for name in value))


class _Refused(Exception):
    """A field of an understood request is wrong; the text is the error's."""


def _publish(value: dict, ref: Ref, max_length: int) -> Publish:
    if "queue" not in value:
        raise _Refused("publish needs a 'queue'")
    queue = _queue_name(value["queue"], max_length)
    if "message" not in value:
        raise _Refused("publish needs a 'message'")
    message = value["message"]
    if not isinstance(message, (dict, list, str)):
        raise _Refused(f"a message must be a JSON object, array or string, not {_json_type(message)}")
    return Publish(queue, message, ref)


def _history(value: dict, ref: Ref, max_length: int) -> History:
    since = value.get("since")
    if since is None:
        since = {}
    if not isinstance(since, dict):
        raise _Refused("'since' must be an object of queue name to message id")
    names = parse_queue_list(value["queues"], max_length) if "queues" in value else ()
    names = tuple(dict.fromkeys(names + tuple(since)))
    if not names:
        raise _Refused("history needs 'queues' or 'since'")
    resolved: dict[str, int | None] = {}
    for name in names:
        _queue_name(name, max_length)
        after = since.get(name)
        if after is not None and (isinstance(after, bool) or not isinstance(after, int)):
            raise _Refused(f"since[{_json(name)}] must be a message id (an integer) or null, not {_json(after)}")
        resolved[name] = after
    limit = value.get("limit")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise _Refused(f"history limit must be a positive integer, got {_json(limit)}")
    return History(resolved, ref, limit)


# A browser's number in its sub-address <bridge id>/<n>: ASCII digits, no sign, no leading zero.
_BROWSER_NUMBER = re.compile(r"[1-9][0-9]{0,17}")


def browser_number(sub: str) -> int | None:
    """The browser number that the sub-address part ``sub`` names, or None if it names none.

    Only the form the bridge gives (``str(n)``) counts: ``"²"``, ``"٣"``, ``"03"`` or ``"+3"``
    name no browser, so one browser has exactly one address.
    """
    return int(sub) if _BROWSER_NUMBER.fullmatch(sub) else None


def _valid_ref(ref: Any) -> bool:
    if ref is None or isinstance(ref, (int, float)) and not isinstance(ref, bool):
        return True
    return isinstance(ref, str) and len(ref) <= MAX_REF_LENGTH


def _json(value: Any, limit: int = 40) -> str:
    """``value`` for an error's text (:func:`coremq_client.codec.shown`, cut shorter)."""
    return shown(value, limit)


def _queue_name(name: Any, max_length: int) -> str:
    """``name`` if it is a usable queue name; a name that is no string is named by its JSON type."""
    if not isinstance(name, str):
        raise InvalidQueueName(f"queue name must be a string, not {_json_type(name)}")
    return validate_queue_name(name, max_length)


def _json_type(value: Any) -> str:
    """What a JSON value is, in words: ``null``, ``a boolean``, ``a number``, ``an array``, ``an object``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return "a number"


_CODEC = JSONCodec()


# -- frames to the browser ---------------------------------------------------------

def message_entry(stored: Any) -> dict[str, Any]:
    """A stored message as browsers see it: ``id``, ``message`` (as published), ``sender``, ``sent``.

    ``message`` is what the publisher sent: strings and arrays unwrapped, and
    objects without the broker's ``coremq_*`` stamps, which are given beside it.
    """
    if not isinstance(stored, dict):
        return {"id": None, "message": stored, "sender": None, "sent": None}
    message = {key: value for key, value in stored.items() if key not in P.STAMP_KEYS}
    message = P.unwrap(message)  # a wrapper alone (a published string or array) is undone; any other object stays
    return {"id": stored.get(P.ID), "message": message, "sender": stored.get(P.SENDER), "sent": stored.get(P.SENT)}


def message_frame(queue: str, stored: Any) -> dict[str, Any]:
    """The ``message`` frame that delivers ``stored`` from ``queue``."""
    return {"type": "message", "queue": queue, **message_entry(stored)}


def error_frame(error: str, ref: Ref = None, *, code: str | None = None, **extra: Any) -> dict[str, Any]:
    """The error frame saying ``error``, with its stable ``code`` (by default the table's for the text).

    ``extra`` adds members such as the request's ``action``.
    """
    return {"type": "error", "error": error, "code": code or error_code(error), "ref": ref, **extra}


def text_frame(payload: bytes) -> bytes:
    """The WebSocket frame (RFC 6455, server to client: unmasked, final) carrying UTF-8 text ``payload``."""
    length = len(payload)
    if length < 126:
        return b"\x81" + bytes((length,)) + payload
    if length < 65536:
        return b"\x81\x7e" + length.to_bytes(2, "big") + payload
    return b"\x81\x7f" + length.to_bytes(8, "big") + payload
