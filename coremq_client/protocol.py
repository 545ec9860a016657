"""What CoreMQ frames mean, sans-I/O: control requests, replies, stamps, wrapping.

The broker and both clients share these names so that the protocol is spelled
in one place. :class:`ClientProtocol` is the client's side of a connection as
a state machine: it turns received bytes into events (:class:`Welcome`,
:class:`Reply`, :class:`Delivery`, :class:`Bye`) and requests into bytes. The
blocking and asyncio clients are thin I/O loops around it.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any, Iterable

from .codec import DEFAULT_MAX_FRAME_SIZE, FrameParser, JSONCodec, encode_frame, validate_queue_name
from .errors import AuthenticationFailed, LocalUsageError, MessageError, PermissionDenied, ProtocolError, ServerError

__all__ = [
    "SUBSCRIBE", "UNSUBSCRIBE", "OPTIONS", "GETHISTORY", "STATUS", "ADMIN", "AUTH", "CONTROL_KEYS",
    "STORE_GET", "STORE_SET", "STORE_DELETE", "STORE_INCR", "STORE_TOUCH", "STORE_KEYS",
    "SENDER", "SENT", "SERVER", "ID", "STAMP_KEYS", "STRING", "ARRAY",
    "WELCOME", "BYE", "OPTION_ECHO", "OPTION_REPLY",
    "Welcome", "Reply", "Delivery", "Gap", "Bye", "ClientProtocol",
    "wrap", "unwrap", "error_for",
]

# Control requests: objects sent to the connection's own id queue, one key each.
SUBSCRIBE = "coremq_subscribe"
UNSUBSCRIBE = "coremq_unsubscribe"
OPTIONS = "coremq_options"
GETHISTORY = "coremq_gethistory"
STATUS = "coremq_status"
ADMIN = "coremq_admin"  # {"action": "disconnect" | "purge", ...}; for administrators
AUTH = "coremq_auth"  # {"token": ...} or {"username": ..., "password": ...}
CONTROL_KEYS = frozenset({SUBSCRIBE, UNSUBSCRIBE, OPTIONS, GETHISTORY, STATUS, ADMIN, AUTH})
# The store's requests (docs/store.md): served when the broker runs with the store (run_coremq).
STORE_GET = "coremq_get"  # key, or {"key": k}
STORE_SET = "coremq_set"  # {"key", "value" | "value_base64", "flags", "ttl", "mode", "cas"}
STORE_DELETE = "coremq_delete"  # key
STORE_INCR = "coremq_incr"  # {"key", "delta"}
STORE_TOUCH = "coremq_touch"  # {"key", "ttl"}
STORE_KEYS = frozenset({STORE_GET, STORE_SET, STORE_DELETE, STORE_INCR, STORE_TOUCH})

# Stamps the broker puts on every published message.
SENDER = "coremq_sender"
SENT = "coremq_sent"
SERVER = "coremq_server"
ID = "coremq_id"
STAMP_KEYS = frozenset({SENDER, SENT, SERVER, ID})

# Wrappers for messages that are not objects.
STRING = "coremq_string"
ARRAY = "coremq_array"

# Reply texts.
WELCOME = "OK: Welcome from CoreMQ!"
BYE = "BYE"
OK_SUBSCRIBE = "OK: Subscribe successful"
OK_UNSUBSCRIBE = "OK: Unsubscribe successful"
OK_OPTIONS = "OK: Options set"
OK_SENT = "OK: Message sent"
OK_STATUS = "OK: Status"
OK_AUTH = "OK: Authenticated"
OK_STORE_VALUE = "OK: Value"
OK_STORE_STORED = "OK: Stored"
OK_STORE_DELETED = "OK: Deleted"
OK_STORE_INCREMENTED = "OK: Incremented"
OK_STORE_TOUCHED = "OK: Touched"

# Options.
OPTION_ECHO = "echo"    # receive your own publishes
OPTION_REPLY = "reply"  # false: no "OK: Message sent" per publish (errors still come)


def wrap(value: Any) -> dict:
    """Return the object that carries ``value`` on the wire.

    Objects travel as they are, strings as ``{"coremq_string": s}`` and arrays
    (lists or tuples) as ``{"coremq_array": [...]}``; anything else cannot be
    published.
    """
    if isinstance(value, dict):
        return value
    if isinstance(value, str):
        return {STRING: value}
    if isinstance(value, (list, tuple)):
        return {ARRAY: list(value)}
    raise LocalUsageError(f"a message must be a dict, a list or a str, not {type(value).__name__}")


def unwrap(message: Any) -> Any:
    """Return what the publisher sent: the inverse of :func:`wrap`.

    Objects keep the broker's stamps (as 2015 clients saw them); wrapped strings
    and arrays come back as ``str`` and ``list``. A wrapper is undone only when
    it is alone beside the stamps: ``{"coremq_string": "s", "extra": 1}`` was
    published as an object and stays one (``docs/protocol.md``, *Publishing*).
    """
    if isinstance(message, dict) and (STRING in message or ARRAY in message):
        if any(key not in STAMP_KEYS for key in message if key != STRING and key != ARRAY) or len(
                [key for key in (STRING, ARRAY) if key in message]) != 1:
            return message
        if isinstance(message.get(STRING), str):
            return message[STRING]
        if isinstance(message.get(ARRAY), list):
            return message[ARRAY]
    return message


def error_for(reason: str, request: int | None = None) -> ServerError:
    """The exception for an ``ERROR: <reason>`` reply to request number ``request``."""
    if reason.startswith("permission denied"):
        return PermissionDenied(reason, request)
    if reason == "authentication failed":
        return AuthenticationFailed(reason, request)
    return ServerError(reason, request)


@dataclass(frozen=True, slots=True)
class Welcome:
    """The first frame of a connection: its id and the server's greeting."""

    connection_id: str
    message: dict


@dataclass(frozen=True, slots=True)
class Reply:
    """The broker's answer to request number ``request`` (1-based, per connection)."""

    request: int | None
    message: dict

    @property
    def response(self) -> str:
        value = self.message.get("response", "")
        return value if isinstance(value, str) else ""

    @property
    def error(self) -> str | None:
        """The reason of an ``ERROR:`` reply, else None."""
        text = self.response
        return text[len("ERROR:"):].strip() if text.startswith("ERROR:") else None


@dataclass(frozen=True, slots=True)
class Gap:
    """Messages of ``queue`` that were published but will never be delivered to this client.

    ``first_missing`` .. ``last_missing`` are the ``coremq_id`` numbers lost (both
    included): they left the queue's history before the client could fetch them
    after a reconnect (or the history reply could not be read). With ``reset``
    the queue's numbering started again at 1 (its broker
    restarted and the queue is not durable): an unknown number of messages
    published after the last one delivered is lost, and the ids given, if any,
    are those of the new numbering that are lost as well.
    """

    queue: str
    first_missing: int | None
    last_missing: int | None
    reset: bool = False

    @property
    def count(self) -> int | None:
        """How many messages are known to be lost, or None when unknown (a reset)."""
        if self.reset or self.first_missing is None or self.last_missing is None:
            return None
        return self.last_missing - self.first_missing + 1


@dataclass(frozen=True, slots=True)
class Delivery:
    """A published message as received by a subscriber.

    ``gap`` is set on the first message of a queue delivered after messages of
    that queue were lost (see :class:`Gap`): it marks the place in the stream.
    """

    queue: str
    message: Any  # what the publisher sent (see unwrap)
    id: int | None = None
    sender: str | None = None
    sent: float | None = None
    raw: dict = field(default_factory=dict, repr=False)
    gap: Gap | None = None

    @classmethod
    def from_stored(cls, queue: str, stored: dict) -> "Delivery":
        return cls(queue, unwrap(stored), stored.get(ID), stored.get(SENDER), stored.get(SENT), stored)


@dataclass(frozen=True, slots=True)
class Bye:
    """The broker is closing the connection in an orderly way."""


Event = Welcome | Reply | Delivery | Bye | ProtocolError


class ClientProtocol:
    """The client's side of one connection, with no I/O.

    Feed received bytes to :meth:`receive_data`, which returns events; send the
    bytes that :meth:`request` and :meth:`publish` return. Each request gets
    the number the broker will put in its reply (``"request": n``), so replies
    are matched exactly, including errors for publishes sent with replies off.

    ``max_frame_size`` bounds the frames accepted from the broker and those
    sent to it. Once the welcome announces the broker's own limit
    (``max_frame_size``), frames over the smaller of the two are refused
    before they are sent (:attr:`send_limit`).
    """

    #: Whether the broker delivers this client's own publishes whatever its ``echo`` option (no).
    echoes_own = False
    #: Whether the broker closes a connection that sends no request soon after its welcome (yes).
    needs_first_request = True

    def __init__(self, *, codec: JSONCodec | None = None, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> None:
        self.codec = codec or JSONCodec()
        self.max_frame_size = max_frame_size
        self.parser = FrameParser(max_frame_size=max_frame_size)
        self.connection_id: str | None = None
        self.welcome: dict | None = None
        self.broker_max_frame_size: int | None = None
        self.requests_sent = 0

    @property
    def send_limit(self) -> int:
        """The largest frame this side may send: its own limit, or the broker's if smaller."""
        broker = self.broker_max_frame_size
        return self.max_frame_size if broker is None else min(self.max_frame_size, broker)

    def receive_data(self, data: bytes) -> list[Event]:
        """Parse bytes from the broker into events, in order."""
        self.parser.receive_data(data)
        return [self._event(item) for item in self.parser.events()]

    def request(self, message: dict) -> tuple[int, bytes]:
        """Encode a control request (to the own id queue): ``(number, bytes)``."""
        if self.connection_id is None:
            raise LocalUsageError("no welcome received yet")
        return self._frame(self.connection_id, message)

    def publish(self, queue: str, message: Any) -> tuple[int, bytes]:
        """Encode a publish of ``message`` to ``queue``: ``(number, bytes)``."""
        validate_queue_name(queue)
        return self._frame(queue, wrap(message))

    def subscribe(self, queues: Iterable[str]) -> tuple[int, bytes]:
        return self.request({SUBSCRIBE: [validate_queue_name(q) for q in queues]})

    def unsubscribe(self, queues: Iterable[str]) -> tuple[int, bytes]:
        return self.request({UNSUBSCRIBE: [validate_queue_name(q) for q in queues]})

    def set_options(self, options: dict) -> tuple[int, bytes]:
        return self.request({OPTIONS: options})

    def get_history(self, queues: Iterable[str], since: dict[str, int] | None = None, *,
                    limit: int | None = None) -> tuple[int, bytes]:
        """Ask for history; with ``since`` only the messages numbered above it, with ``limit``
        at most that many per queue (the oldest; the reply's ``more`` names the queues cut short)."""
        names = [validate_queue_name(q) for q in queues]
        request: dict[str, Any] = {GETHISTORY: {q: since.get(q) for q in names} if since else names}
        if limit is not None:
            request["limit"] = limit
        return self.request(request)

    def status(self, **detail: bool) -> tuple[int, bytes]:
        """Ask for the broker's status; ``connections=True`` etc. ask for the detailed lists."""
        return self.request({STATUS: detail or True})

    def admin(self, action: str, **fields: Any) -> tuple[int, bytes]:
        """An administrator's request: ``admin("disconnect", connection=id)``, ``admin("purge", queue=name)``."""
        return self.request({ADMIN: {"action": action, **fields}})

    def authenticate(self, credentials: dict[str, str]) -> tuple[int, bytes]:
        """Log in: ``{"token": ...}`` or ``{"username": ..., "password": ...}``."""
        return self.request({AUTH: credentials})

    def store_get(self, key: str) -> tuple[int, bytes]:
        """Read a key of the broker's store."""
        return self.request({STORE_GET: key})

    def store_set(self, key: str, value: str | bytes, *, flags: int = 0, ttl: int = 0, mode: str = "set",
                  cas: int | None = None) -> tuple[int, bytes]:
        """Write a key of the store (``mode``: set, add, replace, append, prepend; ``cas``: only if unchanged)."""
        fields: dict[str, Any] = {"key": key, "flags": flags, "ttl": ttl, "mode": mode}
        if isinstance(value, str):
            fields["value"] = value
        else:
            try:
                fields["value"] = bytes(value).decode("utf-8")
            except UnicodeDecodeError:
                fields["value_base64"] = base64.b64encode(value).decode("ascii")
        if cas is not None:
            fields["cas"] = cas
        return self.request({STORE_SET: fields})

    def store_delete(self, key: str) -> tuple[int, bytes]:
        return self.request({STORE_DELETE: key})

    def store_incr(self, key: str, delta: int = 1) -> tuple[int, bytes]:
        """Add ``delta`` (negative: subtract) to the number a key holds."""
        return self.request({STORE_INCR: {"key": key, "delta": delta}})

    def store_touch(self, key: str, ttl: int) -> tuple[int, bytes]:
        return self.request({STORE_TOUCH: {"key": key, "ttl": ttl}})

    def _frame(self, queue: str, message: dict) -> tuple[int, bytes]:
        try:
            body = self.codec.dumps(message)
        except (TypeError, ValueError) as exc:
            raise LocalUsageError(f"message cannot be encoded as JSON: {exc}") from exc
        size = len(queue.encode()) + 1 + len(body)
        limit = self.send_limit
        if size > limit:
            whose = "the broker's" if limit != self.max_frame_size else "the"
            raise LocalUsageError(f"frame would be {size} bytes, over {whose} frame limit of {limit}")
        self.requests_sent += 1
        return self.requests_sent, encode_frame(queue, body)

    def _event(self, item: tuple[str, bytes] | ProtocolError) -> Event:
        if isinstance(item, ProtocolError):
            return item
        queue, body = item
        try:
            message = self.codec.loads(body)
        except MessageError as exc:
            return exc
        if self.connection_id is None:
            if not isinstance(message, dict):
                return MessageError("welcome frame is not an object")
            self.connection_id = queue
            self.welcome = message
            announced = message.get("max_frame_size")
            if isinstance(announced, int) and not isinstance(announced, bool) and announced > 0:
                self.broker_max_frame_size = announced
            return Welcome(queue, message)
        if queue == self.connection_id and isinstance(message, dict) and SENDER not in message:
            if message.get("response") == BYE:
                return Bye()
            request = message.get("request")
            return Reply(request if isinstance(request, int) else None, message)
        if isinstance(message, dict):
            return Delivery.from_stored(queue, message)
        return Delivery(queue, message)
