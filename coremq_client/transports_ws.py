"""The clients over WebSocket: the browser protocol of ``/ws/coremq/``, on the ``websockets`` package.

``MessageQueue("ws://host:port/ws/coremq/", token=...)`` (or ``wss://``) and
:class:`~coremq_client.AsyncMessageQueue` alike speak the JSON protocol that
``coremq.js`` speaks (``docs/websocket.md``), for clients that reach CoreMQ
only through an HTTP ingress. The session does not change:

- :class:`WebSocketProtocol` has :class:`~coremq_client.protocol.ClientProtocol`'s
  interface, sans-I/O: requests become JSON objects with an ``action`` and
  their number as ``ref``; answers become the same events as over TCP
  (:class:`~coremq_client.protocol.Reply` with the TCP reply's ``response``,
  :class:`~coremq_client.protocol.Delivery` with the broker's stamps,
  ``dropped`` as a drop notice). Between it and the socket, each WebSocket
  text message is one line of newline-separated JSON, so the front ends'
  byte loops run unchanged.
- :class:`WebSocketStream` (blocking) and :func:`open_websocket_streams`
  (asyncio) carry those lines over ``websockets``' connections.

What the browser protocol has not: ``status()`` and ``admin()`` raise
:class:`~coremq_client.errors.LocalUsageError`, as do ``set_options`` and
logging in with a username and password (a token only). Every publish is
answered, and a subscriber receives its own publishes (``echo`` is always
on). A new welcome (the web process's link to the broker reconnected, so
the connection id changed) ends the connection; the client reconnects and
resumes as after any loss.
"""

from __future__ import annotations

import asyncio
import socket
import ssl as ssl_module
from typing import Any, Iterable
from urllib.parse import urlsplit

from websockets.asyncio.client import ClientConnection as AsyncWebSocket
from websockets.asyncio.client import connect as async_connect
from websockets.exceptions import ConnectionClosed as WebSocketClosed
from websockets.exceptions import InvalidHandshake, InvalidURI
from websockets.sync.client import ClientConnection as SyncWebSocket
from websockets.sync.client import connect as sync_connect

from . import protocol as P
from .codec import DEFAULT_MAX_FRAME_SIZE, JSONCodec, validate_queue_name
from .errors import LocalUsageError, MessageError, ProtocolError
from .protocol import Bye, Delivery, Event, Reply, Welcome, wrap

__all__ = ["WebSocketProtocol", "WebSocketStream", "is_websocket_url", "open_websocket", "open_websocket_streams"]

#: What the browser protocol answers, as the TCP reply texts the session knows.
_RESPONSES = {
    "subscribed": P.OK_SUBSCRIBE,
    "unsubscribed": P.OK_UNSUBSCRIBE,
    "published": P.OK_SENT,
    "authenticated": P.OK_AUTH,
}


def is_websocket_url(address: str) -> bool:
    """True for a ``ws://`` or ``wss://`` URL (the client then speaks the browser protocol)."""
    return address.startswith(("ws://", "wss://"))


def _origin(url: str) -> str:
    """The ``Origin`` the endpoint accepts: the site's own (scheme, host and port of the URL)."""
    parts = urlsplit(url)
    return f"{'https' if parts.scheme == 'wss' else 'http'}://{parts.netloc}"


class WebSocketProtocol:
    """The client's side of the browser protocol, with :class:`~coremq_client.protocol.ClientProtocol`'s interface.

    Bytes in and out are newline-separated JSON objects, one per WebSocket
    text message. ``max_frame_size`` bounds what is sent, and the welcome's
    ``max_message_size`` too once it came.
    """

    #: The bridge delivers a browser's own publishes to its subscriptions.
    echoes_own = True
    #: The endpoint has no deadline for a first request.
    needs_first_request = False

    def __init__(self, *, codec: JSONCodec | None = None, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> None:
        self.codec = codec or JSONCodec()
        self.max_frame_size = max_frame_size
        self.connection_id: str | None = None
        self.welcome: dict | None = None
        self.broker_max_frame_size: int | None = None
        self.requests_sent = 0
        self._partial = b""

    @property
    def send_limit(self) -> int:
        broker = self.broker_max_frame_size
        return self.max_frame_size if broker is None else min(self.max_frame_size, broker)

    def receive_data(self, data: bytes) -> list[Event]:
        """Lines of JSON (the text messages received) into events, in order."""
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        return [self._event(line) for line in lines if line]

    def _event(self, line: bytes) -> Event:
        try:
            frame = self.codec.loads(line)
        except MessageError as exc:
            return exc
        if not isinstance(frame, dict):
            return MessageError("a frame from the endpoint is not a JSON object")
        kind = frame.get("type")
        ref = frame.get("ref")
        number = ref if isinstance(ref, int) and not isinstance(ref, bool) else None
        if kind == "message":
            return _delivery(frame)
        if kind == "welcome":
            return self._welcome(frame)
        if kind == "dropped":
            span = {"first": frame.get("first"), "last": frame.get("last")}
            return Reply(None, {"dropped": {str(frame.get("queue")): span}})
        # Replies in the TCP form: "request" for "ref", no "type"; the TCP reply's "response".
        reply = {key: value for key, value in frame.items() if key not in ("type", "ref", "history")}
        if number is not None:
            reply["request"] = number
        if kind == "history":
            return Reply(number, {**reply, "history": _history(frame.get("history"))})
        if kind == "error":
            return Reply(number, {**reply, "response": f"ERROR: {frame.get('error')}"})
        return Reply(number, {"response": _RESPONSES.get(str(kind), f"OK: {kind}"), **reply})

    def _welcome(self, frame: dict) -> Welcome | Bye | ProtocolError:
        connection_id = frame.get("connection_id")
        if not isinstance(connection_id, str):
            return MessageError("the welcome has no connection_id")
        if self.connection_id is not None:
            return Bye()  # a new connection id: this connection's requests and private queue are gone
        self.connection_id = connection_id
        self.welcome = {**frame, "response": P.WELCOME}
        size = frame.get("max_message_size")
        if isinstance(size, int) and not isinstance(size, bool) and size > 0:
            self.broker_max_frame_size = size
        return Welcome(connection_id, self.welcome)

    # -- requests ----------------------------------------------------------------

    def publish(self, queue: str, message: Any) -> tuple[int, bytes]:
        wrap(message)  # refuses what cannot be published
        return self._frame({"action": "publish", "queue": validate_queue_name(queue), "message": message})

    def subscribe(self, queues: Iterable[str]) -> tuple[int, bytes]:
        return self._frame({"action": "subscribe", "queues": [validate_queue_name(q) for q in queues]})

    def unsubscribe(self, queues: Iterable[str]) -> tuple[int, bytes]:
        return self._frame({"action": "unsubscribe", "queues": [validate_queue_name(q) for q in queues]})

    def get_history(self, queues: Iterable[str], since: dict[str, int] | None = None, *,
                    limit: int | None = None) -> tuple[int, bytes]:
        request: dict[str, Any] = {"action": "history", "queues": [validate_queue_name(q) for q in queues]}
        if since:
            request["since"] = {queue: since.get(queue) for queue in request["queues"]}
        if limit is not None:
            request["limit"] = limit
        return self._frame(request)

    def authenticate(self, credentials: dict[str, str]) -> tuple[int, bytes]:
        if "token" not in credentials:
            raise LocalUsageError("over WebSocket a client logs in with a token, not a username and password")
        return self._frame({"action": "auth", "token": credentials["token"]})

    def set_options(self, options: dict) -> tuple[int, bytes]:
        raise LocalUsageError("options are not available over WebSocket (echo is always on, every publish answered)")

    def status(self, **detail: bool) -> tuple[int, bytes]:
        raise LocalUsageError("status is not available over WebSocket: ask the broker's TCP port or /status/")

    def admin(self, action: str, **fields: Any) -> tuple[int, bytes]:
        raise LocalUsageError("administrators' requests are not available over WebSocket: use the TCP port")

    def _frame(self, request: dict[str, Any]) -> tuple[int, bytes]:
        if self.connection_id is None:
            raise LocalUsageError("no welcome received yet")
        number = self.requests_sent + 1
        try:
            body = self.codec.dumps({**request, "ref": number})
        except (TypeError, ValueError) as exc:
            raise LocalUsageError(f"message cannot be encoded as JSON: {exc}") from exc
        limit = self.send_limit
        if len(body) > limit:
            whose = "the broker's" if limit != self.max_frame_size else "the"
            raise LocalUsageError(f"frame would be {len(body)} bytes, over {whose} frame limit of {limit}")
        self.requests_sent = number
        return number, body + b"\n"


def _stored(frame: dict) -> dict:
    """A browser protocol message entry as the broker stores it (the TCP form): wrapped, with its stamps."""
    stored = dict(wrap(frame.get("message")) if isinstance(frame.get("message"), (dict, list, str)) else {})
    stored.update({P.ID: frame.get("id"), P.SENDER: frame.get("sender"), P.SENT: frame.get("sent")})
    return stored


def _delivery(frame: dict) -> Delivery:
    return Delivery.from_stored(str(frame.get("queue")), _stored(frame))


def _history(history: Any) -> dict:
    """A history answer's ``{queue: [entry, ...]}`` in the stored (TCP) form."""
    entries = history if isinstance(history, dict) else {}
    return {queue: [_stored(entry) for entry in stored if isinstance(entry, dict)]
            for queue, stored in entries.items() if isinstance(stored, list)}


# -- the blocking client's stream -------------------------------------------------

class WebSocketStream:
    """A ``websockets`` connection as the blocking client's byte stream of JSON lines.

    ``recv`` returns one text message and its newline (``b""`` once the
    connection closed); ``sendall`` sends each line as one text message.
    ``websockets`` lets one thread receive while others send.
    """

    def __init__(self, websocket: SyncWebSocket) -> None:
        self.websocket = websocket
        self._timeout: float | None = None

    def settimeout(self, timeout: float | None) -> None:
        self._timeout = timeout

    def recv(self, size: int) -> bytes:
        try:
            message = self.websocket.recv(self._timeout)
        except WebSocketClosed:
            return b""
        except RuntimeError as exc:  # closed by another thread meanwhile
            raise OSError(str(exc)) from exc
        return (message.encode() if isinstance(message, str) else message) + b"\n"

    def sendall(self, data: bytes) -> None:
        try:
            for line in data.split(b"\n"):
                if line:
                    self.websocket.send(line.decode())
        except WebSocketClosed as exc:
            raise OSError(f"the WebSocket closed: {exc}") from exc

    def shutdown(self, how: int) -> None:
        """``SHUT_WR``: the closing handshake; ``SHUT_RDWR``: end the socket, waking the reader."""
        if how == socket.SHUT_WR:
            self.websocket.close()  # the reader's recv then sees the end
        else:
            self.websocket.socket.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.websocket.close_socket()


def open_websocket(url: str, *, timeout: float | None, tls: ssl_module.SSLContext | None) -> WebSocketStream:
    """Open ``url`` (blocking) with the site's own Origin; OSError if it cannot be opened."""
    try:
        websocket = sync_connect(url, origin=_origin(url), open_timeout=timeout, close_timeout=timeout,  # type: ignore[arg-type]
                                 ssl=tls if url.startswith("wss:") else None, max_size=None,
                                 compression=None, legacy=True)  # a connection of its own, closed by close()
    except (InvalidHandshake, InvalidURI) as exc:
        raise OSError(f"WebSocket handshake failed: {exc}") from exc
    return WebSocketStream(websocket)


# -- the asyncio client's streams ---------------------------------------------------

class _Reader:
    def __init__(self, websocket: AsyncWebSocket) -> None:
        self.websocket = websocket

    async def read(self, size: int) -> bytes:
        try:
            message = await self.websocket.recv()
        except WebSocketClosed:
            return b""
        return (message.encode() if isinstance(message, str) else message) + b"\n"


class _Writer:
    """``asyncio.StreamWriter``'s methods that the client uses, over a ``websockets`` connection.

    ``write`` cannot wait, so lines queue for one sender task, which sends
    them in order; ``drain`` waits until they are sent.
    """

    def __init__(self, websocket: AsyncWebSocket) -> None:
        self.websocket = websocket
        self.transport = websocket.transport
        self._lines: asyncio.Queue[str | None] = asyncio.Queue()  # None: stop
        self._sender = asyncio.ensure_future(self._send())
        self._failed: OSError | None = None
        self._closing = False

    async def _send(self) -> None:
        while (line := await self._lines.get()) is not None:
            try:
                await self.websocket.send(line)
            except Exception as exc:  # closed, most likely: every later drain() says so
                self._failed = OSError(f"the WebSocket closed: {exc}")
            finally:
                self._lines.task_done()

    def write(self, data: bytes) -> None:
        for line in data.split(b"\n"):
            if line:
                self._lines.put_nowait(line.decode())

    async def drain(self) -> None:
        """Wait until every line written is sent; OSError if the connection failed or closed first."""
        if self._closing:
            raise OSError("the WebSocket is closed")
        flushed = asyncio.ensure_future(self._lines.join())
        try:
            await asyncio.wait([flushed, self._sender], return_when=asyncio.FIRST_COMPLETED)
            sent = flushed.done()
        finally:
            flushed.cancel()
        if self._failed is not None:
            raise self._failed
        if not sent:
            raise OSError("the WebSocket closed before the lines were sent")

    def is_closing(self) -> bool:
        return self._closing or self.websocket.transport.is_closing()

    def can_write_eof(self) -> bool:
        return False

    def close(self) -> None:
        if not self._closing:
            self._closing = True
            self._lines.put_nowait(None)  # the sender ends after what was written (a send fails once closed)
            self._close_task = asyncio.ensure_future(self.websocket.close())  # kept until done


async def open_websocket_streams(url: str, *, tls: ssl_module.SSLContext | None) -> tuple[_Reader, _Writer]:
    """Open ``url`` with the site's own Origin: a reader and a writer like ``asyncio.open_connection``'s."""
    try:
        websocket = await async_connect(url, origin=_origin(url), ssl=tls if url.startswith("wss:") else None,  # type: ignore[arg-type]
                                        max_size=None, compression=None, open_timeout=None)
    except (InvalidHandshake, InvalidURI) as exc:
        raise OSError(f"WebSocket handshake failed: {exc}") from exc
    return _Reader(websocket), _Writer(websocket)
