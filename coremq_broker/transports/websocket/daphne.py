"""The fast path under daphne: frames encoded once, written straight to each browser's socket.

Through ASGI every delivered message would cost, per browser, a coroutine
chain, a WebSocket frame built by autobahn and a UTF-8 encode. Server frames
are not masked, so one message's frame is the same bytes for every browser:
when the ASGI ``send`` is daphne's (``Server.handle_reply`` bound to the
connection's protocol), :func:`direct_writer` returns a :class:`DirectWriter`
that writes those bytes to the protocol's Twisted transport, and the bridge
encodes each frame once. Anything else (closing, other ASGI servers, the
test communicator) goes through ASGI as usual.

The writer also bounds what a browser may leave unread: Twisted buffers
without limit, so a browser whose socket holds more than ``max_buffer``
bytes unsent is a slow consumer and is cut off (it reconnects and catches up
from history), as the broker does with TCP clients.

On shutdown, daphne's reactor drops every connection without writing what
it still holds, so a browser would see no close frame (code 1006) and could
not tell a restart from a network fault. :func:`close_on_shutdown` closes the
bridge first, from a reactor shutdown trigger, and waits (at most
:data:`CLOSE_HANDSHAKE_TIMEOUT`) for the browsers to answer their close frames.

The fast path leans on internals: daphne's ``Server.handle_reply``,
autobahn's state numbers, and Twisted's TCP transport buffer
(``_tempDataLen``, ``dataBuffer``, ``offset``). :func:`fast_path_refusal`
checks them, and the installed versions against :data:`WRITTEN_FOR`, once,
when the first browser connects; if anything differs the bridge uses ASGI
``send`` for every browser and says why in one log line. A test fails when
the installed versions or these internals change
(``tests/broker/test_daphne_adapter.py``).

Nothing here imports Twisted or daphne at import time; it recognises their
objects when they are already loaded, so it is inert everywhere else.
"""

from __future__ import annotations

import asyncio
import functools
import importlib.metadata
import inspect
import logging
import sys
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from .bridge import Bridge

__all__ = ["CLOSE_HANDSHAKE_TIMEOUT", "WRITTEN_FOR", "DirectWriter", "close_on_shutdown", "direct_writer",
           "fast_path_refusal"]

logger = logging.getLogger("coremq.websocket")

#: autobahn's ``WebSocketProtocol.STATE_CLOSED`` and ``STATE_OPEN``.
_STATE_CLOSED = 0
_STATE_OPEN = 3

#: Seconds a web process that shuts down waits for its browsers to answer their close frames.
CLOSE_HANDSHAKE_TIMEOUT = 2.0

#: The releases (major.minor) whose internals the fast path was written against and tested with.
WRITTEN_FOR = {"daphne": "4.2", "autobahn": "26.11", "twisted": "26.10"}


class DirectWriter:
    """Writes whole WebSocket frames to one daphne connection's socket, within a bound.

    When Twisted holds nothing for the socket, the frame goes out at once with
    one ``send`` (as asyncio's transports do), without Twisted registering,
    polling and unregistering the socket for each message; otherwise, or for
    what the socket does not take, it joins Twisted's buffer behind the rest.
    """

    __slots__ = ("protocol", "transport", "socket", "max_buffer")

    def __init__(self, protocol: Any, max_buffer: int) -> None:
        self.protocol = protocol
        self.transport = protocol.transport
        self.socket = self.transport.socket
        self.max_buffer = max_buffer

    def write(self, frame: bytes) -> bool:
        """Send or queue ``frame``; False once the browser is a slow consumer."""
        if self.protocol.state != _STATE_OPEN:
            return True  # closing: daphne finishes that
        transport = self.transport
        pending = transport._tempDataLen + len(transport.dataBuffer) - transport.offset
        if not pending and not transport.disconnecting:
            try:
                sent = self.socket.send(frame)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                return True  # the connection is failing; Twisted tells daphne
            if sent == len(frame):
                return True
            frame = frame[sent:]
        transport.write(frame)
        return pending + len(frame) <= self.max_buffer

    def abort(self) -> None:
        """Drop the connection at once, discarding what it has not read."""
        self.transport.abortConnection()


def _protocol(send: Callable[..., Any]) -> Any:
    """daphne's ``WebSocketProtocol`` behind ``send`` when ``send`` is daphne's own, else None."""
    if not isinstance(send, functools.partial) or len(send.args) != 1:
        return None
    if getattr(send.func, "__qualname__", "") != "Server.handle_reply":
        return None
    protocol = send.args[0]
    ws_protocol = sys.modules.get("daphne.ws_protocol")
    if ws_protocol is None or not isinstance(protocol, ws_protocol.WebSocketProtocol):
        return None
    return protocol


def direct_writer(send: Callable[..., Any], max_buffer: int) -> DirectWriter | None:
    """A :class:`DirectWriter` when ``send`` is daphne's own and its internals are the known ones, else None (ASGI)."""
    protocol = _protocol(send)
    if protocol is None or _refused():
        return None
    transport = protocol.transport
    if getattr(transport, "TLS", True) or not all(hasattr(transport, name) for name in _TRANSPORT_ATTRIBUTES):
        return None  # TLS, or not the Twisted TCP transport this was written for: ASGI still works
    return DirectWriter(protocol, max_buffer)


#: What :class:`DirectWriter` uses of a ``twisted.internet.tcp`` connection.
_TRANSPORT_ATTRIBUTES = ("socket", "write", "abortConnection", "disconnecting", "_tempDataLen", "dataBuffer", "offset")


def fast_path_refusal(versions: dict[str, str] | None = None) -> str | None:
    """Why the fast path must not be used with the installed daphne, autobahn and Twisted, or None.

    ``versions`` (package -> version) defaults to the installed ones; each
    must be the :data:`WRITTEN_FOR` release, and the internals the writer
    reads must be where it reads them.
    """
    if versions is None:
        versions = {name: _installed(name) for name in WRITTEN_FOR}
    for name, release in WRITTEN_FOR.items():
        found = versions.get(name) or ""
        if found != release and not found.startswith(release + "."):
            return f"{name} {found or 'not installed'} is not {release}, which the fast path was written for"
    from autobahn.websocket.protocol import WebSocketProtocol
    from daphne.server import Server
    from twisted.internet import abstract, tcp

    if (WebSocketProtocol.STATE_OPEN, WebSocketProtocol.STATE_CLOSED) != (_STATE_OPEN, _STATE_CLOSED):
        return "autobahn's WebSocketProtocol state numbers changed"
    if Server.handle_reply.__qualname__ != "Server.handle_reply":
        return "daphne's Server.handle_reply moved"
    source = inspect.getsource(abstract.FileDescriptor)
    missing = [name for name in _TRANSPORT_ATTRIBUTES if not hasattr(tcp.Connection, name) and name not in source]
    if missing:
        return f"Twisted's TCP transport has no {', '.join(missing)}"
    return None


def _installed(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


@functools.cache
def _refused() -> bool:
    """:func:`fast_path_refusal`, asked once per process (the first browser under daphne) and logged."""
    reason = fast_path_refusal()
    if reason is not None:
        logger.warning("WebSocket fast path off, browsers are written to through ASGI send: %s", reason)
    return reason is not None


def close_on_shutdown(bridge: "Bridge") -> None:
    """Under a running Twisted reactor (daphne), close ``bridge`` before the reactor shuts down.

    Every browser then gets its close frame (``CLOSE_SERVICE_RESTART``) and
    the reactor waits until each has answered, or for
    :data:`CLOSE_HANDSHAKE_TIMEOUT`, before it drops the connections. The
    trigger goes when the bridge closes for another reason. Elsewhere (no
    reactor, or one that is not running) this does nothing.
    """
    reactor = sys.modules.get("twisted.internet.reactor")
    defer = sys.modules.get("twisted.internet.defer")
    if reactor is None or defer is None or not getattr(reactor, "running", False):
        return

    fired = False

    def before_shutdown() -> Any:
        nonlocal fired
        fired = True
        return defer.Deferred.fromFuture(asyncio.ensure_future(_close_and_wait(bridge)))

    trigger = reactor.addSystemEventTrigger("before", "shutdown", before_shutdown)

    def forget() -> None:
        if not fired:
            reactor.removeSystemEventTrigger(trigger)

    bridge.on_close.append(forget)


async def _close_and_wait(bridge: "Bridge") -> None:
    protocols = [p for p in (_protocol(browser.send) for browser in list(bridge.browsers.values())) if p is not None]
    try:
        await bridge.close()
    except Exception:
        logger.exception("WebSocket bridge: closing on shutdown failed")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + CLOSE_HANDSHAKE_TIMEOUT
    while any(protocol.state != _STATE_CLOSED for protocol in protocols) and loop.time() < deadline:
        await asyncio.sleep(0.01)
