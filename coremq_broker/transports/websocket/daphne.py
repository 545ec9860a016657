"""The fast path under daphne: frames encoded once, written straight to each browser's socket.

Through ASGI every delivered message would cost, per browser, a coroutine
chain, a WebSocket frame built by autobahn and a UTF-8 encode. Server frames
are not masked, so one message's frame is the same bytes for every browser:
when the ASGI ``send`` is daphne's (``Server.handle_reply`` bound to the
connection's protocol), :func:`direct_writer` returns a writer for the
protocol's Twisted transport, and the bridge encodes each frame once:

- on a plain TCP connection, a :class:`DirectWriter`, which sends the bytes
  to the socket itself;
- on a TLS connection (daphne listening on an ``ssl:`` endpoint), a
  :class:`TLSWriter`, which hands them to Twisted's TLS layer: bytes written
  to the socket beneath it would reach the browser unencrypted, which ends
  the connection (``tlsv1 alert protocol version``).

Anything else (closing, other ASGI servers, another kind of transport, the
test communicator) goes through ASGI as usual.

Both writers also bound what a browser may leave unread: Twisted buffers
without limit, so a browser whose connection holds more than ``max_buffer``
bytes unsent (under TLS, encrypted bytes, and the cleartext the TLS layer
holds back during a handshake) is a slow consumer and is cut off (it
reconnects and catches up from history), as the broker does with TCP
clients. Through ASGI ``send`` there is no such bound; the first browser on
a transport the writers do not know says so in the log.

On shutdown, daphne's reactor drops every connection without writing what
it still holds, so a browser would see no close frame (code 1006) and could
not tell a restart from a network fault. :func:`close_on_shutdown` closes the
bridge first, from a reactor shutdown trigger, and waits (at most
:data:`CLOSE_HANDSHAKE_TIMEOUT`) for the browsers to answer their close frames.

The fast path leans on internals: daphne's ``Server.handle_reply``,
autobahn's state numbers, Twisted's TCP transport buffer (``_tempDataLen``,
``dataBuffer``, ``offset``) and its TLS layer's (``_appSendBuffer``).
:func:`fast_path_refusal`
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

__all__ = ["CLOSE_HANDSHAKE_TIMEOUT", "WRITTEN_FOR", "DirectWriter", "TLSWriter", "close_on_shutdown",
           "direct_writer", "fast_path_refusal", "is_tls"]

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


class TLSWriter:
    """Writes whole WebSocket frames to one daphne connection over TLS, within a bound.

    The frame goes to Twisted's TLS layer (``TLSMemoryBIOProtocol``), which
    encrypts it into the TCP transport's buffer beneath. That buffer reaches
    the socket only when the event loop comes round, after the bridge's whole
    burst, so the bound is checked before each write: what both layers still
    hold from earlier writes (bytes the socket did not take while the loop
    ran) must be at most ``max_buffer``.
    """

    __slots__ = ("protocol", "tls", "tcp", "max_buffer")

    def __init__(self, protocol: Any, max_buffer: int) -> None:
        self.protocol = protocol
        self.tls = protocol.transport
        self.tcp = self.tls.transport
        self.max_buffer = max_buffer

    def write(self, frame: bytes) -> bool:
        """Encrypt and queue ``frame``; False once the browser is a slow consumer."""
        if self.protocol.state != _STATE_OPEN:
            return True  # closing: daphne finishes that
        tls, tcp = self.tls, self.tcp
        behind = tcp._tempDataLen + len(tcp.dataBuffer) - tcp.offset
        for held in tls._appSendBuffer:  # cleartext waiting for a TLS handshake to finish
            behind += len(held)
        if behind > self.max_buffer:
            return False
        tls.write(frame)
        return True

    def abort(self) -> None:
        """Drop the connection at once, discarding what it has not read."""
        self.tls.abortConnection()


def is_tls(send: Callable[..., Any]) -> bool:
    """Whether ``send`` is daphne's own for a connection over TLS (daphne's WebSocket scope does not say)."""
    protocol = _protocol(send)
    interfaces = sys.modules.get("twisted.internet.interfaces")
    return protocol is not None and interfaces is not None and interfaces.ISSLTransport.providedBy(protocol.transport)


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


def direct_writer(send: Callable[..., Any], max_buffer: int) -> DirectWriter | TLSWriter | None:
    """A writer for daphne's connection behind ``send``: :class:`DirectWriter` on plain TCP, :class:`TLSWriter`
    over TLS; None (ASGI ``send``) when ``send`` is not daphne's, or the internals or the transport are not the
    known ones."""
    protocol = _protocol(send)
    if protocol is None or _refused():
        return None
    transport = protocol.transport
    tcp = sys.modules.get("twisted.internet.tcp")
    tls = sys.modules.get("twisted.protocols.tls")
    # Types, not attributes: the TLS layer hands every attribute it lacks on to the TCP
    # connection beneath it, so a TLS connection has a socket, a dataBuffer and TLS = False.
    if tcp is not None and isinstance(transport, tcp.Connection) and not is_tls(send):
        return DirectWriter(protocol, max_buffer)
    if (tls is not None and tcp is not None and isinstance(transport, tls.TLSMemoryBIOProtocol)
            and isinstance(transport.transport, tcp.Connection) and not transport.transport.TLS):
        return TLSWriter(protocol, max_buffer)
    _unknown_transport(type(transport).__module__ + "." + type(transport).__qualname__)
    return None


@functools.cache
def _unknown_transport(kind: str) -> None:
    """Say once per kind of transport that its browsers go through ASGI ``send``, without the bound."""
    logger.warning("WebSocket fast path off for %s connections: browsers on them are written to through ASGI send, "
                   "without the slow-consumer bound", kind)


#: What :class:`DirectWriter` uses of a ``twisted.internet.tcp`` connection (:class:`TLSWriter` the buffer's three).
_TRANSPORT_ATTRIBUTES = ("socket", "write", "abortConnection", "disconnecting", "_tempDataLen", "dataBuffer", "offset")
#: What :class:`TLSWriter` uses of ``twisted.protocols.tls.TLSMemoryBIOProtocol``.
_TLS_ATTRIBUTES = ("transport", "write", "abortConnection", "_appSendBuffer")


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
    try:
        from twisted.internet.interfaces import ISSLTransport
        from twisted.protocols.tls import TLSMemoryBIOProtocol
    except ImportError:  # no pyOpenSSL: daphne serves no TLS, so TLSWriter is never used
        return None
    source = inspect.getsource(TLSMemoryBIOProtocol)
    missing = [name for name in _TLS_ATTRIBUTES if not hasattr(TLSMemoryBIOProtocol, name) and name not in source]
    if missing:
        return f"Twisted's TLS transport has no {', '.join(missing)}"
    if not ISSLTransport.implementedBy(TLSMemoryBIOProtocol):
        return "Twisted's TLS transport is no ISSLTransport"
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
