"""What both clients share above the I/O: the constructor, the read-only state, the public methods' work.

:class:`ClientState` is the base of :class:`~coremq_client.MessageQueue` and
:class:`~coremq_client.AsyncMessageQueue`. Its ``__init__`` takes the
arguments both document and builds the :class:`~coremq_client.session.Session`;
its properties read the session and the front end's current connection and
never change them.
"""

from __future__ import annotations

import ssl as ssl_module
from typing import Any, Mapping, Sequence

from ._common import ConnectCallback, ErrorCallback, GapCallback, JSONObject, MAX_PENDING, credentials_from
from .codec import DEFAULT_MAX_FRAME_SIZE, DEFAULT_PORT, Decoder, Encoder, JSONCodec
from .errors import CoreMQError
from .protocol import Gap
from .protocol import ClientProtocol
from .session import Server, Session
from .transports_ws import WebSocketProtocol, is_websocket_url

__all__ = ["ClientState", "servers_from"]


def servers_from(host: str, port: int, servers: Sequence[Server] | None) -> list[Server]:
    """The list of servers a client connects to, in turn: ``servers``, or ``[(host, port)]`` (or ``[url]``).

    Raises ValueError for an empty list, an entry that is neither ``(host,
    port)`` nor a ``ws://``/``wss://`` URL, a list mixing the two, or
    ``servers`` given with a ``host`` or ``port`` of its own.
    """
    if servers is None:
        return [host if is_websocket_url(host) else (host, port)]
    if (host, port) != ("127.0.0.1", DEFAULT_PORT):
        raise ValueError("give host and port, or servers, not both")
    if isinstance(servers, str) or not servers:
        raise ValueError("servers must be a non-empty list of (host, port) pairs or of ws:// URLs")
    result: list[Server] = []
    for server in servers:
        if isinstance(server, str) and is_websocket_url(server):
            result.append(server)
        elif (isinstance(server, (tuple, list)) and len(server) == 2 and isinstance(server[0], str)
              and isinstance(server[1], int) and not isinstance(server[1], bool)):
            result.append((server[0], server[1]))
        else:
            raise ValueError(f"a server is a (host, port) pair or a ws:// URL, not {server!r}")
    if len({isinstance(server, str) for server in result}) > 1:
        raise ValueError("servers mixes (host, port) pairs and ws:// URLs: give one kind")
    return result


class ClientState:
    """The constructor and the properties common to both clients."""

    _conn: Any  # the front end's current connection (with .link), or None
    _deliveries: Any  # queue.Queue or asyncio.Queue

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = DEFAULT_PORT,
        *,
        queues: tuple[str, ...] | list[str] = (),
        options: Mapping[str, Any] | None = None,
        timeout: float | None = 5.0,
        connect_timeout: float | None = 5.0,
        reconnect: bool = True,
        backoff: float = 0.1,
        max_backoff: float = 5.0,
        encoder: Encoder = None,
        decoder: Decoder = None,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
        ssl: ssl_module.SSLContext | None = None,
        token: str | None = None,
        username: str | None = None,
        password: str | None = None,
        resume: bool = True,
        on_error: ErrorCallback | None = None,
        on_connect: ConnectCallback | None = None,
        on_gap: GapCallback | None = None,
        max_pending: int | None = MAX_PENDING,
        servers: Sequence[Server] | None = None,
    ) -> None:
        chosen = servers_from(host, port, servers)
        self._session = Session(
            queues=queues, options=options, reconnect=reconnect, backoff=backoff, max_backoff=max_backoff,
            codec=JSONCodec(encoder, decoder), max_frame_size=max_frame_size,
            credentials=credentials_from(token, username, password),
            resume=resume, on_error=on_error, on_connect=on_connect, on_gap=on_gap, max_pending=max_pending,
            protocol=WebSocketProtocol if isinstance(chosen[0], str) else ClientProtocol, servers=chosen,
        )
        # What the I/O loops use; the rest of the arguments live in the session.
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.ssl = ssl
        self.max_pending = max_pending
        self._url_port = port
        self._conn = None

    @property
    def servers(self) -> list[Server]:
        """The servers the client connects to, in turn (one: ``[(host, port)]`` or ``[url]``)."""
        return list(self._session.servers)

    @property
    def url(self) -> str | None:
        """The ``ws://`` or ``wss://`` URL of the current server: the browser protocol over WebSocket; else None."""
        server = self._session.server
        return server if isinstance(server, str) else None

    @property
    def host(self) -> str:
        """The host of the current server (its URL over WebSocket)."""
        server = self._session.server
        return server if isinstance(server, str) else server[0]

    @host.setter
    def host(self, host: str) -> None:  # the next connection of a client given one server goes there
        self._session.servers[self._session.server_index] = (host, self.port)

    @property
    def port(self) -> int:
        """The port of the current server (over WebSocket: the port given, unused)."""
        server = self._session.server
        return self._url_port if isinstance(server, str) else server[1]

    @port.setter
    def port(self, port: int) -> None:
        self._session.servers[self._session.server_index] = (self.host, port)

    @property
    def address(self) -> str:
        """Where the client connects (the current server): ``host:port``, or the WebSocket URL."""
        return self._session.server_name

    @property
    def reconnect(self) -> bool:
        """True when a lost connection is opened again (with backoff)."""
        return self._session.reconnect

    @property
    def connected(self) -> bool:
        """True while a connection is open."""
        conn = self._conn
        return conn is not None and conn.link.alive

    @property
    def closed(self) -> bool:
        """True once the client has ended for good (close(), or a loss without reconnect)."""
        return self._session.ended is not None

    @property
    def connection_id(self) -> str | None:
        """The id of the current (or last) connection, from its welcome."""
        welcome = self._session.welcome
        return welcome.connection_id if welcome else None

    @property
    def welcome(self) -> JSONObject | None:
        """The whole welcome object of the current (or last) connection."""
        welcome = self._session.welcome
        return welcome.message if welcome else None

    @property
    def welcome_message(self) -> str | None:
        """The welcome's ``response`` text, e.g. ``"OK: Welcome from CoreMQ!"``."""
        welcome = self._session.welcome
        return welcome.message.get("response") if welcome else None

    @property
    def queues(self) -> tuple[str, ...]:
        """The queues this client subscribes to on every connect."""
        return self._session.state.queues

    @property
    def options(self) -> dict[str, Any]:
        """The options this client sets on every connect."""
        return self._session.state.options

    @property
    def resume(self) -> bool:
        """True when the client fetches what it missed after a reconnect."""
        return self._session.resumer.enabled

    @property
    def user(self) -> str | None:
        """The user this connection is logged in as (from ``OK: Authenticated``), or None."""
        return self._session.user

    @property
    def last_ids(self) -> dict[str, int]:
        """The ``coremq_id`` of the last message delivered per queue (a copy)."""
        return self._session.resumer.last_ids

    @property
    def pending(self) -> int:
        """How many received messages wait for ``receive()`` (at most about ``max_pending``)."""
        return self._deliveries.qsize()

    @property
    def errors(self) -> list[CoreMQError]:
        """The most recent errors that no caller waited for, oldest first."""
        return list(self._session.reporter.recent)

    @property
    def gaps(self) -> list[Gap]:
        """The most recent gaps reported (messages that will never be delivered), oldest first."""
        return list(self._session.gap_reporter.recent)

    def __repr__(self) -> str:
        state = "closed" if self.closed else "connected" if self.connected else "disconnected"
        return f"<{type(self).__name__} {self.address} {state} id={self.connection_id}>"
